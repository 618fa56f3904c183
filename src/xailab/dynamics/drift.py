"""How explanations move over training: drift, settling, flips and the mass in a region.

Given one method's maps of ``N`` tracked instances at ``E`` checkpoints, ``maps [E, N, h, w]``
(epochs ascending), and the predictions of the flow at the same epochs:

* **drift** between consecutive checkpoints and against the last one, per instance: Spearman's
  rank correlation of the ``|map|`` pixels and the IoU of the top regions (top 10 % of pixels,
  :func:`xailab.metrics.agreement.iou`); the consecutive *change* is ``1 - rank correlation``;
* the **settling epoch**: the first epoch from which the map's rank correlation with the last
  map stays ``>= settle`` (0.8) up to the end;
* **flips vs map changes**: for each prediction flip (the prediction at epoch ``e_s`` differs
  from the one at ``e_{s-1}``), the step of the largest map change within ``window`` steps
  of the flip step (clipped to the run). ``before`` / ``with`` / ``after`` say where it fell;
  ``lead = P(largest change at or before the flip)``, beside ``chance``, its value if the
  largest change fell uniformly in the (clipped) window;
* **region mass**: the share of ``|map|`` inside a region (a box, the border), per epoch.

    d = drift_measures(maps, epochs)                  # {"rank_prev": [E, N], ...}
    settling_epochs(d["rank_last"], epochs)            # [N]
    flips_vs_changes(predicted, 1 - d["rank_prev"])    # (flips table, summary)
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from xailab.core.errors import InputError
from xailab.metrics.agreement import iou, spearman

SETTLE = 0.8
WINDOW = 2


def _pair_scores(a: np.ndarray, b: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    ta, tb = torch.from_numpy(np.asarray(a, np.float32)), torch.from_numpy(np.asarray(b, np.float32))
    return (spearman(ta, tb, mode="abs").numpy().astype(np.float32),
            iou(ta, tb, top=top, mode="abs").numpy().astype(np.float32))


def drift_measures(maps: np.ndarray, top: float = 0.1) -> dict[str, np.ndarray]:
    """``rank_prev``, ``iou_prev`` (against the epoch before; NaN at the first) and
    ``rank_last``, ``iou_last`` (against the last epoch), each ``[E, N]``."""
    m = np.asarray(maps)
    if m.ndim != 4:
        raise InputError(f"maps must be [epochs, instances, h, w], got shape {m.shape}")
    e, n = m.shape[:2]
    out = {k: np.full((e, n), np.nan, np.float32) for k in ("rank_prev", "iou_prev", "rank_last", "iou_last")}
    for i in range(e):
        if i > 0:
            out["rank_prev"][i], out["iou_prev"][i] = _pair_scores(m[i - 1], m[i], top)
        out["rank_last"][i], out["iou_last"][i] = _pair_scores(m[i], m[-1], top)
    return out


def settling_epochs(rank_last: np.ndarray, epochs: Sequence[int], settle: float = SETTLE) -> np.ndarray:
    """``[N]`` the first epoch from which ``rank_last`` stays ``>= settle`` (NaN counts as not
    settled; a constant map has NaN correlation); the last epoch always qualifies."""
    ok = np.nan_to_num(np.asarray(rank_last), nan=-1.0) >= settle
    ok[-1] = True
    # stays ok up to the end: reverse cumulative AND
    stays = np.flip(np.logical_and.accumulate(np.flip(ok, 0), axis=0), 0)
    first = np.argmax(stays, axis=0)
    return np.asarray(epochs, np.int64)[first]


def flips_vs_changes(predicted: np.ndarray, change: np.ndarray, epochs: Sequence[int],
                     window: int = WINDOW) -> tuple[pd.DataFrame, dict[str, float]]:
    """Where the largest map change falls around each prediction flip.

    Args:
        predicted: ``[N, E]`` predicted class per instance and epoch (``-1``: not recorded).
        change: ``[E, N]`` map change from the epoch before (row 0 unused), e.g. ``1 - rank_prev``.
        window: steps either side of the flip searched for the largest change.

    Returns a table (instance row, flip epoch, epoch of the largest change, relation) and
    ``{"flips", "before", "with", "after", "lead", "chance", "change_at_flips", "change_elsewhere"}``.
    """
    pred = np.asarray(predicted)
    ch = np.nan_to_num(np.asarray(change, np.float64), nan=0.0)
    ep = np.asarray(epochs, np.int64)
    n_e = len(ep)
    rows, chance = [], []
    flip_mask = np.zeros((n_e, pred.shape[0]), bool)
    for s in range(1, n_e):
        flipped = (pred[:, s] != pred[:, s - 1]) & (pred[:, s] >= 0) & (pred[:, s - 1] >= 0)
        flip_mask[s] = flipped
        lo, hi = max(1, s - window), min(n_e - 1, s + window)
        for i in np.flatnonzero(flipped):
            best = lo + int(np.argmax(ch[lo:hi + 1, i]))
            rel = "before" if best < s else "with" if best == s else "after"
            rows.append({"row": int(i), "flip_epoch": int(ep[s]), "change_epoch": int(ep[best]), "relation": rel,
                         "change_at_flip": float(ch[s, i]), "largest_change": float(ch[best, i])})
            chance.append((s - lo + 1) / (hi - lo + 1))
    table = pd.DataFrame(rows, columns=["row", "flip_epoch", "change_epoch", "relation", "change_at_flip",
                                        "largest_change"])
    n = len(table)
    counts = table["relation"].value_counts() if n else pd.Series(dtype=int)
    other = ~flip_mask[1:]
    summary = {
        "flips": float(n),
        **{k: float(counts.get(k, 0)) / n if n else float("nan") for k in ("before", "with", "after")},
        "lead": float(counts.get("before", 0) + counts.get("with", 0)) / n if n else float("nan"),
        "chance": float(np.mean(chance)) if chance else float("nan"),
        "change_at_flips": float(ch[flip_mask].mean()) if n else float("nan"),
        "change_elsewhere": float(ch[1:][other].mean()) if other.any() else float("nan"),
    }
    return table, summary


def region_mask(spec: str, size: tuple[int, int]) -> np.ndarray:
    """A boolean ``[H, W]`` mask: ``"box:x0,y0,x1,y1"`` (pixels, end exclusive) or ``"border:k"``
    (the ``k`` outermost pixels on every side)."""
    h, w = size
    m = re.fullmatch(r"\s*(box|border)\s*:\s*([\d,\s]+)", spec)
    nums = [int(v) for v in m.group(2).split(",") if v.strip()] if m else []
    mask = np.zeros((h, w), bool)
    if m and m.group(1) == "border" and len(nums) == 1 and 0 < nums[0] * 2 < min(h, w):
        k = nums[0]
        mask[:k], mask[-k:], mask[:, :k], mask[:, -k:] = True, True, True, True
        return mask
    if m and m.group(1) == "box" and len(nums) == 4:
        x0, y0, x1, y1 = nums
        if 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h:
            mask[y0:y1, x0:x1] = True
            return mask
    raise InputError(f"cannot read region {spec!r} for {w}x{h} images: write box:x0,y0,x1,y1 (pixels, "
                     "end exclusive, inside the image) or border:k (k < half the side)")


def to_size(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Maps ``[N, h, w]`` upsampled bilinearly to ``size`` (as a CAM is), or as they are."""
    a = np.asarray(maps, np.float32)
    if tuple(a.shape[-2:]) == tuple(size):
        return a
    t = F.interpolate(torch.from_numpy(a)[:, None], size=tuple(size), mode="bilinear", align_corners=False)
    return t[:, 0].numpy()


def region_mass(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[N]`` share of ``|map|`` inside ``mask`` (maps at the mask's size; NaN for a zero map)."""
    a = np.abs(to_size(maps, mask.shape))
    total = a.reshape(len(a), -1).sum(1)
    inside = a[:, mask].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan).astype(np.float32)
