"""The numbers behind the overview's three questions, computed from what the runs stored.

Pure functions of arrays and tables (no HTML), so each answer can be tested on data made by hand:

* :func:`object_regions` and :func:`attribution_on_object`: where the positive attribution of an
  explain run lies, inside the object or around it;
* :func:`weakest_classes` and :func:`confused_pairs`: from ``per_class`` and ``confusion`` tables;
* :func:`instance_dynamics`: per tracked instance, from the per-epoch ``predictions`` table,
  Toneva et al.'s (2019) forgetting events and dataset cartography's (Swayamdipta et al. 2020)
  confidence and variability.

    regions, kind = object_regions(run.display())
    attribution_on_object(run.pixel_maps("saliency")[:, 0], regions)["mass_inside"].mean()
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: a border is a plain background when at least this share of its pixels lie within
#: ``FOREGROUND_DELTA`` of its median grey level
BORDER_PLAIN = 0.75
#: a pixel is foreground when it differs from the background by more than this (0..255)
FOREGROUND_DELTA = 25.0
#: the middle box's side, as a share of the image's side (its area is half the image)
CENTRE_SIDE = 0.5**0.5
#: variability (std of p(true class) over the epochs) from which an instance is ambiguous
AMBIGUOUS_STD = 0.2


def centre_box(h: int, w: int) -> np.ndarray:
    """``[h, w]`` bool: the middle box whose sides are ``CENTRE_SIDE`` of the image's (half its area)."""
    bh, bw = max(1, round(h * CENTRE_SIDE)), max(1, round(w * CENTRE_SIDE))
    top, left = (h - bh) // 2, (w - bw) // 2
    m = np.zeros((h, w), dtype=bool)
    m[top : top + bh, left : left + bw] = True
    return m


