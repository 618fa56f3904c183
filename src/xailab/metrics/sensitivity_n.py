"""Sensitivity-n (Ancona et al. 2018, "Towards better understanding of gradient-based attribution
methods for deep neural networks", ICLR, arXiv:1711.06104), as Quantus 0.6 estimates it.

Ancona et al. call a map *sensitive-n* when, for every subset ``S`` of ``n`` features, the sum
of its attributions equals the drop of the output when ``S`` is removed; they report the Pearson
correlation of the two, as a function of ``n``. Quantus's ``SensitivityN`` (followed here, so
that the numbers are the same) estimates it over a *set of images* rather than random subsets
of one image: features are removed ``step`` at a time, most relevant first, and for the ``k``-th
step::

    drop_k(x)  = f(x) - f(x with its top k*step pixels filled)
    attr_k(x)  = sum of the map over the pixels removed at step k (that step's only)
    rho_k      = Pearson over the images of drop_k and attr_k

for ``k = 1 .. floor(max_fraction * H W / step)``. Higher is better (a map whose attributions
predict how much the score drops, image by image). A pixel is all its channels at once, so on
one-channel images this equals Quantus's (which counts channel values).

    rho = sensitivity_n(model, images, saliency, step=8)     # [K], one correlation per n
    rho.mean()                                               # Quantus's aggregate
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import (
    Maps,
    Mode,
    check_images,
    maps_for_images,
    resolve_target,
    row_pearson,
)
from xailab.metrics.perturb import Fill, Output, fill_images, scores_of_rows


@metric(direction="higher", category="faithfulness", low=-1.0, high=1.0,
        summary="Pearson over images of the score drop and the attribution of the pixels removed, per step n")
def sensitivity_n(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    step: int = 1,
    max_fraction: float = 0.8,
    fill: Fill = 0.0,
    mode: Mode = "signed",
    output: Output = "probability",
    batch_size: int = 64,
    column: int = 0,
) -> Tensor:
    """``[K]`` correlations, one per step (module docstring); NaN where a step's drops or
    attributions do not vary over the images.

    Args:
        step: pixels removed per step (Quantus's ``features_in_step`` on one channel).
        max_fraction: the steps cover this share of the pixels (Quantus's ``n_max_percentage``).
        fill: what a removed pixel becomes (see :data:`~xailab.metrics.perturb.Fill`).
    """
    from xailab.core.hooks import model_device
    from xailab.metrics.perturb import pixel_ranks

    x = check_images(images).to(model_device(model))
    n, _, h, w = x.shape
    if step < 1 or not 0 < max_fraction <= 1:
        raise InputError(f"step must be >= 1 and max_fraction in (0, 1], got {step} and {max_fraction}")
    if n < 2:
        raise InputError("sensitivity-n correlates over images: give at least 2")
    k_max = int(max_fraction * h * w // step)
    if k_max < 1:
        raise InputError(f"no step: {max_fraction} of {h * w} pixels is less than one step of {step}")
    a = maps_for_images(maps, x, mode=mode, target=column)
    t = resolve_target(model, x, target, maps, column)
    ranks = pixel_ranks(a).to(x.device)
    other = fill_images(x, fill)
    r1 = k_max + 1

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(x.device)
        i, k = rows // r1, rows % r1
        gone = (ranks[i] < (k * step).view(-1, 1, 1))[:, None]
        return torch.where(gone, other[i], x[i]), t[i]

    scores = scores_of_rows(model, n * r1, make, output=output, batch_size=batch_size).view(n, r1)
    drops = scores[:, :1] - scores[:, 1:]  # [N, K]
    which = (ranks // step).flatten(1).cpu()  # the step at which each pixel goes (0-based)
    attr = torch.zeros(n, int(which.max()) + 1, dtype=torch.float64).scatter_add_(
        1, which, a.double().flatten(1).cpu())[:, :k_max]
    return row_pearson(drops.T.contiguous(), attr.T.contiguous())
