"""LRP's composite names and the z^B rule's input box: what LRP checks when it is built.

Nothing here imports zennit: :mod:`.composites`, :mod:`.canonizers` and :mod:`.checks` (which
do, and zennit imports torchvision) are imported only when LRP runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from xailab.core.errors import InputError

Bound = float | Sequence[float] | Tensor

#: composite name -> (short description, needs input bounds)
COMPOSITES: dict[str, tuple[str, bool]] = {
    "epsilon": ("LRP-ε on every conv and dense layer", False),
    "zplus": ("LRP-z+ (α1β0) on every conv and dense layer", False),
    "alpha2_beta1": ("LRP-α2β1 on every conv and dense layer", False),
    "epsilon_plus": ("z+ on convolutions, ε on dense layers (zennit EpsilonPlus)", False),
    "epsilon_plus_flat": ("flat first layer, z+ convolutions, ε dense (zennit EpsilonPlusFlat)", False),
    "epsilon_alpha2_beta1": ("α2β1 on convolutions, ε on dense layers (zennit EpsilonAlpha2Beta1)", False),
    "epsilon_gamma_box": ("z^B first conv, γ convolutions, ε dense (zennit EpsilonGammaBox)", True),
}


def check_composite_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    if key not in COMPOSITES:
        raise InputError(f"unknown LRP composite {name!r}; choose one of {', '.join(COMPOSITES)}")
    return key


def bound_tensor(value: Bound, channels: int, like: Tensor, what: str) -> Tensor:
    """A ``[1, C, 1, 1]`` bound from a float, ``C`` floats or a tensor broadcastable to it."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        return t.reshape(1, 1, 1, 1).expand(1, channels, 1, 1)
    t = t.reshape(-1)
    if t.numel() != channels:
        raise InputError(f"{what} has {t.numel()} values; give one float or one per channel ({channels})")
    return t.reshape(1, channels, 1, 1)


def box_bounds(
    x: Tensor,
    *,
    low: Bound | None,
    high: Bound | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> tuple[Tensor, Tensor]:
    """Bounds ``(low, high)`` of the first layer's input for the z^B rule, per row of ``x``.

    In order of preference: ``low``/``high`` as given; from the normalisation
    ``(0 - mean) / std`` and ``(1 - mean) / std`` (images in [0, 1] before normalising); otherwise
    each image's own per-channel minimum and maximum (a valid box, since it contains the image).
    """
    c = x.shape[1]
    if (low is None) != (high is None):
        raise InputError("give both low and high (or neither)")
    if (mean is None) != (std is None):
        raise InputError("give both mean and std (or neither)")
    if low is not None and high is not None:
        lo, hi = bound_tensor(low, c, x, "low"), bound_tensor(high, c, x, "high")
    elif mean is not None and std is not None:
        m, s = bound_tensor(mean, c, x, "mean"), bound_tensor(std, c, x, "std")
        if (s <= 0).any():
            raise InputError("std must be positive")
        lo, hi = (0 - m) / s, (1 - m) / s
    else:
        lo = x.amin(dim=(2, 3), keepdim=True)
        hi = x.amax(dim=(2, 3), keepdim=True)
        return lo, hi
    if (lo > hi).any():
        raise InputError("low must not exceed high")
    if (x < lo - 1e-4).any() or (x > hi + 1e-4).any():
        raise InputError(
            "the images lie outside the box [low, high] given for the z^B rule; check low/high "
            "(or mean/std): they are bounds of the model's input after normalisation"
        )
    return lo.expand(len(x), c, 1, 1), hi.expand(len(x), c, 1, 1)
