"""PNG figures of the metrics (matplotlib, headless): agreement matrix, histograms, scatter,
deletion/insertion curves and the randomisation cascade. Each function returns the PNG bytes,
to be written with :func:`xailab.runs.atomic_write_bytes` (or anywhere).

    data = matrix_png(agreement_matrix(table, "iou"), title="IoU of the top 10 %")
    atomic_write_bytes(run.file("metrics/agreement_iou.png"), data)
"""

from __future__ import annotations

import io
from collections.abc import Mapping

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
    """One step-histogram (density) per method on a shared axis; the legend gives the kept share."""
    fig, ax = subplots(figsize=(6, 3.6))
    for name, h in hists.items():
        ax.stairs(h.density, h.edges, label=f"{name} ({100 * h.kept:.0f} % of pixels)")
    ax.set_xlabel("normalised attribution  a / max|a|")
    ax.set_ylabel("density")
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _png(fig)


def scatter_png(x: np.ndarray, y: np.ndarray, *, xlabel: str, ylabel: str, title: str = "") -> bytes:
    """Pixel-wise scatter of two methods' normalised maps, with the diagonal and, in a corner,
    the Pearson and Spearman correlations of the plotted points."""
    from scipy.stats import pearsonr, spearmanr

    fig, ax = subplots(figsize=(4, 4))
    ax.scatter(x, y, s=2, alpha=0.3, linewidths=0)
    lo = float(min(x.min(initial=0), y.min(initial=0)))
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
    if len(x) > 2 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r, rho = float(pearsonr(x, y)[0]), float(spearmanr(x, y)[0])
        ax.text(0.03, 0.97, f"Pearson r = {r:.3f}\nSpearman rho = {rho:.3f}\nn = {len(x):,} pixels",
                transform=ax.transAxes, va="top", fontsize=7,
                bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def curves_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, title: str, ylabel: str) -> bytes:
    """Mean curves ``name -> (fractions, scores)``; the legend gives each AUC."""
    fig, ax = subplots(figsize=(5.5, 3.6))
    for name, (fx, fy) in curves.items():
        ax.plot(fx, fy, label=f"{name} (AUC {np.trapezoid(fy, fx):.3f})")
    ax.set_xlabel("share of pixels changed")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _png(fig)


def cascade_png(tables: Mapping[str, pd.DataFrame], *, threshold: float, title: str = "") -> bytes:
    """Mean Spearman per randomisation step, one line per method, with the verdict threshold."""
    fig, ax = subplots(figsize=(6, 3.6))
    for name, t in tables.items():
        ax.plot(np.arange(1, len(t) + 1), t["spearman"], marker="o", ms=3, label=name)
    ax.axhline(threshold, color="red", lw=0.8, ls="--", label=f"flag threshold {threshold}")
    ax.set_xlabel("randomisation step (output layer first)")
    ax.set_ylabel("Spearman |map| vs original")
    ax.set_ylim(-0.2, 1.05)
    ax.legend(fontsize=7)
    ax.set_title(title)
    return _png(fig)
