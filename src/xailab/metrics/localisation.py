"""Localisation: does the map point at the object, given a ground-truth mask ``[N, H, W]``?

* **Pointing game** (Zhang et al. 2018, "Top-down neural attention by excitation backprop",
  IJCV, arXiv:1608.00507): a hit when the map's maximum lies inside the mask (any of tied
  maxima; within ``tolerance`` pixels of it when given). Score 0 or 1 per image.
* **Relevance mass accuracy** (Arras et al. 2022, "CLEVR-XAI", Information Fusion,
  arXiv:2003.07258): the share of the relevance that falls inside the mask,
  ``sum_{p in M} R_p / sum_p R_p``.
* **Relevance rank accuracy** (Arras et al. 2022): with ``K = |M|``, the share of the ``K``
  most relevant pixels that lie inside the mask, ``|top_K(R) ∩ M| / K`` (ties by pixel index).

All three are higher-is-better, lie in ``[0, 1]`` and are NaN for an image whose mask is empty.
Arras et al. use the positive relevance only, hence the default ``mode="positive"``; maps of
another resolution than the masks are resized to the masks'.

    pointing_game(maps, masks).mean()         # share of hits
    relevance_mass(maps, masks)               # [N]
    relevance_rank(maps, masks)               # [N]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, pixel_maps, prepare


def _inputs(maps: Maps, masks: Tensor, mode: Mode, target: int) -> tuple[Tensor, Tensor]:
    if not isinstance(masks, Tensor):
        raise InputError(f"masks must be a tensor [N, H, W], got {type(masks).__name__}")
    m = masks[:, 0] if masks.dim() == 4 and masks.shape[1] == 1 else masks
    if m.dim() != 3:
        raise InputError(f"masks must be [N, H, W] (one ground-truth mask per image), got {tuple(masks.shape)}")
    a = pixel_maps(maps, target)
    if len(a) != len(m):
        raise InputError(f"{len(a)} maps for {len(m)} masks: one mask per image is needed")
    a = prepare(a, mode=mode, size=(int(m.shape[-2]), int(m.shape[-1])))
    return a.double().flatten(1), (m != 0).flatten(1).to(a.device)


def _nan_if_empty(score: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.any(dim=1), score, torch.full_like(score, float("nan")))


@metric(
    direction="higher", category="localisation", low=0.0, high=1.0,
    summary="whether the map's maximum lies inside the object mask",
)
def pointing_game(
    maps: Maps, masks: Tensor, *, tolerance: int = 0, mode: Mode = "positive", target: int = 0
) -> Tensor:
    """1.0 where the map's maximum falls inside the mask (dilated by ``tolerance`` pixels), else 0."""
    a, m = _inputs(maps, masks, mode, target)
    if tolerance > 0:
        h, w = masks.shape[-2:]
        grid = m.view(-1, 1, h, w).double()
        k = 2 * tolerance + 1
        m = (F.max_pool2d(grid, k, stride=1, padding=tolerance) > 0).flatten(1)
    top = a == a.amax(dim=1, keepdim=True)
    return _nan_if_empty((top & m).any(dim=1).double(), m)


@metric(
    direction="higher", category="localisation", low=0.0, high=1.0,
    summary="share of the relevance inside the object mask",
)
def relevance_mass(maps: Maps, masks: Tensor, *, mode: Mode = "positive", target: int = 0) -> Tensor:
    """Share of the relevance inside the mask, ``[N]`` (NaN for an all-zero map or empty mask)."""
    a, m = _inputs(maps, masks, mode, target)
    total = a.sum(dim=1)
    inside = (a * m).sum(dim=1)
    score = torch.where(total != 0, inside / torch.where(total != 0, total, 1.0), torch.full_like(total, float("nan")))
    return _nan_if_empty(score, m)


@metric(
    direction="higher", category="localisation", low=0.0, high=1.0,
    summary="share of the |mask| most relevant pixels inside the mask",
)
def relevance_rank(maps: Maps, masks: Tensor, *, mode: Mode = "positive", target: int = 0) -> Tensor:
    """Share of the ``|mask|`` most relevant pixels that lie inside the mask, ``[N]``."""
    a, m = _inputs(maps, masks, mode, target)
    k = m.sum(dim=1)
    order = torch.argsort(-a, dim=1, stable=True)
    hits = torch.gather(m, 1, order).double()
    pos = torch.arange(a.shape[1], device=a.device)[None, :]
    inside_top = (hits * (pos < k[:, None])).sum(dim=1)
    return _nan_if_empty(inside_top / k.clamp_min(1), m)