def object_regions(display: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Per image ``[N, C, H, W]`` (uint8): the object region ``[N, H, W]`` and how it was found.

    An image whose 2-pixel border is plain (``BORDER_PLAIN`` of its pixels within
    ``FOREGROUND_DELTA`` grey levels of the border's median; an object may touch the border) has a
    background: its object is every pixel that differs from that median by more than
    ``FOREGROUND_DELTA`` (``"foreground"``), when that covers 5-95 % of the image. Any other image
    (a photo) gets the centre box, half the image's area (``"centre box"``): a stand-in for an
    object mask, since the runs hold no segmentation.
    """
    x = np.asarray(display, dtype=np.float64)
    grey = x.mean(axis=1)
    n, h, w = grey.shape
    box = centre_box(h, w)
    masks = np.empty((n, h, w), dtype=bool)
    kinds: list[str] = []
    for i in range(n):
        g = grey[i]
        border = np.concatenate([g[:2].ravel(), g[-2:].ravel(), g[:, :2].ravel(), g[:, -2:].ravel()])
        bg = np.median(border)
        fg = np.abs(g - bg) > FOREGROUND_DELTA
        plain = float((np.abs(border - bg) <= FOREGROUND_DELTA).mean()) >= BORDER_PLAIN
        if plain and 0.05 <= fg.mean() <= 0.95:
            masks[i], kind = fg, "foreground"
        else:
            masks[i], kind = box, "centre box"
        kinds.append(kind)
    return masks, kinds


def _resize_nearest(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    if mask.shape[-2:] == (h, w):
        return mask
    rows = (np.arange(h) * mask.shape[-2] / h).astype(int)
    cols = (np.arange(w) * mask.shape[-1] / w).astype(int)
    return mask[..., rows[:, None], cols[None, :]]


def attribution_on_object(maps: np.ndarray, regions: np.ndarray) -> pd.DataFrame:
    """Per image: ``mass_inside`` = sum of ``max(map, 0)`` inside the region / its total, and
    ``area`` = the region's share of the image (what a map blind to the object would put there).

    ``maps [N, H, W]``; images whose map has no positive value are left out (NaN).
    Relevance mass as in Arras et al. (2022), "CLEVR-XAI", with the region as the mask.
    """
    m = np.maximum(np.asarray(maps, dtype=np.float64), 0.0)
    r = _resize_nearest(np.asarray(regions, dtype=bool), m.shape[-2], m.shape[-1])[: len(m)]
    m = m[: len(r)]
    total = m.sum(axis=(1, 2))
    inside = (m * r).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        mass = np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)
    return pd.DataFrame({"image": np.arange(len(r)), "mass_inside": mass, "area": r.mean(axis=(1, 2))})


def object_summary(per_method: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per method: images, mean mass inside, mean area, their ratio, share of images
    with more mass inside than the area."""
    rows = []
    for method, df in per_method.items():
        ok = df.dropna(subset=["mass_inside"])
        if not len(ok):
            continue
        mass, area = float(ok["mass_inside"].mean()), float(ok["area"].mean())
        rows.append({"method": method, "images": len(ok), "mass_inside": mass, "area": area,
                     "ratio": mass / area if area > 0 else float("nan"),
                     "images_above_area": float((ok["mass_inside"] > ok["area"]).mean())})
    return pd.DataFrame(rows, columns=["method", "images", "mass_inside", "area", "ratio", "images_above_area"])


def object_verdict(summary: pd.DataFrame, *, high: float = 1.25, low: float = 0.8) -> str:
    """``"object"``, ``"surroundings"``, ``"mixed"`` (methods disagree) or ``"neither"``, from the
    per-method ratios of mass inside to area: all (or the median with none against) above ``high``
    point at the object, below ``low`` at the surroundings."""
    ratios = summary["ratio"].dropna().to_numpy()
    if not len(ratios):
        return "neither"
    up, down = (ratios >= high).any(), (ratios <= low).any()
    if up and down:
        return "mixed"
    med = float(np.median(ratios))
    if med >= high:
        return "object"
    if med <= low:
        return "surroundings"
    return "neither"


def pick_split(df: pd.DataFrame, preferred: tuple[str, ...] = ("test", "val", "validation")) -> tuple[str, pd.DataFrame]:
    """The rows of one split (column ``name``): the first of ``preferred`` present, else the first."""
    if "name" not in df:
        return "", df
    names = [str(n) for n in dict.fromkeys(df["name"])]
    split = next((p for p in preferred if p in names), names[0])
    return split, df[df["name"].astype(str) == split]


def weakest_classes(per_class: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The ``n`` classes of lowest accuracy (recall) with some support, lowest first."""
    df = per_class
    if "support" in df:
        df = df[df["support"] > 0]
    return df.sort_values(["accuracy", "class" if "class" in df else "accuracy"]).head(n).reset_index(drop=True)


def confusion_matrix(conf: pd.DataFrame, k: int | None = None) -> np.ndarray:
    """``[K, K]`` counts (rows true, columns predicted) from a long ``true, predicted, count`` table."""
    t, p, c = (conf[col].to_numpy(np.int64) for col in ("true", "predicted", "count"))
    size = max(k or 0, int(t.max(initial=-1)) + 1, int(p.max(initial=-1)) + 1)
    m = np.zeros((size, size), dtype=np.int64)
    np.add.at(m, (t, p), c)
    return m


def confused_pairs(conf: pd.DataFrame, classes: list[str] | None = None, top: int = 5) -> pd.DataFrame:
    """The ``top`` (true, predicted) pairs with ``true != predicted`` by count, with ``share``:
    the count over the true class's total."""
    m = confusion_matrix(conf, len(classes or []))
    off = m.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    ys, ps = np.unravel_index(order, off.shape)
    keep = off[ys, ps] > 0
    ys, ps = ys[keep], ps[keep]

    def name(k: int) -> str:
        return classes[k] if classes is not None and k < len(classes) else str(k)

    totals = m.sum(axis=1)
    return pd.DataFrame({
        "true": [name(int(y)) for y in ys], "predicted as": [name(int(p)) for p in ps],
        "count": off[ys, ps].astype(np.int64), "share of the true class": off[ys, ps] / np.maximum(totals[ys], 1),
    })


def instance_dynamics(pred: pd.DataFrame) -> pd.DataFrame:
    """One row per tracked instance from a ``predictions`` table (``epoch, instance, label,
    predicted``, optionally ``p_label``, ``confidence``).

    Columns: ``instance, label, epochs, final`` (last prediction), ``correct`` (at the last
    epoch), ``right_epochs``, ``changes`` (epoch-to-epoch prediction changes), ``forgetting``
    (right -> wrong steps: Toneva et al. 2019), ``learned_then_forgotten`` (right at some epoch,
    wrong at the last), ``never_right``, and with ``p_label``: ``confidence`` (its mean over the
    epochs), ``variability`` (its std) and ``ambiguous`` (variability >= ``AMBIGUOUS_STD``: the
    "ambiguous" region of dataset cartography, Swayamdipta et al. 2020), ``p_final``.
    """
    df = pred.sort_values(["instance", "epoch"])
    pred_w = df.pivot(index="instance", columns="epoch", values="predicted")
    label = df.groupby("instance")["label"].first().reindex(pred_w.index).to_numpy(np.int64)
    p = pred_w.to_numpy(dtype=np.float64)  # NaN where an epoch was not recorded
    seen = ~np.isnan(p)
    right = (p == label[:, None]) & seen
    last = np.array([row[s][-1] if s.any() else -1 for row, s in zip(p, seen, strict=True)], dtype=np.int64)
    final_right = last == label
    steps = seen[:, 1:] & seen[:, :-1]
    changes = ((p[:, 1:] != p[:, :-1]) & steps).sum(axis=1)
    forgetting = (right[:, :-1] & ~right[:, 1:] & steps).sum(axis=1)
    out = pd.DataFrame({
        "instance": pred_w.index.to_numpy(np.int64), "label": label, "epochs": seen.sum(axis=1),
        "final": last, "correct": final_right, "right_epochs": right.sum(axis=1), "changes": changes,
        "forgetting": forgetting, "learned_then_forgotten": right.any(axis=1) & ~final_right,
        "never_right": ~right.any(axis=1),
    })
    if "p_label" in df:
        pl = df.pivot(index="instance", columns="epoch", values="p_label").reindex(pred_w.index).to_numpy(np.float64)
        out["confidence"] = np.nanmean(pl, axis=1)
        out["variability"] = np.nanstd(pl, axis=1)
        out["ambiguous"] = (out["epochs"] >= 2) & (out["variability"] >= AMBIGUOUS_STD)
        out["p_final"] = [row[s][-1] if s.any() else np.nan for row, s in zip(pl, ~np.isnan(pl), strict=True)]
    return out
