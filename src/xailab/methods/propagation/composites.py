"""LRP composites by name: which zennit rule each layer gets.

A composite maps module types to rules (Montavon et al. 2019, "Layer-wise relevance
propagation: an overview", Sec. 10.2.1). Every composite here shares zennit's base map:
activations pass relevance on unchanged, batch norms pass it on (they are merged into the
preceding linear layer by a canonizer first), average pooling and :class:`zennit.layer.Sum`
(residual additions) use the z-rule ``R_i = a_i / sum_i' a_i' * R_j``; our own layer-map entry
gives xailab's residual sum :class:`xailab.core.modules.Add` (the zoo's, and the one
:class:`~.canonizers.ResidualSumCanonizer` routes additions through) the same z-rule. Max
pooling has no rule: the gradient routes relevance to the winning input.

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

from collections.abc import Callable
from typing import Any

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
from zennit.rules import AlphaBeta, Epsilon, Norm, ZPlus
from zennit.types import Convolution

from xailab.core.errors import InputError
from xailab.core.modules import Add

from .choices import check_composite_name


def own_layer_map(stabilizer: float) -> list[tuple[Any, BasicHook]]:
    """xailab's entries in front of zennit's base map: the z-rule for :class:`Add`."""
    return [(Add, Norm(stabilizer=stabilizer))]


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
    own = own_layer_map(stabilizer)
    if key == "epsilon_gamma_box":
        if low is None or high is None:
            raise InputError("composite 'epsilon_gamma_box' needs the input bounds low and high")
        return EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, stabilizer=stabilizer,
            layer_map=own, zero_params=zero, canonizers=canon,
        )
    if key == "epsilon_plus":
        return EpsilonPlus(
            epsilon=epsilon, stabilizer=stabilizer, layer_map=own, zero_params=zero, canonizers=canon)
    if key == "epsilon_plus_flat":
        return EpsilonPlusFlat(
            epsilon=epsilon, stabilizer=stabilizer, layer_map=own, zero_params=zero, canonizers=canon)
    if key == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(
            epsilon=epsilon, stabilizer=stabilizer, layer_map=own, zero_params=zero, canonizers=canon)
    rule: Callable[[], BasicHook] = {
        "epsilon": lambda: Epsilon(epsilon=epsilon, zero_params=zero),
        "zplus": lambda: ZPlus(stabilizer=stabilizer, zero_params=zero),
        "alpha2_beta1": lambda: AlphaBeta(alpha=2.0, beta=1.0, stabilizer=stabilizer, zero_params=zero),
    }[key]
    layer_map = [*own, *layer_map_base(stabilizer), (Convolution, rule()), (nn.Linear, rule())]
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


