"""Channel screening for the perturbation CAMs (Score-CAM, Ablation-CAM): fewer forward passes.

Score-CAM and Ablation-CAM pay one forward pass per channel of the layer. A channel's term in
the map is ``w_k A_k``; where ``A_k`` is zero (a dead ReLU channel for this image) the term is
zero whatever ``w_k``, and where ``A_k`` is small the term is small. ``channels`` keeps, per
image, only the channels with the most activation energy ``e_k = mean |A_k|`` and skips the
others' passes:

* ``None`` (default): every channel, the published methods;
* an int ``n``: the ``n`` channels of largest ``e_k``;
* a float ``f`` in (0, 1]: the fewest channels whose energies add up to a share ``f`` of the
  total (``1.0`` drops only the channels that are exactly zero).

A channel with ``e_k = 0`` is always skipped (one with energy is always kept first). For
Ablation-CAM a skipped channel's weight is 0: exact for zero channels (zeroing them changes
nothing). For Score-CAM the softmax runs over the kept channels: for zero channels that only
rescales the whole map (their masks are empty images whose softmax mass is left out). What
screening changes beyond that is measured by ``python -m bench.bench_cam_screening`` (map
correlation with the full method, deletion AUC, evaluations).

    create("score_cam", model, layer="layer4", channels=0.9)   # channels with 90 % of the energy
"""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.core.errors import InputError

Channels = int | float | None


def check_channels(channels: Channels) -> Channels:
    """``channels`` validated (see the module docstring)."""
    if channels is None:
        return None
    if isinstance(channels, bool) or not isinstance(channels, int | float):
        raise InputError(f"channels must be None, an int >= 1 or a float in (0, 1], got {channels!r}")
    if isinstance(channels, int) and channels < 1:
        raise InputError(f"channels must be >= 1 when an int, got {channels}")
    if isinstance(channels, float) and not 0 < channels <= 1:
        raise InputError(f"channels must be in (0, 1] when a float (a share of the energy), got {channels}")
    return channels


def screen(maps: Tensor, channels: Channels) -> Tensor:
    """``[B, K]`` bool: the channels of ``maps [B, K, h, w]`` kept for each image."""
    b, k = maps.shape[:2]
    if channels is None:
        return torch.ones(b, k, dtype=torch.bool, device=maps.device)
    energy = maps.abs().mean(dim=(-2, -1)).to(torch.float64)  # [B, K]
    order = energy.argsort(dim=1, descending=True)
    sorted_e = energy.gather(1, order)
    if isinstance(channels, int):
        keep_sorted = torch.arange(k, device=maps.device).expand(b, k) < channels
    else:
        before = sorted_e.cumsum(1) - sorted_e  # energy of the channels ranked above
        keep_sorted = before < channels * sorted_e.sum(1, keepdim=True) * (1 - 1e-12)
    keep_sorted &= sorted_e > 0
    keep_sorted[:, 0] = True  # at least one channel per image
    return torch.zeros(b, k, dtype=torch.bool, device=maps.device).scatter(1, order, keep_sorted)
