"""The analysis and figures of ``xailab learning``, written into the train run.

Tables (one part per method): ``learning_steps`` (epoch x instance: prediction, drift against
the epoch before and the last, region mass), ``learning_instances`` (settling epoch, epoch of
the largest change, flips, forgotten), ``learning_flips`` (each prediction flip and where the
largest map change fell), ``learning_classes`` (class means per epoch). Manifest section
``learning``: per method the flip numbers, median settling epoch, bytes per 1,000 instances x
epoch and CPU seconds per epoch. Figures under ``files/learning/``: drift curves per class,
region mass per epoch, class-mean maps per epoch; a strip per interesting instance in
``files/instances/<id>/learning.png``, which the flow page links.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from xailab.drawing import Canvas, color_limits, heat_rgb8, heat_rgba8, to_rgb8
from xailab.runs.store import Run, atomic_write_bytes

STRIP_SIDE = 64


def write_analysis(run: Run, spec: Any, epochs: Sequence[int], image_size: tuple[int, int], dataset: Any,
                   log: Callable[[str], None]) -> None:
    """Analyse every method over the epochs it has, write tables, figures and the summary."""
    from xailab.dynamics.history import class_names
    from xailab.dynamics.learning import analyse, class_curves, explained_epochs

    classes = list(class_names(run))
    summaries: dict[str, Any] = {}
    per_first: pd.DataFrame | None = None
    for m in spec.methods:
        if len(explained_epochs(run, m)) == 0:
            continue
        steps, per, flips, summary = analyse(run, m, regions=spec.regions, image_size=image_size, top=spec.top,
                                             settle=spec.settle, window=spec.window)
        run.write_table("learning_steps", steps, part=m)
        run.write_table("learning_instances", per, part=m)
        run.write_table("learning_flips", flips, part=m)
        run.write_table("learning_classes", class_curves(steps, classes), part=m)
        summaries[m] = summary
        per_first = per if per_first is None else per_first
        run.write_table("learning_spray", spray_per_epoch(run, m, per, image_size), part=m)
        _curves(run, m, class_curves(steps, classes), list(spec.regions))
        _class_maps(run, m, steps, classes)
        log(f"{m}: {int(summary['flips'])} flips; largest map change at or before the flip in "
            f"{summary['lead']:.0%} (chance {summary['chance']:.0%}); median settling epoch "
            f"{summary['median_settle_epoch']:.0f}")
    times = run.read_table("learning_times")
    per_byte = bytes_per_thousand(run)
    for m, s in summaries.items():
        t = times[times["method"] == m]
        s.update({"bytes_per_1000_instance_epochs": per_byte.get(m), "cpu_s_per_epoch": float(t["cpu_s"].mean()),
                  "wall_s_per_epoch": float(t["wall_s"].mean())})
    strips = _strips(run, spec, per_first, dataset, classes) if per_first is not None else []
    section = dict(run.manifest.get("learning") or {})
    section.update({"methods": summaries, "target": spec.target, "regions": list(spec.regions),
                    "classes": classes, "strips": strips, "image_size": list(image_size)})
    run.update_manifest("learning", section)
    _refresh_flow(run, log)


def bytes_per_thousand(run: Run) -> dict[str, float]:
    """Stored bytes per 1,000 instances x epoch, per method (from table ``learning_times``)."""
    t = run.read_table("learning_times")
    g = t.groupby("method")[["bytes", "instances"]].sum()
    return {str(m): float(r.bytes / r.instances * 1000) for m, r in g.iterrows()}


def spray_per_epoch(run: Run, method: str, per: pd.DataFrame, image_size: tuple[int, int],
                    least: int = 10) -> pd.DataFrame:
    """SpRAy (Lapuschkin et al. 2019) per class and epoch: the eigengap score of the spectral
    clustering of the class's maps (``1 - l_2 / l_3``; near 1: the maps fall into two separate
    groups, as when part of a class is predicted from a trigger). Classes with fewer than
    ``least`` tracked instances are left out."""
    import torch

    from xailab.audit.clustering import spectral
    from xailab.audit.detection import map_features
    from xailab.dynamics.drift import to_size
    from xailab.dynamics.learning import instances, load_maps

    maps, epochs = load_maps(run, method)
    labels = per.set_index("instance").loc[instances(run), "label"].to_numpy()
    rows = []
    for k in np.unique(labels):
        of = labels == k
        if of.sum() < least:
            continue
        for i, e in enumerate(epochs):
            a = np.abs(to_size(maps[i][of], image_size))
            if not (a.reshape(len(a), -1).max(1) > 0).all():
                continue  # a zero map has no distribution to cluster
            sp = spectral(map_features(torch.from_numpy(a))[1].numpy())
            rows.append({"method": method, "label": int(k), "epoch": int(e), "gap_score": sp.gap_score,
                         "k": sp.k, "small_share": sp.small_share})
    return pd.DataFrame(rows, columns=["method", "label", "epoch", "gap_score", "k", "small_share"])


def _curves(run: Run, method: str, cls: pd.DataFrame, regions: list[str]) -> None:
    """Per class: rank correlation with the epoch before and with the last, region mass."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from xailab.plotting import plain, save_png

    panels = [("rank_prev", "rank corr. with the epoch before"), ("rank_last", "rank corr. with the last epoch")]
    panels += [(f"mass {r}", f"share of |map| in {r}") for r in regions]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (col, title) in zip(axes[0], panels, strict=True):
        for name, g in cls.groupby("class", sort=False):
            ax.plot(g["epoch"], g[col], lw=1.2, label=plain(str(name)))
        ax.set_title(plain(f"{method}: {title}"), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_png(fig, run.file(f"learning/curves-{method}.png"))
    plt.close(fig)


def _class_maps(run: Run, method: str, steps: pd.DataFrame, classes: list[str]) -> None:
    """Rows: classes; columns: epochs; each cell the class's mean peak-normalised map."""
    from xailab.dynamics.learning import instances, load_maps

    maps, epochs = load_maps(run, method)
    peak = np.abs(maps).reshape(*maps.shape[:2], -1).max(-1)
    norm = maps / np.where(peak > 0, peak, 1.0)[..., None, None]
    labels = steps[steps["epoch"] == epochs[0]].set_index("instance").loc[instances(run), "label"].to_numpy()
    present = [k for k in range(max(len(classes), int(labels.max()) + 1)) if (labels == k).any()]
    side, left, top = 40, 90, 24
    page = Canvas(left + len(epochs) * (side + 4) + 10, top + len(present) * (side + 4) + 10)
    for c, e in enumerate(epochs):
        page.text(left + c * (side + 4) + side / 2, top - 8, f"e{e}", 8)
    for r, k in enumerate(present):
        means = [np.abs(norm[i][labels == k]).mean(0) for i in range(len(epochs))]
        vmin, vmax, cmap = color_limits(means)
        y = top + r * (side + 4)
        page.text(left - 6, y + side / 2, classes[k] if k < len(classes) else str(k), 8, anchor="rm")
        for c, m in enumerate(means):
            page.panel(left + c * (side + 4), y, side, heat_rgb8(m, vmin, vmax, cmap))
    atomic_write_bytes(run.file(f"learning/classes-{method}.png"), page.png())


def _display(dataset: Any, i: int) -> np.ndarray:
    """The image as [H, W, 3] uint8, as the thumbnails show it."""
    from xailab.dynamics.thumbnails import to_pil

    raw = getattr(dataset, "raw_image", None)
    if callable(raw):
        return to_rgb8(np.asarray(to_pil(raw(i)).convert("RGB")))
    x = dataset[i][0]
    den = getattr(dataset, "denormalize", None)
    return to_rgb8(np.asarray(to_pil(den(x) if callable(den) else x).convert("RGB")))


def pick_instances(per: pd.DataFrame, n: int) -> list[tuple[int, str]]:
    """Up to ``n`` ``(instance, why)``: learned then forgotten first (most flips), then the
    latest flippers (fewest flips first: stable, then changed), then the latest to settle; each
    kind class by class in turn."""
    out: list[tuple[int, str]] = []
    seen: set[int] = set()
    orders = [(_spread(per[per["forgotten"]].sort_values(["flips", "instance"], ascending=[False, True])),
               "learned, then forgotten"),
              (_spread(per[per["flips"] > 0].sort_values(["last_flip_epoch", "flips", "instance"],
                                                        ascending=[False, True, True])), "flipped late"),
              (_spread(per.sort_values(["settle_epoch", "flips", "instance"], ascending=[False, True, True])),
               "settled late")]
    quota = [n // 3, n // 3, n]
    for (df, why), q in zip(orders, quota, strict=True):
        took = 0
        for i in df["instance"].tolist():
            if len(out) >= n or took >= max(q, n - len(out) if why == "settled late" else q):
                break
            if int(i) not in seen:
                seen.add(int(i))
                out.append((int(i), why))
                took += 1
    return out


def _spread(df: pd.DataFrame) -> pd.DataFrame:
    """The rows taken class by class in turn (each class in its own order), so that the first
    few cover many classes."""
    turn = df.groupby("label", sort=False).cumcount()
    return df.assign(_turn=turn.to_numpy()).sort_values("_turn", kind="stable").drop(columns="_turn")


def _strips(run: Run, spec: Any, per: pd.DataFrame, dataset: Any, classes: list[str]) -> list[dict[str, Any]]:
    """A strip per picked instance: the image, then per epoch its map(s) and the prediction."""
    from xailab.dynamics.learning import explained_epochs, instances, load_maps, predictions_at
    from xailab.dynamics.thumbnails import explanation_path, render_thumbnails

    picked = pick_instances(per, spec.strips)
    keep = {int(i) for i, _ in picked}
    for old in (run.path / "files" / "instances").glob("*/learning.png"):
        if old.parent.name.isdigit() and int(old.parent.name) not in keep:
            old.unlink()  # a strip of an earlier pick: the flow page would still link it
    if not picked:
        return []
    ids = instances(run)
    row = {int(i): k for k, i in enumerate(ids)}
    have = [m for m in spec.methods if explained_epochs(run, m)]
    epochs = sorted(set.intersection(*(set(explained_epochs(run, m)) for m in have)))  # columns all rows share
    if not epochs:
        return []
    loaded = {m: load_maps(run, m, epochs) for m in have}
    pred, conf, labels = predictions_at(run, ids, epochs)
    render_thumbnails(run, dataset, [i for i, _ in picked])
    out = []
    for inst, why in picked:
        r = row[inst]
        img = _display(dataset, inst)
        png = strip_png(img, {m: v[0][:, r] for m, v in loaded.items()}, epochs, pred[r], conf[r], int(labels[r]),
                        classes, f"instance {inst} ({classes[labels[r]] if labels[r] < len(classes) else labels[r]}): {why}")
        atomic_write_bytes(explanation_path(run, inst, "learning"), png)
        out.append({"instance": inst, "why": why, "file": f"files/instances/{inst}/learning.png"})
    return out


def strip_png(image: np.ndarray, maps: dict[str, np.ndarray], epochs: Sequence[int], pred: np.ndarray,
              conf: np.ndarray, label: int, classes: list[str], title: str) -> bytes:
    """Rows: methods; columns: the image, then each epoch's overlay; under each the predicted
    class and its probability (red when wrong)."""
    side, gap, left, top = STRIP_SIDE, 4, 70, 34
    rows = len(maps)
    page = Canvas(left + (len(epochs) + 1) * (side + gap) + 8, top + rows * (side + gap) + 30)
    page.text(4, 12, title, 9, anchor="lm")
    rgb = to_rgb8(image)
    for c, e in enumerate(epochs, start=1):
        x = left + c * (side + gap)
        page.text(x + side / 2, top - 6, f"e{e}", 8)
        name = classes[pred[c - 1]] if 0 <= pred[c - 1] < len(classes) else str(pred[c - 1])
        colour = (0, 110, 0) if pred[c - 1] == label else (200, 0, 0)
        y = top + rows * (side + gap) + 2
        page.draw.text((x + side / 2, y), name[:9], fill=colour, anchor="mt", font=_font(7))
        page.draw.text((x + side / 2, y + 12), f"{conf[c - 1]:.2f}", fill=colour, anchor="mt", font=_font(7))
    for r, (m, seq) in enumerate(maps.items()):
        y = top + r * (side + gap)
        page.text(left - 6, y + side / 2, m, 8, anchor="rm")
        page.panel(left, y, side, rgb)
        for c, mm in enumerate(seq, start=1):  # each epoch on its own scale: where, not how much
            a = np.abs(mm)
            page.panel(left + c * (side + gap), y, side, rgb, heat_rgba8(a, 0.0, float(a.max()) or 1.0, "inferno", 0.85))
    return page.png()


def _font(points: float) -> Any:
    from xailab.drawing import font

    return font(points)


def _refresh_flow(run: Run, log: Callable[[str], None]) -> None:
    """Rewrite the run's flow page (default view) so that its instance list links the strips."""
    if not (run.path / "files" / "flow.html").is_file():
        log(f"strips in {run.path / 'files' / 'instances'}; `xailab flow {run.path}` links them")
        return
    from xailab.dynamics.page import flow_page

    flow_page(run)
    log(f"flow page refreshed: {run.path / 'files' / 'flow.html'} links the strips")
