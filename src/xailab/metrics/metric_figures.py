"""PNG figures of the metrics (no backend chosen, no pyplot): agreement matrix, histograms,
scatter, deletion/insertion curves and the randomisation cascade; those with a line per method
are small multiples (a panel per method in its own colour, the others in grey behind it). Each function returns the PNG bytes,
to be written with :func:`xailab.runs.atomic_write_bytes` (or anywhere).

    data = matrix_png(agreement_matrix(table, "iou"), title="IoU of the top 10 %")
    atomic_write_bytes(run.file("metrics/agreement_iou.png"), data)
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from xailab.metrics.distribution import Histogram
from xailab.plotting import subplots


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def matrix_png(matrix: pd.DataFrame, *, title: str = "", vmin: float = 0.0, vmax: float = 1.0) -> bytes:
    """A methods x methods heatmap with the values written in the cells."""
    n = len(matrix)
    fig, ax = subplots(figsize=(1.2 + 0.75 * n, 1.0 + 0.65 * n))
    im = ax.imshow(matrix.to_numpy(dtype=float), cmap="viridis", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(n), matrix.index)
    for i in range(n):
        for j in range(n):
            v = matrix.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if v < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(fig)


def histograms_png(hists: Mapping[str, Histogram], *, title: str = "") -> bytes:
    """Small multiples: one step-histogram (density) per method, the others in grey behind it;
    each panel's title gives the share of pixels kept."""
    fig, axes = _grid(len(hists), title)
    for ax, (k, (name, h)) in zip(axes, enumerate(hists.items()), strict=False):
        for other, g in hists.items():
            if other != name:
                ax.stairs(g.density, g.edges, color=CONTEXT, lw=0.7)
        ax.stairs(h.density, h.edges, color=colour(k), lw=1.6)
        ax.set_title(f"{name} ({100 * h.kept:.0f} % of pixels)", fontsize=8, color=colour(k))
    _labels(fig, axes, "normalised attribution  a / max|a|", "density")
    return _png(fig)


def scatter_png(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str = "") -> bytes:
    """Pixel-wise scatter of two methods' normalised maps, with the diagonal and, in a corner,
    the Pearson and Spearman correlations of the plotted points."""
    import torch

    from xailab.metrics.maps import rankdata, row_pearson

    fig, ax = subplots(figsize=(4, 4))
    ax.scatter(x, y, s=2, alpha=0.3, linewidths=0)
    lo = float(min(x.min(initial=0), y.min(initial=0)))
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
    if len(x) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        xy = torch.from_numpy(np.stack([x, y]).astype(np.float64))  # as scipy's pearsonr / spearmanr
        r, rho = float(row_pearson(xy[:1], xy[1:])[0]), float(row_pearson(*rankdata(xy).split(1))[0])
        ax.text(0.03, 0.97, f"Pearson r = {r:.3f}\nSpearman rho = {rho:.3f}\nn = {len(x):,} pixels",
                transform=ax.transAxes, va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def curves_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str, ylabel: str,
               better: str = "neither") -> bytes:
    """Small multiples of mean curves ``name -> (fractions, scores)``: one panel per method in its
    own colour, the other methods in grey behind it; the title gives the AUC, and the best AUC
    (``better``: ``"lower"`` or ``"higher"``) is marked "best" in bold."""
    aucs = {name: float(np.trapezoid(fy, fx)) for name, (fx, fy) in curves.items()}
    best = (min if better == "lower" else max)(aucs, key=lambda m: aucs[m]) if better in ("lower", "higher") else None
    fig, axes = _grid(len(curves), title)
    for ax, (k, (name, (fx, fy))) in zip(axes, enumerate(curves.items()), strict=False):
        for other, (ox, oy) in curves.items():
            if other != name:
                ax.plot(ox, oy, color=CONTEXT, lw=0.7)
        ax.plot(fx, fy, color=colour(k), lw=1.8)
        mark = name == best and len(curves) > 1
        ax.set_title(f"{name}: AUC {aucs[name]:.3f}" + (" (best)" if mark else ""), fontsize=8, color=colour(k),
                     fontweight="bold" if mark else "normal")
        if mark:
            for side in ax.spines.values():
                side.set(color=colour(k), linewidth=2)
    _labels(fig, axes, "share of pixels changed", ylabel)
    return _png(fig)


def cascade_png(tables: Mapping[str, pd.DataFrame], *, threshold: float, title: str = "") -> bytes:
    """Small multiples: mean Spearman per randomisation step, one panel per method (the others in
    grey), with the threshold above which a method is flagged."""
    fig, axes = _grid(len(tables), title)
    for ax, (k, (name, t)) in zip(axes, enumerate(tables.items()), strict=False):
        for other, o in tables.items():
            if other != name:
                ax.plot(np.arange(1, len(o) + 1), o["spearman"], color=CONTEXT, lw=0.7)
        ax.plot(np.arange(1, len(t) + 1), t["spearman"], marker="o", ms=3, color=colour(k), lw=1.6)
        ax.axhline(threshold, color="red", lw=0.8, ls="--")
        flagged = str(t["verdict"].iloc[-1]) if "verdict" in t and len(t) else ""
        ax.set_title(f"{name}{': ' + flagged if flagged else ''}", fontsize=8, color=colour(k),
                     fontweight="bold" if flagged == "flagged" else "normal")
        ax.set_ylim(-0.2, 1.05)
    _labels(fig, axes, "randomisation step (output layer first)",
            f"Spearman |map| vs original (red: flag threshold {threshold:g})")
    return _png(fig)


#: 14 distinct qualitative colours (tab10 without its grey, then four dark ones): one per method
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
           "#393b79", "#b15928", "#637939", "#843c39", "#7b4173")
#: the other methods drawn behind a panel's own
CONTEXT = "#d0d0d0"


def colour(k: int) -> str:
    """The ``k``-th method's colour (the palette repeats after 14 methods, each in its own panel)."""
    return PALETTE[k % len(PALETTE)]


def _grid(n: int, title: str, cols: int = 4) -> tuple[Figure, list[Any]]:
    """A grid of ``n`` panels sharing their axes, at most ``cols`` a row; unused panels hidden."""
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    fig, axes = subplots(rows, cols, figsize=(2.6 * cols + 0.6, 2.0 * rows + 0.7), squeeze=False,
                         sharex=True, sharey=True)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    for ax in flat[:n]:
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, lw=0.5)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig, flat[:n]


def _labels(fig: Figure, axes: list[Any], xlabel: str, ylabel: str) -> None:
    fig.supxlabel(xlabel, fontsize=8)
    fig.supylabel(ylabel, fontsize=8)
    fig.tight_layout()
