"""Plotting shared by every room: attribution maps as PNG (image, heatmap, overlay), colour
scales, safe text, atomic PNG writing. Imports only the run store's atomic writer.

No backend is forced: figures are built as ``matplotlib.figure.Figure`` objects without pyplot,
so they save anywhere and show in Jupyter. :func:`show` is the one-liner for an explanation::

    fig = show(result, images, index=0)        # image | heatmap with colour bar | overlay, per target

Colour scales are consistent and honest: a signed map uses a diverging colormap symmetric
around zero (blue = evidence against, red = evidence for); a non-negative map uses a sequential
one from zero. One scale is shared by every panel of a figure unless ``shared_scale=False``.

    fig = overlay_figure(image, maps, titles=["true: cat (0.81)", "least: truck (0.00)"])
    save_png(fig, "runs/x/files/overlays/0000_gradcam.png")
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xailab.runs.store import atomic_write_bytes

if TYPE_CHECKING:  # matplotlib is imported where a figure is drawn: the text helpers need none of it
    from matplotlib.figure import Figure


def to_hwc(image: Any) -> np.ndarray:
    """``[C,H,W]`` or ``[H,W,C]`` or ``[H,W]`` in [0,1] -> ``[H,W,3]`` float in [0,1].

    A torch tensor is channels-first (torch's layout, even a ``[3, h, 3]`` crop); an array is
    read as ``[C,H,W]`` unless its last axis could hold the channels."""
    tensor = hasattr(image, "detach")
    img = np.asarray(image.detach().cpu() if tensor else image, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3) and (tensor or img.shape[-1] not in (1, 3)):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return np.clip(img, 0.0, 1.0)


def color_limits(maps: Sequence[np.ndarray]) -> tuple[float, float, str]:
    """``(vmin, vmax, cmap)`` shared by ``maps``: symmetric diverging if any value is negative."""
    lo = min(float(np.nanmin(m)) for m in maps)
    hi = max(float(np.nanmax(m)) for m in maps)
    if lo < 0:
        a = max(abs(lo), abs(hi)) or 1.0
        return -a, a, "bwr"
    return 0.0, (hi or 1.0), "inferno"


def heat_rgba(m: np.ndarray, vmin: float, vmax: float, cmap: str, alpha: float) -> np.ndarray:
    """``[H, W, 4]`` colours of ``m`` whose opacity grows with ``|m|``: zero is transparent, so
    the image stays visible where the method attributes nothing."""
    import matplotlib

    norm = (np.asarray(m, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12)
    rgba = matplotlib.colormaps[cmap](np.clip(norm, 0.0, 1.0))
    scale = max(abs(vmin), abs(vmax), 1e-12)
    rgba[..., 3] = alpha * np.sqrt(np.clip(np.abs(m) / scale, 0.0, 1.0))
    return rgba


def overlay_figure(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    suptitle: str = "",
    alpha: float = 0.85,
    shared_scale: bool = True,
) -> Figure:
    """One row per map: image | heatmap | overlay. ``maps`` are ``[H, W]`` pixel maps."""
    from matplotlib.figure import Figure

    img = to_hwc(image)
    rows = len(maps)
    fig = Figure(figsize=(7.5, 2.5 * rows + (0.4 if suptitle else 0)))
    axes = fig.subplots(rows, 3, squeeze=False)
    limits = color_limits(maps) if shared_scale else None
    for r, (m, title) in enumerate(zip(maps, titles, strict=True)):
        vmin, vmax, cmap = limits or color_limits([m])
        axes[r, 0].imshow(img, interpolation="nearest")
        axes[r, 0].set_title(title, fontsize=9)
        im = axes[r, 1].imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        axes[r, 1].set_title("attribution", fontsize=9)
        fig.colorbar(im, ax=axes[r, 1], fraction=0.046, pad=0.04)
        axes[r, 2].imshow(img, interpolation="nearest")
        axes[r, 2].imshow(heat_rgba(m, vmin, vmax, cmap, alpha), interpolation="bilinear")
        axes[r, 2].set_title("overlay", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    _finish(fig, suptitle)
    return fig


def grid_figure(
    image: np.ndarray,
    maps: Mapping[str, Sequence[np.ndarray]],
    target_titles: Sequence[str],
    *,
    suptitle: str = "",
    alpha: float = 0.85,
) -> Figure:
    """Methods as rows, targets as columns, overlays; every map on its own colour scale with its
    colour bar (:func:`xailab.drawing.grid_png` draws the same page fast)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    img = to_hwc(image)
    methods = list(maps)
    cols = len(target_titles) + 1
    fig = Figure(figsize=(2.8 * cols, 2.2 * len(methods) + 0.4))
    axes = fig.subplots(len(methods), cols, squeeze=False)
    for r, name in enumerate(methods):
        axes[r, 0].imshow(img, interpolation="nearest")
        axes[r, 0].set_ylabel(name, fontsize=9)
        for c, m in enumerate(maps[name], start=1):
            vmin, vmax, cmap = color_limits([m])
            axes[r, c].imshow(img, interpolation="nearest")
            axes[r, c].imshow(heat_rgba(m, vmin, vmax, cmap, alpha), interpolation="bilinear")
            bar = fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=axes[r, c], fraction=0.046, pad=0.03)
            bar.ax.tick_params(labelsize=7)
            if r == 0:
                axes[r, c].set_title(target_titles[c - 1], fontsize=8)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    _finish(fig, suptitle)
    return fig


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any) -> tuple[Figure, Any]:
    """``plt.subplots`` without pyplot: a plain :class:`Figure` (no backend chosen, nothing kept
    in pyplot's registry) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _finish(fig: Figure, suptitle: str) -> None:
    """Tight layout that keeps ``suptitle`` (in inches from the top) clear of the panels."""
    top = 1.0
    if suptitle:
        h = fig.get_figheight()
        fig.suptitle(plain(suptitle), fontsize=10, y=1.0 - 0.08 / h, va="top")
        top = 1.0 - 0.35 / h
    fig.tight_layout(rect=(0.0, 0.0, 1.0, top))


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG atomically (and close it when pyplot made it)."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        import sys

        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def plain(text: str) -> str:
    """Text shown literally by matplotlib: ``$`` would otherwise start math markup."""
    return text.replace("$", r"\$")


def target_title(name: str, class_name: str, probability: float) -> str:
    """``'top1: cat (0.81)'``, safe for any user-given class name."""
    return plain(f"{name}: {class_name} ({probability:.2f})")


def show(result: Any, images: Any, *, index: int = 0, alpha: float = 0.85) -> Figure:
    """Image ``index`` of an Explanation ``result`` with its maps for every target: one row per
    target (image | heatmap with its own colour bar | overlay). ``images`` as given to ``explain``
    (``[N, C, H, W]``, a tensor or an array, in [0, 1] for the picture to look right)."""
    maps = np.asarray(result.pixel_maps()[index].detach().cpu().double().numpy())  # [T, H, W]
    img = images[index]
    img = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-12)
    titles = [plain(f"{result.method}: {name} (class {int(t)})")
              for name, t in zip(result.target_names, result.targets[index].tolist(), strict=True)]
    return overlay_figure(img, list(maps), titles, alpha=alpha, shared_scale=False)
