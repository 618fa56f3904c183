"""LRP composites by name: which zennit rule each layer gets.

A composite maps module types to rules (Montavon et al. 2019, "Layer-wise relevance
propagation: an overview", Sec. 10.2.1). Every composite here shares zennit's base map:
activations pass relevance on unchanged, batch norms pass it on (they are merged into the
preceding linear layer by a canonizer first), average pooling and :class:`zennit.layer.Sum`
(residual additions) use the z-rule ``R_i = a_i / sum_i' a_i' * R_j``. Max pooling has no rule:
the gradient routes relevance to the winning input.

========================= ======================= ==================== ======================
name                      first layer             other convolutions   dense (nn.Linear)
========================= ======================= ==================== ======================
``epsilon``               ε                       ε                    ε
``zplus``                 z+ (α1β0)               z+                   z+
``alpha2_beta1``          α2β1                    α2β1                 α2β1
``epsilon_plus``          z+                      z+                   ε
``epsilon_plus_flat``     flat                    z+                   ε
``epsilon_alpha2_beta1``  α2β1                    α2β1                 ε
``epsilon_gamma_box``     z^B (box: low, high)    γ                    ε
========================= ======================= ==================== ======================

Rules, with ``a`` the layer input, ``w`` its weights, ``z_j = sum_i a_i w_ij + b_j``:

* ε (Bach et al. 2015): ``R_i = sum_j a_i w_ij / (z_j + ε sign(z_j)) R_j``;
* z+ / αβ (Bach et al. 2015): ``R_i = sum_j (α z+_ij / z+_j - β z-_ij / z-_j) R_j`` with
  ``z±_ij = (a_i w_ij)±``, α - β = 1 (z+ is α=1, β=0);
* γ (Montavon et al. 2019): ``R_i = sum_j a_i (w_ij + γ w+_ij) / sum_i' a_i' (w_i'j + γ w+_i'j) R_j``;
* z^B (Montavon et al. 2017): ``R_i = sum_j (x_i w_ij - l_i w+_ij - h_i w-_ij) / (...summed over i) R_j``
  for inputs bounded by ``l <= x <= h``;
* flat (Lapuschkin et al. 2019): ``R_i = sum_j 1 / (number of inputs of j) R_j``.

    composite = build_composite("epsilon_gamma_box", low=-2.1, high=2.6, canonizers=[...])
    with composite.context(model):
        ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlus,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.core import BasicHook, Composite
from zennit.rules import AlphaBeta, Epsilon, ZPlus
from zennit.types import Convolution

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


def build_composite(
    name: str,
    *,
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
    zero_bias: bool = False,
    low: Tensor | None = None,
    high: Tensor | None = None,
    canonizers: list[Any] | None = None,
) -> Composite:
    """A fresh zennit composite ``name`` (see the module table) with the given canonizers.

    ``zero_bias`` leaves biases out of every rule (zennit's ``zero_params=["bias"]``): relevance
    is then conserved exactly, layer by layer, up to the stabilisers.
    """
    key = check_composite_name(name)
    zero = ["bias"] if zero_bias else None
    canon = list(canonizers or [])
    if key == "epsilon_gamma_box":
        if low is None or high is None:
            raise InputError("composite 'epsilon_gamma_box' needs the input bounds low and high")
        return EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer,
            zero_params=zero, canonizers=canon,
        )
    if key == "epsilon_plus":
        return EpsilonPlus(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero, canonizers=canon)
    if key == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero, canonizers=canon)
    if key == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(epsilon=epsilon, stabilizer=stabilizer, zero_params=zero, canonizers=canon)
    rule: Callable[[], BasicHook] = {
        "epsilon": lambda: Epsilon(epsilon=epsilon, zero_params=zero),
        "zplus": lambda: ZPlus(stabilizer=stabilizer, zero_params=zero),
        "alpha2_beta1": lambda: AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_params=zero),
    }[key]
    layer_map = [*layer_map_base(stabilizer), (Convolution, rule()), (nn.Linear, rule())]
    return LayerMapComposite(layer_map=layer_map, canonizers=canon)


def stateful_modules(composite: Composite, model: nn.Module) -> dict[str, nn.Module]:
    """Modules that ``composite`` gives a rule storing the module's input (unsafe to reuse)."""
    ctx: dict[Any, Any] = {}
    out = {}
    for name, module in model.named_modules():
        hook = composite.module_map(ctx, name, module)
        if isinstance(hook, BasicHook):
            out[name] = module
    return out


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
