"""Do two explanation methods agree? Overlap of their top regions, rank correlation, SSIM.

All functions take two sets of maps for the same ``N`` images (see :mod:`xailab.metrics.maps`
for the forms accepted and the ``mode`` option) and return one score per image, ``[N]``,
computed for all images at once. Maps of different resolutions are compared at the larger one.

* :func:`iou`: intersection over union of the two *top regions*. A top region is the ``top``
  fraction of pixels with the largest values (default 10 %, the share used by Hooker et al.
  2019's ROAR steps and a common "most important pixels" cut; pixels ``<= 0`` never count),
  or the pixels whose
  max-normalised value is ``>= threshold``, or a given boolean mask (e.g. LIME's selected
  superpixels)::

      IoU(A, B) = |A ∩ B| / |A ∪ B|      (NaN when both regions are empty)

* :func:`spearman`, :func:`kendall`, :func:`pearson`: correlation of the two maps' pixel values
  (Spearman = Pearson of the ranks, ties averaged; Kendall's tau-b via SciPy, one image at a time);
* :func:`~xailab.metrics.ssim.ssim`: structural similarity.

For many methods, :func:`pairwise` gives a long table (one row per image and pair of methods),
:func:`agreement_matrix` the methods x methods average and :func:`image_ranking` the images the
methods agree on least and most.

    scores = pairwise({"saliency": s, "gradcam": g, "lime": l}, top=0.1)
    agreement_matrix(scores, "iou")          # 3 x 3 DataFrame
    image_ranking(scores, "iou").head()      # images with the least agreement first
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, common_size, pixel_maps, prepare, rankdata, row_pearson
from xailab.metrics.ssim import ssim, structural_similarity

METRICS = ("iou", "spearman", "kendall", "pearson", "ssim")
DEFAULT_TOP = 0.1


def _is_mask(m: Maps) -> bool:
    return isinstance(m, Tensor) and m.dtype == torch.bool


def top_region(
    maps: Maps,
    *,
    top: float | None = DEFAULT_TOP,
    threshold: float | None = None,
    mode: Mode = "abs",
    size: tuple[int, int] | None = None,
    target: int = 0,
) -> Tensor:
    """Boolean masks ``[N, H, W]`` of the top region of each map (see the module docstring).

    ``threshold`` (on ``a / max|a|``) wins over ``top``; a boolean tensor is taken as the mask
    itself (resized to ``size`` by nearest neighbour). ``top`` keeps the
    ``max(1, round(top * H * W))`` largest pixels per map, ties broken by pixel index, but
    never a pixel whose value is ``<= 0`` (after ``mode``): a map that is zero almost
    everywhere, like a ReLU'd CAM, has a smaller top region rather than arbitrary zeros in it.
    """
    if _is_mask(maps):
        assert isinstance(maps, Tensor)
        mask = maps if maps.dim() == 3 else maps.any(dim=1) if maps.dim() == 4 else None
        if mask is None:
            raise InputError(f"a mask must be [N, H, W], got shape {tuple(maps.shape)}")
        if size is not None and tuple(mask.shape[-2:]) != tuple(size):
            mask = F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0] > 0.5
        return mask
    a = prepare(maps, mode=mode, size=size, target=target)
    n, h, w = a.shape
    flat = a.reshape(n, -1)
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold is on max-normalised maps and must lie in [0, 1], got {threshold}")
        scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-30)
        keep = (flat / scale >= threshold) & (flat.abs().amax(dim=1, keepdim=True) > 0)
        return keep.reshape(n, h, w)
    if top is None or not 0.0 < top <= 1.0:
        raise InputError(f"top is the fraction of pixels kept and must lie in (0, 1], got {top}")
    k = max(1, round(top * h * w))
    # stable descending order: ties go to the lower pixel index, so results are reproducible
    order = torch.argsort(-flat, dim=1, stable=True)[:, :k]
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, order, True)
    return (keep & (flat > 0)).reshape(n, h, w)


def _pair(a: Maps, b: Maps, target: int) -> tuple[Maps, Maps, tuple[int, int]]:
    sa = a if _is_mask(a) else pixel_maps(a, target, name="first maps")
    sb = b if _is_mask(b) else pixel_maps(b, target, name="second maps")
    assert isinstance(sa, Tensor) and isinstance(sb, Tensor)
    if len(sa) != len(sb):
        raise InputError(f"the two sets of maps cover {len(sa)} and {len(sb)} images; they must match")
    return sa, sb, common_size([sa, sb])


@metric(
    direction="neither", category="agreement", low=0.0, high=1.0,
    summary="intersection over union of two methods' top regions",
)
def iou(
    a: Maps,
    b: Maps,
    *,
    top: float | None = DEFAULT_TOP,
    threshold: float | None = None,
    mode: Mode = "abs",
    target: int = 0,
) -> Tensor:
    """IoU of the top regions of ``a`` and ``b`` per image, ``[N]`` (either may be a bool mask)."""
    sa, sb, size = _pair(a, b, target)
    ma = top_region(sa, top=top, threshold=threshold, mode=mode, size=size)
    mb = top_region(sb, top=top, threshold=threshold, mode=mode, size=size)
    inter = (ma & mb).flatten(1).sum(dim=1).double()
    union = (ma | mb).flatten(1).sum(dim=1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))


def _flat_pair(a: Maps, b: Maps, mode: Mode, target: int) -> tuple[Tensor, Tensor]:
    sa, sb, size = _pair(a, b, target)
    pa = prepare(sa, mode=mode, size=size).flatten(1).double()
    pb = prepare(sb, mode=mode, size=size).flatten(1).double()
    return pa, pb


@metric(
    direction="neither", category="agreement", low=-1.0, high=1.0,
    summary="Pearson correlation of two methods' pixel values",
)
def pearson(a: Maps, b: Maps, *, mode: Mode = "abs", target: int = 0) -> Tensor:
    """Pearson correlation of the two maps' pixel values per image, ``[N]`` (NaN for a flat map)."""
    return row_pearson(*_flat_pair(a, b, mode, target))


