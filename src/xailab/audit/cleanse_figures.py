"""PNG evidence of Neural Cleanse: the mask sizes against the outlier threshold, and a flagged
class's reconstructed trigger beside where the explanations look.

    save_png(norms_figure(res), run.file("cleanse/norms.png"))
    save_png(trigger_figure(res, 7, agreement, pixels[0]), run.file("cleanse/trigger_7.png"))
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor

from xailab.audit.cleanse import CleanseResult, stamp
from xailab.audit.trigger_regions import Box, TriggerAgreement
from xailab.plotting import plain, to_hwc


def _box(ax: plt.Axes, box: Box | None, color: str) -> None:
    if box is not None:
        t, left, b, r = box
        ax.add_patch(Rectangle((left - 0.5, t - 0.5), r - left + 1, b - t + 1, fill=False, edgecolor=color, lw=1.5))


def norms_figure(res: CleanseResult) -> Figure:
    """The L1 norm of each class's mask (flagged in red) and the robust z of the classes below
    the median (of the norms, or of their log-ratio to the clean reference) against the threshold."""
    k = np.arange(len(res.l1))
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    colors = ["tab:red" if c in res.flagged else "tab:blue" for c in k]
    a.bar(k, res.l1, color=colors)
    a.axhline(float(np.median(res.l1)), color="grey", ls="--", lw=1, label="median")
    a.set_title("mask L1 norm per class (smaller: easier to reach)")
    a.legend(fontsize=8)
    z = res.z if res.z is not None else np.where(res.l1 < np.median(res.l1), res.anomaly, 0)
    b.bar(k, np.clip(z, 0, 10), color=colors)
    b.axhline(res.cutoff, color="tab:red", ls="--", lw=1, label=f"threshold {res.cutoff:.3g}")
    if res.critical is not None:
        title = f"t of the centred log L1 against {res.settings.alpha:g}-level class nulls (capped at 10)"
    else:
        of = "log(L1 / clean reference)" if res.reference is not None else "L1"
        title = f"robust z of {of} below the median (capped at 10)"
    b.set_title(title, fontsize=9)
    b.legend(fontsize=8)
    for ax in (a, b):
        ax.set_xticks(k)
        ax.set_xticklabels([plain(n)[:10] for n in res.class_names], rotation=60, fontsize=7)
    fig.tight_layout()
    return fig


def trigger_figure(res: CleanseResult, k: int, agree: TriggerAgreement | None, image: Tensor) -> Figure:
    """Class ``k``: mask, pattern, mask x pattern, a clean image with the trigger, and the mean
    explanation map of the triggered images with the mask's box (green) and the map's (orange)."""
    mask, pattern = res.masks[k], res.patterns[k]
    panels = [("mask", mask.numpy(), "gray"), ("pattern", to_hwc(pattern), None),
              ("mask x pattern", to_hwc(mask * pattern), None),
              ("an image with it", to_hwc(stamp(image[None], mask, pattern)[0].clamp(0, 1)), None)]
    if agree is not None:
        panels.append((f"{agree.method} map, triggered", agree.mean_triggered.numpy(), "Reds"))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.7), squeeze=False)
    for ax, (title, arr, cmap) in zip(axes[0], panels, strict=True):
        ax.imshow(arr.squeeze(), cmap=cmap if arr.ndim == 2 or arr.shape[-1] == 1 else None,
                  vmin=0 if cmap == "gray" else None, vmax=1 if cmap == "gray" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if agree is not None:
        _box(axes[0][0], agree.mask_box, "lime")
        _box(axes[0][-1], agree.mask_box, "lime")
        _box(axes[0][-1], agree.explanation_box, "orange")
    note = f"; box IoU {agree.iou:.2f}" if agree is not None else ""
    z = res.z[k] if res.z is not None else res.anomaly[k]
    fig.suptitle(plain(f"class {res.class_names[k]}: L1 {res.l1[k]:.1f}, {'t' if res.critical is not None else 'robust z'} {z:.2f}{note}"),
                 fontsize=10)
    fig.tight_layout()
    return fig
