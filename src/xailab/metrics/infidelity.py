"""Infidelity (Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS,
arXiv:1901.09392): does the map predict how the score changes when the input is perturbed?

    INFD(Phi, f, x) = E_I [ (I . Phi  -  (f(x) - f(x - I)))^2 ]

``I = x - x~`` is a perturbation and ``I . Phi`` the sum over pixels and channels of the
perturbation times the map (the map is shared by the channels). The expectation is estimated
as Quantus 0.6 does (``quantus.Infidelity``, perturbation by baseline replacement): the image
is cut into ``patch x patch`` squares in row-major order and the ``k``-th perturbation fills the
first ``k`` squares with ``fill``; the squared error is averaged over the ``H W / patch^2``
perturbations. Deterministic; lower is better; in the squared units of the score.

The raw score grows with the map's scale, so methods whose maps live on other scales (a CAM
and a gradient) cannot be compared by it. ``normalise=True`` first rescales each image's map by
the factor that fits the score changes best, ``beta = sum_k p_k d_k / sum_k p_k^2`` (``p``
predicted, ``d`` actual change), as Yeh et al.'s own code does (``normalize=True``): what is left
is the part of the score changes the map's *shape* cannot explain. ``xailab compare`` uses it.

    s = infidelity(model, images, saliency, patch=4)      # [N]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, check_images, maps_for_images, resolve_target
from xailab.metrics.perturb import Fill, Output, fill_images, scores_of_rows


def block_order(h: int, w: int, patch: int) -> Tensor:
    """``[H, W]`` index of the square each pixel lies in, squares numbered row-major (the last
    row and column of squares are cut short when ``patch`` does not divide the size)."""
    rows = torch.arange(h) // patch
    cols = torch.arange(w) // patch
    return rows[:, None] * math.ceil(w / patch) + cols[None, :]


@metric(direction="lower", category="faithfulness",
        summary="mean squared gap between the map's predicted and the model's actual score change",
        low=0.0)
def infidelity(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    patch: int = 4,
    fill: Fill = 0.0,
    mode: Mode = "signed",
    output: Output = "probability",
    batch_size: int = 64,
    column: int = 0,
    normalise: bool = False,
) -> Tensor:
    """Infidelity per image, ``[N]`` (module docstring).

    Args:
        patch: side of the squares filled one after another.
        fill: what a perturbed pixel becomes (see :data:`~xailab.metrics.perturb.Fill`).
        output: score the softmax ``"probability"`` or the ``"logit"``.
        normalise: rescale each map by its best-fitting factor first (module docstring); ``False``
            equals Quantus.
    """
    from xailab.core.hooks import model_device

    if patch < 1:
        raise InputError(f"patch must be >= 1, got {patch}")
    x = check_images(images).to(model_device(model))
    a = maps_for_images(maps, x, mode=mode, target=column).double()
    t = resolve_target(model, x, target, maps, column)
    n, _, h, w = x.shape
    blocks = block_order(h, w, patch).to(x.device)
    k = int(blocks.max()) + 1
    other = fill_images(x, fill)
    r1 = k + 1  # row 0 of each image: the unperturbed image

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(x.device)
        i, s = rows // r1, rows % r1
        changed = (blocks[None] < s.view(-1, 1, 1))[:, None]
        return torch.where(changed, other[i], x[i]), t[i]

    scores = scores_of_rows(model, n * r1, make, output=output, batch_size=batch_size).view(n, r1)
    drops = scores[:, :1] - scores[:, 1:]  # [N, K]
    diff = (x - other).double().sum(1)  # [N, H, W]: channels share the map
    contrib = (a * diff).cpu()  # [N, H, W]
    per_block = torch.zeros(n, k, dtype=torch.float64).index_add_(1, blocks.flatten().cpu(), contrib.flatten(1))
    predicted = per_block.cumsum(1)  # I_k . Phi for the first k squares filled
    if normalise:
        den = (predicted * predicted).sum(1, keepdim=True)
        beta = torch.where(den > 0, (predicted * drops).sum(1, keepdim=True) / den.clamp_min(1e-300), 0.0)
        predicted = beta * predicted
    return ((predicted - drops) ** 2).mean(1)