@metric(
    direction="neither", category="agreement", low=-1.0, high=1.0,
    summary="Spearman rank correlation of two methods' pixel values",
)
def spearman(a: Maps, b: Maps, *, mode: Mode = "abs", target: int = 0) -> Tensor:
    """Spearman rank correlation per image, ``[N]``: Pearson of the ranks, ties averaged."""
    pa, pb = _flat_pair(a, b, mode, target)
    return row_pearson(rankdata(pa), rankdata(pb))


@metric(
    direction="neither", category="agreement", low=-1.0, high=1.0,
    summary="Kendall's tau-b of two methods' pixel values",
)
def kendall(a: Maps, b: Maps, *, mode: Mode = "abs", target: int = 0) -> Tensor:
    """Kendall's tau-b per image, ``[N]`` (SciPy's O(P log P) algorithm, one image at a time)."""
    return _kendall_rows(*_flat_pair(a, b, mode, target))


def _kendall_rows(x: Tensor, y: Tensor) -> Tensor:
    from scipy.stats import kendalltau

    out = [kendalltau(u, v).statistic for u, v in zip(x.cpu().numpy(), y.cpu().numpy(), strict=True)]
    return torch.tensor(out, dtype=torch.float64)


def score(
    metric: str,
    a: Maps,
    b: Maps,
    *,
    top: float | None = DEFAULT_TOP,
    threshold: float | None = None,
    mode: Mode = "abs",
    target: int = 0,
) -> Tensor:
    """One agreement ``metric`` (one of :data:`METRICS`) of ``a`` and ``b`` per image."""
    if metric == "iou":
        return iou(a, b, top=top, threshold=threshold, mode=mode, target=target)
    if metric == "ssim":
        return ssim(a, b, mode=mode, target=target)
    funcs = {"spearman": spearman, "kendall": kendall, "pearson": pearson}
    if metric not in funcs:
        raise InputError(f"unknown agreement metric {metric!r}; choose from {', '.join(METRICS)}")
    return funcs[metric](a, b, mode=mode, target=target)


def _prepared(m: Maps, size: tuple[int, int], metrics: Sequence[str], top: float | None,
              threshold: float | None, mode: Mode) -> dict[str, Tensor]:
    """What the metrics need of one method's maps, computed once for all its pairs."""
    out: dict[str, Tensor] = {"mask": top_region(m, top=top, threshold=threshold, mode=mode, size=size)}
    if _is_mask(m):
        return out
    a = prepare(m, mode=mode, size=size).double()
    out["flat"] = a.flatten(1)
    if "spearman" in metrics:
        out["ranks"] = rankdata(out["flat"])
    if "ssim" in metrics:
        out["norm"] = a / a.abs().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return out


