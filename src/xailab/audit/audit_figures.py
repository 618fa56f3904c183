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

from xailab.audit.result import AttackResult
from xailab.audit.shift import ShiftResult
from xailab.audit.verdict import ClassEvidence, DetectionReport
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


def _score_bars(ax: Axes, ev: ClassEvidence) -> None:
    """Each detector's score over its threshold (1 = the threshold); red where it fired."""
    names = list(ev.findings)
    vals = [f.score / f.threshold if f.threshold > 0 else f.score for f in ev.findings.values()]
    ax.bar(np.arange(len(names)), vals, color=["tab:red" if f.flagged else "tab:gray" for f in ev.findings.values()])
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels([plain(n) for n in names], fontsize=7)
    ax.set_title("score / threshold per detector", fontsize=8)
    ax.tick_params(labelsize=7)


def cluster_figure(ev: ClassEvidence, images: Tensor, class_name: str = "", per_row: int = 8) -> Figure:
    """A class's evidence: each detector's score against its threshold; for a flagged class the
    mean maps of the suspected items and of the rest and their difference (the relied-on region
    boxed), then the most suspected images and other images of the class. A class that is not
    flagged shows its mean map (when maps were computed) and images of the class, no cluster and
    no box. ``images [n, C, H, W]`` in [0, 1], the items of ``ev.indices`` in order."""
    rows: tuple[tuple[np.ndarray, str], ...]
    if ev.flagged:
        order = ev.order()
        small = order[ev.suspicious[order]][:per_row]
        rest = np.nonzero(~ev.suspicious)[0][:per_row]
        rows = ((small, "suspected"), (rest, "the rest"))
    else:
        rows = ((np.arange(min(per_row, len(ev.indices))), "examples"),)
    fig = Figure(figsize=(1.4 * per_row, 2.2 + 1.45 * (1 + len(rows))))
    gs = fig.add_gridspec(1 + len(rows), per_row, height_ratios=[1.6] + [1] * len(rows))
    _score_bars(fig.add_subplot(gs[0, 0:2]), ev)
    if ev.flagged and ev.mean_small is not None and ev.mean_rest is not None:
        ms, mr = ev.mean_small.numpy(), ev.mean_rest.numpy()
        diff = ms - mr
        vmax = max(float(ms.max()), float(mr.max()), 1e-12)
        panels = ((ms, f"suspected (n={int(ev.suspicious.sum())})"), (mr, f"rest (n={int((~ev.suspicious).sum())})"),
                  (diff, "difference"))
        for col, (m, title) in zip((2, 4, 6), panels, strict=True):
            a = fig.add_subplot(gs[0, col : col + 2])
            if title == "difference":
                lim = max(float(np.abs(diff).max()), 1e-12)
                a.imshow(diff, cmap="bwr", vmin=-lim, vmax=lim, interpolation="nearest")
                _box(a, ev.region, "black")
            else:
                a.imshow(m, cmap="inferno", vmin=0, vmax=vmax, interpolation="nearest")
            a.set_title(title, fontsize=8)
            _off(a)
    elif ev.maps is not None and len(ev.maps):
        a = fig.add_subplot(gs[0, 2:4])
        a.imshow(ev.maps.mean(dim=0).numpy(), cmap="inferno", interpolation="nearest")
        a.set_title("mean map of the class", fontsize=8)
        _off(a)
    for r, (idx, label) in enumerate(rows, start=1):
        for c in range(per_row):
            a = fig.add_subplot(gs[r, c])
            _off(a)
            if c < len(idx):
                a.imshow(to_hwc(images[idx[c]].numpy()), interpolation="nearest")
            if c == 0:
                a.set_ylabel(label, fontsize=8)
    fired = ", ".join(ev.fired)
    fig.suptitle(plain(f"class {ev.label} {class_name}: {ev.verdict.upper()}"
                       + (f" ({fired} fired)" if fired else " (no detector fired)")), fontsize=9)
    fig.tight_layout()
    return fig


def scores_figure(report: DetectionReport) -> Figure:
    """Per class, each detector's score over its threshold (bars; 1 = flagged); the classes the
    rule flags are named in red, those only some detector fired on ("check") in orange."""
    detectors = list(report.results)
    n = len(report.classes)
    fig, ax = subplots(figsize=(max(6.0, 0.8 * n + 2), 3.4))
    x = np.arange(n)
    width = 0.8 / max(1, len(detectors))
    for j, d in enumerate(detectors):
        vals = []
        for ev in report.classes:
            f = ev.findings.get(d)
            vals.append(np.nan if f is None else (f.score / f.threshold if f.threshold > 0 else f.score))
        ax.bar(x - 0.4 + width * (j + 0.5), vals, width, label=plain(d))
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.text(n - 0.5, 1.0, "threshold", fontsize=6, ha="right", va="bottom")
    ax.set_xticks(x)
    ax.set_xticklabels([plain(f"{e.label} {e.name}") for e in report.classes], rotation=30, ha="right", fontsize=7)
    palette = {"backdoor": "tab:red", "flagged": "tab:red", "check": "tab:orange"}
    for tick, ev in zip(ax.get_xticklabels(), report.classes, strict=True):
        tick.set_color(palette.get(ev.verdict, "black"))
    ax.legend(fontsize=7, ncol=len(detectors))
    rule = report.params.get("rule_text", "")
    ax.set_title(plain(f"backdoor detectors per class ({rule}; red: flagged, orange: check)"), fontsize=9)
    fig.tight_layout()
    return fig
