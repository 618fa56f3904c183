"""The report's own figures: confusion matrix, training curves, the images themselves.

All text drawn by matplotlib goes through :func:`~xailab.plotting.plain`, so a class
named ``$x$`` is shown as written.

    confusion_png(conf, ["cat", "dog"], "site/img/train/confusion-test.png")
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from xailab.plotting import plain, save_png, subplots
from xailab.runs.store import atomic_write_bytes


def confusion_png(conf: pd.DataFrame, classes: Sequence[str], path: Path) -> Path:
    """Rows = true class, columns = predicted, cells = counts, shaded by row share."""
    k = max(len(classes), int(conf["true"].max()) + 1, int(conf["predicted"].max()) + 1)
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (conf["true"].to_numpy(int), conf["predicted"].to_numpy(int)), conf["count"].to_numpy(int))
    labels = [plain(str(classes[i])) if i < len(classes) else str(i) for i in range(k)]
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    size = min(12.0, 2.5 + 0.55 * k)
    fig, ax = subplots(figsize=(size, size * 0.85))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.6 else "black")
    ticks = list(range(k)) if k <= 40 else []
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, [labels[i] for i in ticks], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return save_png(fig, path)


def curves_png(metrics: pd.DataFrame, path: Path) -> Path | None:
    """Loss and accuracy per epoch (train and validation columns that are present)."""
    df = metrics.sort_values("epoch")
    loss = [(c, "loss") for c in ("train_loss", "val_loss") if c in df]
    acc = [(c, "accuracy") for c in ("train_acc", "val_acc") if c in df]
    panels = [p for p in (loss, acc) if p]
    if "epoch" not in df or not panels:
        return None
    fig, axes = subplots(1, len(panels), figsize=(5.2 * len(panels), 3.4), squeeze=False)
    for ax, cols in zip(axes[0], panels, strict=True):
        for col, what in cols:
            ax.plot(df["epoch"], df[col], marker="o", label=col.replace("_", " "))
            ax.set_ylabel(what)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(df) == 1:
            e = float(df["epoch"].iloc[0])
            ax.set_xlim(e - 1, e + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


def image_png(image: np.ndarray, path: Path) -> Path:
    """A ``[C, H, W]`` uint8 image (C = 1 or 3) as a PNG at its own size."""
    arr = np.asarray(image)
    arr = arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8))).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())


def object_share_png(summary: pd.DataFrame, examples: np.ndarray, regions: np.ndarray, path: Path) -> Path:
    """Left: per method, the share of positive attribution inside the object region beside the
    region's area; right: up to six images with their region outlined (what "object" meant)."""
    n_ex = min(6, len(examples))
    fig = Figure(figsize=(4.2 + 1.1 * n_ex, 3.0))
    grid = fig.add_gridspec(2, 1 + max(1, (n_ex + 1) // 2), width_ratios=[3.2] + [1.0] * max(1, (n_ex + 1) // 2))
    ax = fig.add_subplot(grid[:, 0])
    y = np.arange(len(summary))
    ax.barh(y + 0.2, summary["mass_inside"], 0.4, color="tab:orange", label="attribution inside")
    ax.barh(y - 0.2, summary["area"], 0.4, color="tab:gray", label="area of the region")
    ax.set_yticks(y, [plain(str(m)) for m in summary["method"]], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share")
    ax.legend(fontsize=7, loc="lower right")
    ax.invert_yaxis()
    for i in range(n_ex):
        a = fig.add_subplot(grid[i % 2, 1 + i // 2])
        img = np.asarray(examples[i], dtype=np.float64)
        img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
        a.imshow(img / 255.0, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        m = regions[i].astype(float)
        if 0 < m.mean() < 1:
            a.contour(m, levels=[0.5], colors="yellow", linewidths=0.8)
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    return save_png(fig, path)
