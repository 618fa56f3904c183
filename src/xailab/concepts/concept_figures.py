"""PNG figures of concepts: galleries, patches, per-class bars, fidelity curves, explanations.

Every function returns a matplotlib ``Figure``; :func:`xailab.plotting.save_png` writes it
atomically. Images are ``[N, 3, H, W]`` in ``[0, 1]`` (as a person sees them); concept maps are
non-negative and drawn with one sequential scale per concept (zero is transparent).

    fig = gallery_figure(top_x, top_maps, low_x, low_maps, concept=3)
    save_png(fig, run.file("ice/gallery_03.png"))
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from xailab.plotting import heat_rgba, plain, subplots, to_hwc


def _show(ax: Axes, img: np.ndarray, heat: np.ndarray | None, vmax: float, title: str = "") -> None:
    ax.imshow(img, interpolation="nearest")
    if heat is not None:
        ax.imshow(heat_rgba(heat, 0.0, vmax, "inferno", 0.8), interpolation="bilinear")
    if title:
        ax.set_title(plain(title), fontsize=7)
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(
    top: Tensor,
    top_maps: Tensor,
    low: Tensor,
    low_maps: Tensor,
    *,
    concept: int,
    top_titles: Sequence[str] = (),
    low_titles: Sequence[str] = (),
    vmax: float | None = None,
) -> Figure:
    """Two rows: the images where ``concept`` is strongest (its map over them) and weakest."""
    cols = max(len(top), len(low), 1)
    fig, axes = subplots(2, cols, figsize=(1.5 * cols, 3.6), squeeze=False)
    scale = vmax or float(max(top_maps.max() if top_maps.numel() else 0, 1e-12))
    for r, (xs, ms, titles) in enumerate(((top, top_maps, top_titles), (low, low_maps, low_titles))):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(xs):
                ax.axis("off")
                continue
            _show(ax, to_hwc(xs[c]), ms[c].numpy(), scale, titles[c] if c < len(titles) else "")
        axes[r, 0].set_ylabel("strongest" if r == 0 else "weakest", fontsize=8)
    fig.suptitle(f"concept {concept}", fontsize=10)
    fig.tight_layout()
    return fig


def overview_figure(rows: Sequence[tuple[Tensor, Tensor]], labels: Sequence[str]) -> Figure:
    """One row per concept: its strongest images with the concept's map (a glance at all)."""
    n_rows = len(rows)
    cols = max((len(x) for x, _ in rows), default=1)
    fig, axes = subplots(n_rows, cols, figsize=(1.2 * cols + 0.8, 1.25 * n_rows + 0.3), squeeze=False)
    for r, ((xs, ms), label) in enumerate(zip(rows, labels, strict=True)):
        vmax = float(max(ms.max() if ms.numel() else 0, 1e-12))
        for c in range(cols):
            if c >= len(xs):
                axes[r, c].axis("off")
                continue
            _show(axes[r, c], to_hwc(xs[c]), ms[c].numpy(), vmax)
        axes[r, 0].set_ylabel(plain(label), fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def patch_box(position: int, map_size: tuple[int, int], image_size: tuple[int, int], context: float = 2.0) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the image region around map cell ``position`` (flat),
    ``context`` cells wide (clipped to the image)."""
    h, w = map_size
    H, W = image_size
    i, j = divmod(int(position), w)
    ch, cw = H / h, W / w
    size_h, size_w = round(ch * context), round(cw * context)
    cy, cx = (i + 0.5) * ch, (j + 0.5) * cw
    top = int(min(max(round(cy - size_h / 2), 0), max(H - size_h, 0)))
    left = int(min(max(round(cx - size_w / 2), 0), max(W - size_w, 0)))
    return top, left, min(size_h, H), min(size_w, W)


def patches_figure(patches: Sequence[Sequence[np.ndarray]], labels: Sequence[str]) -> Figure:
    """One row per concept: crops of the images around the concept's strongest position."""
    n_rows = len(patches)
    cols = max((len(p) for p in patches), default=1)
    fig, axes = subplots(n_rows, cols, figsize=(0.9 * cols + 0.8, 0.95 * n_rows + 0.3), squeeze=False)
    for r, (row, label) in enumerate(zip(patches, labels, strict=True)):
        for c in range(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                ax.imshow(row[c], interpolation="nearest")
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(plain(label), fontsize=7, rotation=0, ha="right", va="center")
    fig.tight_layout()
    return fig


def bars_figure(values: Tensor | np.ndarray, class_names: Sequence[str], *, ylabel: str, title: str) -> Figure:
    """One panel per class, a bar per concept: ``values [k, K]`` (e.g. importance, presence)."""
    v = np.asarray(values, dtype=np.float64)
    k, n_cls = v.shape
    cols = min(5, n_cls)
    rows = (n_cls + cols - 1) // cols
    fig, axes = subplots(rows, cols, figsize=(2.6 * cols, 2.1 * rows + 0.5), squeeze=False, sharey=True)
    colors = matplotlib.colormaps.get_cmap("tab10" if k <= 10 else "tab20")(np.arange(k) % (10 if k <= 10 else 20))
    for j in range(rows * cols):
        ax = axes[j // cols, j % cols]
        if j >= n_cls:
            ax.axis("off")
            continue
        ax.bar(np.arange(k), np.nan_to_num(v[:, j]), color=colors)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_title(plain(str(class_names[j])), fontsize=9)
        ax.set_xticks(np.arange(k))
        ax.set_xticklabels([str(c) for c in range(k)], fontsize=6)
        if j % cols == 0:
            ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(f"{title} (x: concept)", fontsize=10)
    fig.tight_layout()
    return fig


def fidelity_figure(curve: pd.DataFrame, chosen: int | None = None) -> Figure:
    """Top-1 agreement and mean absolute logit error against the number of concepts."""
    fig, (a1, a2, a3) = subplots(1, 3, figsize=(10.5, 3.0))
    k = curve["n_concepts"].to_numpy()
    a1.plot(k, curve["top1_agreement"], "o-")
    a1.set_ylim(0, 1.02)
    a1.set_ylabel("top-1 agreement with the model")
    a2.plot(k, curve["mean_abs_logit_error"], "o-", color="tab:red")
    a2.set_ylabel("mean |logit error|")
    a3.plot(k, curve["reconstruction_error"], "o-", color="tab:green")
    a3.set_ylim(0, max(1.0, float(curve["reconstruction_error"].max())))
    a3.set_ylabel("||V - SP|| / ||V||")
    for ax in (a1, a2, a3):
        ax.set_xlabel("number of concepts")
        ax.grid(alpha=0.3)
        if chosen is not None:
            ax.axvline(chosen, color="gray", linestyle="--", linewidth=1)
    n = int(curve["n_images"].iloc[0]) if "n_images" in curve else None
    fig.suptitle(f"ICE fidelity (layer replaced by its reconstruction S P{f', {n} images' if n else ''})", fontsize=10)
    fig.tight_layout()
    return fig


def explanation_figure(
    image: Tensor,
    maps: Tensor,
    concepts: Sequence[int],
    captions: Sequence[str],
    *,
    title: str = "",
) -> Figure:
    """The image, then the maps of ``concepts`` over it (``maps [k, H, W]`` upsampled)."""
    cols = len(concepts) + 1
    fig, axes = subplots(1, cols, figsize=(1.9 * cols, 2.4), squeeze=False)
    img = to_hwc(image)
    _show(axes[0, 0], img, None, 1.0, "image")
    vmax = float(max(maps.max() if maps.numel() else 0, 1e-12))
    for c, (con, cap) in enumerate(zip(concepts, captions, strict=True), start=1):
        _show(axes[0, c], img, maps[con].numpy(), vmax, cap)
    if title:
        fig.suptitle(plain(title), fontsize=9)
    fig.tight_layout()
    return fig


def tcav_figure(table: pd.DataFrame) -> Figure:
    """TCAV scores (mean ± std over runs) per concept and class, beside the random CAVs'
    scores; ``*`` marks a significant difference."""
    classes = list(dict.fromkeys(table["class_name"]))
    concepts = list(dict.fromkeys(table["concept"]))
    fig, axes = subplots(1, len(classes), figsize=(max(3.0, 1.1 * len(concepts) + 1.2) * len(classes), 3.2), squeeze=False)
    for a, cls in enumerate(classes):
        ax = axes[0, a]
        sub = table[table["class_name"] == cls].set_index("concept").loc[concepts]
        x = np.arange(len(concepts))
        ax.bar(x - 0.2, sub["score_mean"], 0.4, yerr=sub["score_std"], label="concept", color="tab:blue")
        ax.bar(x + 0.2, sub["random_mean"], 0.4, yerr=sub["random_std"], label="random", color="tab:gray")
        for i, sig in enumerate(sub["significant"]):
            if sig:
                ax.text(x[i] - 0.2, min(1.05, float(sub["score_mean"].iloc[i]) + 0.08), "*", ha="center")
        ax.set_xticks(x)
        ax.set_xticklabels([plain(str(c)) for c in concepts], fontsize=8, rotation=30)
        ax.set_ylim(0, 1.15)
        ax.set_title(plain(f"class {cls}"), fontsize=9)
        if a == 0:
            ax.set_ylabel("TCAV score")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def crop(image: Tensor, box: tuple[int, int, int, int]) -> np.ndarray:
    """``[C, H, W]`` image cropped to ``box`` as ``[h, w, 3]``."""
    top, left, h, w = box
    return to_hwc(image[:, top : top + h, left : left + w])


__all__ = [
    "bars_figure",
    "crop",
    "explanation_figure",
    "fidelity_figure",
    "gallery_figure",
    "overview_figure",
    "patch_box",
    "patches_figure",
    "tcav_figure",
    "to_hwc",
]
