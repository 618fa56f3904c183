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

The perturbations do not depend on the map, so the model's side (:func:`infidelity_drops`: the
score change of every perturbation) is computed once and any number of maps of the same images
are scored from it. A perturbation that changes no pixel (a square already equal to the fill, as
on a black background) is not run again: its score is the previous one; with a fill shared by all
images the fully filled image is run once. CPU batches go channels-last to convolutional models.

    s = infidelity(model, images, saliency, patch=4)      # [N]
    d = infidelity_drops(model, images, labels)           # once, then for each method's maps:
    s = infidelity(model, images, gradcam, labels, drops=d)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, check_images, maps_for_images, resolve_target
from xailab.metrics.perturb import Fill, Output, channels_last_helps, fill_images, scores_of_rows


def block_order(h: int, w: int, patch: int) -> Tensor:
    """``[H, W]`` index of the square each pixel lies in, squares numbered row-major (the last
    row and column of squares are cut short when ``patch`` does not divide the size)."""
    rows = torch.arange(h) // patch
    cols = torch.arange(w) // patch
    return rows[:, None] * math.ceil(w / patch) + cols[None, :]


@dataclass(frozen=True)
class InfidelityDrops:
    """The model's side of infidelity for one set of images and targets (module docstring).

    ``drops [N, K]``: ``f(x) - f(x - I_k)``, the score change when the first ``k`` squares are
    filled; ``images`` and ``filled`` (``[N, C, H, W]``, what every pixel becomes) and
    ``targets [N]`` are kept so that maps of other images or classes are refused.
    """

    drops: Tensor
    images: Tensor
    filled: Tensor
    targets: Tensor
    patch: int
    output: Output

    def check(self, images: Tensor, targets: Tensor, patch: int, filled: Tensor, output: Output) -> None:
        """Refuse scoring maps of other images, targets or settings than these drops were made for."""
        same = (self.images.shape == images.shape and torch.equal(self.images, images)
                and torch.equal(self.targets, targets) and torch.equal(self.filled, filled))
        if not same or (self.patch, self.output) != (patch, output):
            raise InputError("these infidelity drops were computed for other images, targets, patch, fill or "
                             "output; compute them again with infidelity_drops()")


def infidelity_drops(
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | str | None = None,
    *,
    patch: int = 4,
    fill: Fill = 0.0,
    output: Output = "probability",
    batch_size: int = 64,
    maps: Maps | None = None,
    column: int = 0,
) -> InfidelityDrops:
    """The score changes of every perturbation, for :func:`infidelity` (``target`` and ``maps``
    resolve the classes as there)."""
    from xailab.core.hooks import model_device

    if patch < 1:
        raise InputError(f"patch must be >= 1, got {patch}")
    x = check_images(images).to(model_device(model))
    t = resolve_target(model, x, target, maps, column)
    other = fill_images(x, fill)
    n, _, h, w = x.shape
    blocks = block_order(h, w, patch).to(x.device)
    k = int(blocks.max()) + 1
    # square s-1 changes pixels of image i: else perturbation s is perturbation s-1 again
    moved = torch.zeros(n, k, device=x.device).index_add_(1, blocks.flatten(), (x != other).any(1).flatten(1).float())
    need = torch.cat([torch.ones(n, 1, dtype=torch.bool, device=x.device), moved > 0], 1)  # [N, K + 1]
    shared = n > 1 and bool((other == other[:1]).all())
    if shared:
        need[:, k] = False  # the fully filled image is the same for all: run once below
    i_all, s_all = need.nonzero(as_tuple=True)
    cl = channels_last_helps(model)

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        i, s = i_all[rows.to(x.device)], s_all[rows.to(x.device)]
        changed = (blocks[None] < s.view(-1, 1, 1))[:, None]
        return torch.where(changed, other[i], x[i]), t[i]

    run = scores_of_rows(model, len(i_all), make, output=output, batch_size=batch_size, channels_last=cl)
    scores = torch.zeros(n, k + 1, dtype=torch.float64)
    scores[i_all.cpu(), s_all.cpu()] = run
    if shared:
        full = scores_of_rows(model, 1, lambda r: (other[:1], t[None]), output=output, batch_size=1,
                              channels_last=cl)
        scores[:, k] = full[0]
        need[:, k] = True
    # a perturbation not run scores as the last one run before it
    cols = torch.where(need.cpu(), torch.arange(k + 1), 0).cummax(1).values
    scores = scores.gather(1, cols)
    return InfidelityDrops(scores[:, :1] - scores[:, 1:], x, other, t, patch, output)


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
    drops: InfidelityDrops | None = None,
) -> Tensor:
    """Infidelity per image, ``[N]`` (module docstring).

    Args:
        patch: side of the squares filled one after another.
        fill: what a perturbed pixel becomes (see :data:`~xailab.metrics.perturb.Fill`).
        output: score the softmax ``"probability"`` or the ``"logit"``.
        normalise: rescale each map by its best-fitting factor first (module docstring); ``False``
            equals Quantus.
        drops: the model's side from :func:`infidelity_drops` for these images, targets and
            settings (checked), so that scoring another map runs no model; ``target=None`` then
            means the drops' own targets.
    """
    if drops is None:
        drops = infidelity_drops(model, images, target, patch=patch, fill=fill, output=output,
                                 batch_size=batch_size, maps=maps, column=column)
    else:
        x = check_images(images).to(drops.images.device)
        mine = target is None and not isinstance(maps, Explanation)
        t = drops.targets if mine else resolve_target(model, x, target, maps, column)
        drops.check(x, t, patch, fill_images(x, fill), output)
    x, other = drops.images, drops.filled
    a = maps_for_images(maps, x, mode=mode, target=column).double()
    n, _, h, w = x.shape
    blocks = block_order(h, w, patch)
    k = int(blocks.max()) + 1
    contrib = (a * (x - other).double().sum(1)).cpu()  # [N, H, W]: channels share the map
    per_block = torch.zeros(n, k, dtype=torch.float64).index_add_(1, blocks.flatten(), contrib.flatten(1))
    predicted = per_block.cumsum(1)  # I_k . Phi for the first k squares filled
    if normalise:
        den = (predicted * predicted).sum(1, keepdim=True)
        beta = torch.where(den > 0, (predicted * drops.drops).sum(1, keepdim=True) / den.clamp_min(1e-300), 0.0)
        predicted = beta * predicted
    return ((predicted - drops.drops) ** 2).mean(1)
