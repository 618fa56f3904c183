"""PNG evidence of an audit: maps before and after an attack, clusters of a suspected class.

    fig = shift_figure(result, shift, index=0, class_names=ds.classes)
    fig = cluster_figure(report.evidence(7), display_images, "Sneaker")
    fig = scores_figure(report)
    save_png(fig, run.file("audit/shift_0000.png"))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from xailab.audit.detection import ClassEvidence, DetectionReport
from xailab.audit.result import AttackResult
from xailab.audit.shift import ShiftResult
from xailab.plotting import color_limits, plain, subplots, to_hwc


def _box(ax: Axes, box: tuple[int, int, int, int] | None, color: str = "lime") -> None:
    """Outline ``box`` = (top, left, bottom, right), inclusive."""
    if box is None:
        return
    t, left, b, r = box
    ax.add_patch(Rectangle((left - 0.5, t - 0.5), r - left + 1, b - t + 1, fill=False, edgecolor=color, lw=1.5))


def _mask_box(mask: Tensor | None) -> tuple[int, int, int, int] | None:
    if mask is None or not bool(mask.any()):
        return None
    ys, xs = np.nonzero(mask.cpu().numpy())
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def _name(classes: Sequence[str] | None, c: int) -> str:
    return plain(str(classes[c])) if classes is not None and 0 <= c < len(classes) else str(c)


def _off(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def shift_figure(result: AttackResult, shift: ShiftResult, index: int,
                 class_names: Sequence[str] | None = None) -> Figure:
    """One image: a row per (method, target): clean image, its map, attacked image, its map,
    and the perturbation; the patch outlined in green. The two maps of a row share one colour
    scale (diverging blue-white-red when signed, sequential from zero otherwise)."""
    i = index
    rows = [(m, j, t) for m in shift.clean for j, t in enumerate(shift.targets)]
    fig, axes = subplots(len(rows), 5, figsize=(11, 2.3 * len(rows) + 0.6), squeeze=False)
    box = _mask_box(result.mask[i]) if result.mask is not None else None
    clean = to_hwc(result.clean[i].numpy())
    adv = to_hwc(result.adversarial[i].numpy())
    delta = (result.adversarial[i] - result.clean[i]).abs().amax(dim=0).numpy()
    pc = result.clean_logits[i].double().softmax(0)
    pa = result.adv_logits[i].double().softmax(0)
    table = shift.table
    for r, (method, j, t) in enumerate(rows):
        mc = shift.clean[method].pixel_maps()[i, j].numpy()
        ma = shift.adversarial[method].pixel_maps()[i, j].numpy()
        vmin, vmax, cmap = color_limits([mc, ma])
        cc = int(shift.clean[method].targets[i, j])
        ca = int(shift.adversarial[method].targets[i, j])
        row = table[(table.image == i) & (table.method == method) & (table.target == t)].iloc[0]
        axes[r, 0].imshow(clean, interpolation="nearest")
        axes[r, 0].set_title(f"clean: {_name(class_names, int(result.clean_pred[i]))} "
                             f"({float(pc[result.clean_pred[i]]):.2f})", fontsize=8)
        axes[r, 0].set_ylabel(f"{method}\n{t}", fontsize=8)
        axes[r, 1].imshow(mc, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        axes[r, 1].set_title(f"map for {_name(class_names, cc)}", fontsize=8)
        axes[r, 2].imshow(adv, interpolation="nearest")
        axes[r, 2].set_title(f"attacked: {_name(class_names, int(result.adv_pred[i]))} "
                             f"({float(pa[result.adv_pred[i]]):.2f})", fontsize=8)
        axes[r, 3].imshow(ma, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        mass = f", mass in patch {row['mass_adv']:.2f}" if "mass_adv" in row and np.isfinite(row["mass_adv"]) else ""
        axes[r, 3].set_title(f"map for {_name(class_names, ca)}{mass}", fontsize=8)
        axes[r, 4].imshow(delta, cmap="gray", vmin=0, vmax=max(float(delta.max()), 1e-6), interpolation="nearest")
        axes[r, 4].set_title(f"|change| (IoU {row['iou']:.2f}, rho {row['spearman']:.2f})", fontsize=8)
        for ax in axes[r]:
            _off(ax)
            _box(ax, box)
    ok = "success" if bool(result.success[i]) else "failed"
    fig.suptitle(f"{result.attack} attack on image {i} ({ok})", fontsize=10)
    fig.tight_layout()
    return fig


def cluster_figure(ev: ClassEvidence, images: Tensor, class_name: str = "", per_row: int = 8) -> Figure:
    """A class's evidence: the Laplacian spectrum, the mean maps of the suspicious cluster and of
    the rest and their difference (the relied-on region boxed), and example images of both.
    ``images [n, C, H, W]`` in [0, 1], the items of ``ev.indices`` in order."""
    small = np.nonzero(ev.suspicious)[0][:per_row]
    rest = np.nonzero(~ev.suspicious)[0][:per_row]
    fig = Figure(figsize=(1.4 * per_row, 6.6))
    gs = fig.add_gridspec(3, per_row, height_ratios=[1.6, 1, 1])
    ax = fig.add_subplot(gs[0, 0:2])
    lam = ev.spray.eigenvalues
    ax.plot(np.arange(1, len(lam) + 1), lam, "o-", ms=3)
    ax.axvline(ev.spray.k + 0.5, color="red", lw=0.8, ls="--")
    ax.set_title(f"Laplacian spectrum (k={ev.spray.k}, gap {ev.spray.gap_score:.2f})", fontsize=8)
    ax.tick_params(labelsize=7)
    ms, mr = ev.mean_small.numpy(), ev.mean_rest.numpy()
    diff = ms - mr
    vmax = max(float(ms.max()), float(mr.max()), 1e-12)
    for col, (m, title) in zip(
        (2, 4, 6),
        ((ms, f"suspicious cluster (n={int(ev.suspicious.sum())})"), (mr, f"rest (n={int((~ev.suspicious).sum())})"),
         (diff, "difference")), strict=True):
        a = fig.add_subplot(gs[0, col : col + 2])
        if title == "difference":
            lim = max(float(np.abs(diff).max()), 1e-12)
            a.imshow(diff, cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
            _box(a, ev.region, "black")
        else:
            a.imshow(m, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
        a.set_title(title, fontsize=8)
        _off(a)
    for r, (idx, label) in enumerate(((small, "suspicious"), (rest, "rest")), start=1):
        for c in range(per_row):
            a = fig.add_subplot(gs[r, c])
            _off(a)
            if c < len(idx):
                a.imshow(to_hwc(images[idx[c]].numpy()), interpolation="nearest")
            if c == 0:
                a.set_ylabel(label, fontsize=8)
    who = ", ".join(n for n, f in (("SpRAy", ev.spray_flag), ("activation clustering", ev.ac_flag)) if f)
    fig.suptitle(plain(f"class {ev.label} {class_name}: {ev.verdict.upper()}" + (f" ({who} fired)" if who else "")
                       + f"; AC small share {ev.ac.small_share:.2f}, silhouette {ev.ac.silhouette:.2f}"),
                 fontsize=9)
    fig.tight_layout()
    return fig


def scores_figure(report: DetectionReport) -> Figure:
    """Per class: SpRAy's gap score and activation clustering's silhouette (bars), the smaller
    clusters' shares (markers); flagged classes red, "check" orange; thresholds as lines."""
    t = report.table.dropna(subset=["spray_gap"]) if "spray_gap" in report.table else report.table
    fig, ax = subplots(figsize=(max(6.0, 0.7 * len(t) + 2), 3.4))
    x = np.arange(len(t))
    palette = {"backdoor": "tab:red", "flagged": "tab:red", "check": "tab:orange"}
    colors = [palette.get(v, "tab:gray") for v in t["verdict"]]
    ax.bar(x - 0.2, t["spray_gap"], 0.4, color=colors, alpha=0.9, label="SpRAy gap score")
    ax.bar(x + 0.2, t["ac_silhouette"], 0.4, color=colors, alpha=0.5, hatch="//", label="AC silhouette")
    ax.plot(x - 0.2, t["spray_small_share"], "v", color="black", ms=4, label="SpRAy small share")
    ax.plot(x + 0.2, t["ac_small_share"], "^", color="navy", ms=4, label="AC small share")
    th = report.params.get("thresholds", {})
    for key, style, label in (("spray_gap", "-", "gap threshold"), ("ac_silhouette", ":", "silhouette threshold"),
                              ("max_share", "--", "largest small share")):
        if key in th:
            ax.axhline(th[key], color="black", lw=0.6, ls=style)
            ax.text(len(t) - 0.5, th[key], label, fontsize=6, ha="right", va="bottom")
    ax.set_xticks(x)
    ax.set_xticklabels([plain(f"{c} {n}") for c, n in zip(t["class"], t["name"], strict=True)],
                       rotation=30, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("backdoor detection per class (red: flagged, orange: check)", fontsize=9)
    fig.tight_layout()
    return fig
