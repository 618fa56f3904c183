"""ICE: invertible concept-based explanations with non-negative concept activation vectors.

Zhang, Madumal, Miller, Ehinger & Rubinstein, "Invertible Concept-based Explanations for CNN
Models with Non-negative Concept Activation Vectors", AAAI 2021 (arXiv:2006.15417).

On a non-negative layer (a ReLU output) the activations of a set of images, flattened to one
row per image position, ``V [N·h·w, C]``, are factorised as ``V ≈ S P`` with non-negative
feature scores ``S [N·h·w, k]`` and concept directions ``P [k, C]`` (unit-norm rows here; the
scale lives in ``S``). The factorisation is streamed (:class:`~xailab.concepts.nmf.OnlineNMF`):
only one batch of activations is in memory at a time.

* Concept maps: ``S`` of an image reshaped to ``[k, h, w]`` (upsample to show it on the image);
  new images get ``S = argmin_{S >= 0} ||V - S P||`` with the fitted ``P`` (invertible: the
  reconstruction ``S P`` can replace the layer's output).
* Per-class importance (the paper's concept weight): the change of the class logit along each
  concept direction, ``sensitivity[c, k] = mean_{x in class k} Σ_p <∂y_k/∂A_p(x), P_c>`` (the
  limit of the reference code's finite difference ``(y_k(A + εP_c) - y_k(A - εP_c)) / 2ε``
  with ``P_c`` added at every position ``p``); ``contribution[c, k]`` weighs each position by the
  concept's score, ``Σ_p S_pc <∂y_k/∂A_p, P_c>``; ``positive_fraction`` is the TCAV-style share of
  the class's images whose derivative along ``P_c`` is positive.
* Presence: the share of a class's images in which a concept counts, i.e. its largest score over
  positions exceeds ``threshold_c = presence · q99_c`` (``q99_c``: the 99th percentile of that
  largest score over the fitted images).
* Fidelity: the model run with the layer's output replaced by ``S P``: top-1 agreement with the
  original predictions and the mean absolute logit error (and ``||V - S P|| / ||V||``).

    basis = fit_ice(model, images, n_concepts=10, layer="layer3")
    result = analyse_ice(model, basis, images, labels)
    result.fidelity["top1_agreement"], result.presence.shape      # 0.97, [10, classes]
    maps = explain_concepts(model, result.basis, new_images).maps   # [N, 10, h, w]

The basis and its fit are in :mod:`.ice_basis`, the analysis and fidelity curve in
:mod:`.ice_analysis`; this module explains new images and gathers the public names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.concepts.activations import (
    ImageSource,
    batch_indices,
    layer_pass,
    model_device,
    num_images,
    take,
)
from xailab.concepts.ice_analysis import ICEAnalysis, analyse_ice, fidelity_curve
from xailab.concepts.ice_basis import (
    NON_NEGATIVE,
    SIGNED,
    ConceptBasis,
    check_activations,
    check_signed_module,
    fit_concepts,
    fit_ice,
    from_rows,
    non_negative_layers,
    to_rows,
)
from xailab.core.errors import InputError
from xailab.core.hooks import model_session, resolve_layer


# -- explaining new images ------------------------------------------------------------------------
@dataclass
class ConceptMaps:
    """Concept maps of some images under a fitted basis.

    ``maps [N, k, h, w]`` (scores per position), ``logits [N, K]``, ``targets [N]`` (the class
    explained, default the prediction), ``contribution [N, k]``: ``Σ_p S_pc <∂y_t/∂A_p, P_c>``,
    how much each concept adds to the target's logit to first order.
    """

    maps: Tensor
    logits: Tensor
    targets: Tensor
    contribution: Tensor
    present: Tensor | None

    @property
    def scores(self) -> Tensor:
        """Largest score of each concept over positions ``[N, k]``."""
        return self.maps.flatten(2).amax(2)

    def upsampled(self, size: tuple[int, int]) -> Tensor:
        """Maps at image resolution ``[N, k, H, W]`` (bilinear)."""
        return F.interpolate(self.maps, size=size, mode="bilinear", align_corners=False)


def explain_concepts(
    model: nn.Module,
    basis: ConceptBasis,
    images: ImageSource,
    target: int | Tensor | None = None,
    *,
    batch_size: int = 64,
) -> ConceptMaps:
    """Concept maps and contributions of ``images`` with a fitted ``basis`` (fit once, apply)."""
    name, module = resolve_layer(model, basis.layer)
    n = num_images(images)
    if n == 0:
        raise InputError("no images to explain")
    device = model_device(model)
    P = basis.directions.to(device)
    maps, logits_all, tg, contrib = [], [], [], []
    with model_session(model):
        for idx in batch_indices(n, batch_size):
            x = take(images, idx)[0].to(device)
            tap, logits = layer_pass(model, module, x, grad=True)
            assert tap.leaf is not None and logits is not None and tap.activations is not None
            acts = check_activations(model, name, tap.activations, basis.clamp)
            if tap.activations.shape[1] != basis.channels:
                raise InputError(f"layer '{name}' has {acts.shape[1]} channels, the basis {basis.channels}")
            S = basis.scores(acts)
            if target is None:
                t = logits.detach().argmax(1)
            elif isinstance(target, int):
                t = torch.full((len(idx),), target, device=device, dtype=torch.long)
            else:
                t = torch.as_tensor(target).reshape(-1)[idx].to(device)
            (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), tap.leaf)
            gP = torch.einsum("bchw,kc->bkhw", g.to(S.dtype), P.to(S.dtype))
            maps.append(S.cpu())
            logits_all.append(logits.detach().cpu())
            tg.append(t.cpu())
            contrib.append((gP * S).sum((2, 3)).cpu())
    M = torch.cat(maps)
    present = M.flatten(2).amax(2) > basis.thresholds if basis.thresholds is not None else None
    return ConceptMaps(M, torch.cat(logits_all), torch.cat(tg), torch.cat(contrib), present)


__all__ = [
    "NON_NEGATIVE",
    "SIGNED",
    "ConceptBasis",
    "ConceptMaps",
    "ICEAnalysis",
    "analyse_ice",
    "check_activations",
    "check_signed_module",
    "explain_concepts",
    "fidelity_curve",
    "fit_concepts",
    "fit_ice",
    "from_rows",
    "non_negative_layers",
    "to_rows",
]