def _pair_scores(pa: dict[str, Tensor], pb: dict[str, Tensor], metrics: Sequence[str]) -> dict[str, Tensor]:
    n = len(pa["mask"])
    out: dict[str, Tensor] = {}
    for m in metrics:
        if m == "iou":
            inter = (pa["mask"] & pb["mask"]).flatten(1).sum(dim=1).double()
            union = (pa["mask"] | pb["mask"]).flatten(1).sum(dim=1).double()
            out[m] = torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, float("nan")))
        elif "flat" not in pa or "flat" not in pb:
            out[m] = torch.full((n,), float("nan"), dtype=torch.float64)  # a mask has no ranks
        elif m == "pearson":
            out[m] = row_pearson(pa["flat"], pb["flat"])
        elif m == "spearman":
            out[m] = row_pearson(pa["ranks"], pb["ranks"])
        elif m == "kendall":
            out[m] = _kendall_rows(pa["flat"], pb["flat"])
        else:  # ssim, as :func:`xailab.metrics.ssim.ssim`
            both = torch.cat([pa["norm"].flatten(1), pb["norm"].flatten(1)], dim=1)
            rng = (both.amax(dim=1) - both.amin(dim=1)).clamp_min(1e-12)
            out[m] = structural_similarity(pa["norm"], pb["norm"], rng)
    return out


def pairwise(
    maps: Mapping[str, Maps],
    *,
    metrics: Sequence[str] = ("iou", "spearman", "pearson", "ssim"),
    top: float | None = DEFAULT_TOP,
    threshold: float | None = None,
    mode: Mode = "abs",
    target: int = 0,
    chunk: int = 256,
) -> pd.DataFrame:
    """Every pair of methods in ``maps`` (name -> maps), every image: columns ``image,
    method_a, method_b`` and one column per metric. Pairs follow the order of ``maps``.

    Each method's maps are prepared once (top region, ranks, normalised map) for all its pairs,
    ``chunk`` images at a time, all at the largest resolution among the methods.
    """
    if len(maps) < 2:
        raise InputError(f"agreement needs at least two methods, got {len(maps)}: {', '.join(maps) or 'none'}")
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise InputError(f"unknown agreement metric {', '.join(bad)}; choose from {', '.join(METRICS)}")
    flat = {k: v if _is_mask(v) else pixel_maps(v, target, name=f"maps of {k}") for k, v in maps.items()}
    counts = {k: len(v) for k, v in flat.items()}
    if len(set(counts.values())) > 1:
        raise InputError(f"the methods' maps cover different numbers of images: {counts}")
    n = next(iter(counts.values()))
    size = common_size([v for v in flat.values() if isinstance(v, Tensor)])
    pairs = list(itertools.combinations(flat, 2))
    scores: dict[tuple[str, str], list[dict[str, Tensor]]] = {p: [] for p in pairs}
    for lo in range(0, n, max(1, chunk)):
        prep = {k: _prepared(v[lo : lo + chunk], size, metrics, top, threshold, mode)  # type: ignore[index]
                for k, v in flat.items()}
        for ka, kb in pairs:
            scores[(ka, kb)].append(_pair_scores(prep[ka], prep[kb], metrics))
    frames = []
    for ka, kb in pairs:
        cols: dict[str, object] = {"image": np.arange(n), "method_a": ka, "method_b": kb}
        for m in metrics:
            cols[m] = torch.cat([part[m] for part in scores[(ka, kb)]]).cpu().numpy()
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def agreement_matrix(table: pd.DataFrame, metric: str = "iou") -> pd.DataFrame:
    """Methods x methods mean of ``metric`` over images (NaN-skipping), 1 on the diagonal."""
    if metric not in table.columns:
        raise InputError(f"the agreement table has no column {metric!r} (columns: {', '.join(table.columns)})")
    names = list(dict.fromkeys([*table["method_a"], *table["method_b"]]))
    means = table.groupby(["method_a", "method_b"], sort=False)[metric].mean()
    out = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
    for (ka, kb), v in means.items():
        out.loc[ka, kb] = out.loc[kb, ka] = v
    return out


def image_ranking(table: pd.DataFrame, metric: str = "iou", names: Sequence[str] | None = None) -> pd.DataFrame:
    """Per image: mean, min and max of ``metric`` over all pairs of methods, lowest mean first
    (the images the methods disagree on most head the table; the tail is where they agree)."""
    if metric not in table.columns:
        raise InputError(f"the agreement table has no column {metric!r} (columns: {', '.join(table.columns)})")
    g = table.groupby("image")[metric]
    out = pd.DataFrame({"mean": g.mean(), "min": g.min(), "max": g.max()}).reset_index()
    worst = table.loc[table.groupby("image")[metric].idxmin().dropna()]
    out = out.merge(
        worst[["image", "method_a", "method_b"]].rename(columns={"method_a": "least_a", "method_b": "least_b"}),
        on="image", how="left",
    )
    if names is not None:
        out.insert(1, "name", [names[i] for i in out["image"]])
    out = out.sort_values(["mean", "image"], kind="stable").reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    return out
