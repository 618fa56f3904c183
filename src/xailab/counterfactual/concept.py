"""Concept counterfactuals: the fewest ICE concepts to remove or add in a layer to flip the class.

An ICE basis (Zhang et al. 2021, :mod:`xailab.concepts.ice_basis`) writes the layer's
activations as ``A = S P + R``: concept maps ``S [k, h, w] >= 0`` along the unit directions
``P [k, C]``, plus what the concepts do not explain, ``R``. An edit changes one concept's map:

* remove concept ``c``: ``S_c = 0``;
* add concept ``c`` (with ``add_maps``): ``S_c`` raised to the target class's mean map of
  concept ``c`` (``max(S_c, M_tc)``, from reference images of that class, see
  :func:`class_concept_maps`),

and the rest of the network runs on ``max(0, S' P + R)`` (the layer is a ReLU output). The
search is greedy (Wachter-free and gradient-free): at each step every single further edit is
scored in one batched pass and the one that moves the target's margin most is kept, until the
decision is the target or ``max_concepts`` edits are used ("not found within N concepts").
The answer reads "without concept 3 it would be a T-shirt".

    cf = concept_counterfactuals(model, basis, x, "top2", add_maps=class_concept_maps(model, basis, tx, ty))
    cf.extras["edits"]   # [N, max_concepts]: +c added, -(c+1) removed, 0 unused
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xailab.concepts.activations import constant, layer_pass
from xailab.concepts.ice_basis import ConceptBasis, check_activations
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import model_device, model_session, resolve_layer
from xailab.core.targets import TargetSpec
from xailab.counterfactual.base import (
    ALREADY,
    Clock,
    CountedModel,
    Counterfactuals,
    PixelMap,
    check_images,
    margin,
    reached,
    resolve_counterfactual_targets,
)


def check_basis(model: nn.Module, basis: ConceptBasis, layer: str | None = None) -> tuple[str, nn.Module]:
    """The basis's layer in ``model``; a clear refusal when the basis belongs to another layer or model."""
    if layer is not None and layer != basis.layer:
        raise LayerError(f"the concept basis was fitted on layer '{basis.layer}', not '{layer}': fit a basis of "
                         f"'{layer}' (xailab concepts ice --layer {layer}) or use the basis's layer")
    try:
        name, module = resolve_layer(model, basis.layer)
    except Exception as e:  # any failure to find the layer means another model
        raise LayerError(f"the concept basis was fitted on layer '{basis.layer}', which this model does not have: "
                         "it comes from another model; fit a basis of this model (xailab concepts ice)") from e
    channels = getattr(module, "out_channels", None) or getattr(module, "num_features", None)
    if channels is not None and int(channels) != basis.channels:
        raise LayerError(f"the concept basis has {basis.channels} channels but layer '{name}' of this model has "
                         f"{channels}: the basis comes from another model")
    return name, module


def basis_activations(model: nn.Module, name: str, acts: Tensor, basis: ConceptBasis) -> Tensor:
    """The layer's activations checked against the basis (its channels: another model's basis is refused)."""
    if acts.dim() == 4 and acts.shape[1] != basis.channels:
        raise LayerError(f"the concept basis has {basis.channels} channels but layer '{name}' of this model has "
                         f"{acts.shape[1]}: the basis comes from another model; fit a basis of this model "
                         "(xailab concepts ice)")
    return check_activations(model, name, acts, basis.clamp)


@torch.no_grad()
def class_concept_maps(model: nn.Module, basis: ConceptBasis, images: Tensor, labels: Tensor,
                       batch_size: int = 64) -> Tensor:
    """Mean concept maps per class ``[K, k, h, w]`` over reference images (``NaN`` for a class absent)."""
    name, module = check_basis(model, basis)
    y = torch.as_tensor(labels).long().cpu()
    sums: Tensor | None = None
    device = model_device(model)
    with model_session(model):
        for lo in range(0, len(images), batch_size):
            tap, logits = layer_pass(model, module, images[lo:lo + batch_size].to(device))
            assert tap.activations is not None and logits is not None
            S = basis.scores(basis_activations(model, name, tap.activations, basis)).cpu()
            if sums is None:
                sums = torch.zeros(logits.shape[1], *S.shape[1:])
            sums.index_add_(0, y[lo:lo + batch_size], S)
    assert sums is not None
    counts = torch.bincount(y, minlength=len(sums)).float().reshape(-1, 1, 1, 1)
    return sums / counts


def concept_counterfactuals(model: nn.Module, basis: ConceptBasis, images: Tensor, target: TargetSpec = "top2", *,
                            labels: Tensor | None = None, add_maps: Tensor | None = None, max_concepts: int = 3,
                            layer: str | None = None) -> Counterfactuals:
    """The fewest concept edits (removals; additions with ``add_maps``) that flip each image."""
    if max_concepts < 1:
        raise InputError(f"max_concepts must be >= 1 (an impossible budget), got {max_concepts}")
    clock = Clock()
    name, module = check_basis(model, basis, layer)
    x = check_images(images).to(model_device(model))
    counted = CountedModel(model, len(x))
    rows = []
    with model_session(model), torch.no_grad():
        for i in range(len(x)):
            tap, logits = layer_pass(model, module, x[i:i + 1])
            assert tap.activations is not None and logits is not None
            counted.evaluations[i] += 1
            acts = basis_activations(model, name, tap.activations, basis)
            rows.append((acts, logits[0]))
        logits = torch.stack([r[1] for r in rows])
        original = logits.argmax(1)
        tgt = resolve_counterfactual_targets(target, logits, labels)
        if add_maps is not None and add_maps.shape[0] != logits.shape[1]:
            raise InputError(f"add_maps has {add_maps.shape[0]} classes, the model {logits.shape[1]}")
        found = [_greedy(counted, model, module, basis, x[i:i + 1], rows[i][0], int(original[i]), int(tgt[i]), i,
                         None if add_maps is None else add_maps, max_concepts) for i in range(len(x))]
    final = torch.stack([f["logits"] for f in found])
    already = tgt == original
    valid = reached(final, original, tgt) & ~already
    status = [ALREADY if a else "found" if v else f"not found within {max_concepts} concepts"
              for a, v in zip(already.tolist(), valid.tolist(), strict=True)]
    n_edits = torch.tensor([float(len(f["edits"])) if v else float("nan")
                            for f, v in zip(found, valid.tolist(), strict=True)], dtype=torch.float64)
    edits = torch.zeros(len(x), max_concepts, dtype=torch.long)
    for i, f in enumerate(found):
        if valid[i]:
            edits[i, : len(f["edits"])] = torch.tensor(f["edits"], dtype=torch.long)
    seconds = clock.seconds()
    p0 = PixelMap.for_model(model).to_pixels(x).clamp(0, 1).cpu()
    measures = {"concepts": n_edits, "layer_l2": torch.tensor([f["l2"] for f in found], dtype=torch.float64),
                "evaluations": counted.evaluations.clone(),
                "seconds": torch.full((len(x),), seconds / len(x), dtype=torch.float64)}
    params: dict[str, Any] = {"layer": name, "concepts_in_basis": basis.n_concepts, "max_concepts": max_concepts,
                              "additions": add_maps is not None}
    return Counterfactuals("concept", p0, p0.clone(), original.cpu(), final.argmax(1).cpu(), tgt.cpu(), valid.cpu(),
                           measures, status, params, seconds, extras={"edits": edits})


def _greedy(counted: CountedModel, model: nn.Module, module: nn.Module, basis: ConceptBasis, x: Tensor, acts: Tensor,
            original: int, target: int, index: int, add_maps: Tensor | None, budget: int) -> dict[str, Any]:
    """Greedy edits of one image: ``edits`` (``c + 1`` added, ``-(c + 1)`` removed), final logits, layer L2."""
    S = basis.scores(acts)  # [1, k, h, w]
    base = (acts.clamp_min(0) if basis.clamp else acts) - basis.reconstruct(S)
    k = basis.n_concepts
    orig_t, tgt_t = torch.tensor([original], device=x.device), torch.tensor([target], device=x.device)
    choices = [-(c + 1) for c in range(k)] + ([c + 1 for c in range(k)] if add_maps is not None else [])
    add = None if add_maps is None or target < 0 else add_maps[target].to(S.device, S.dtype).nan_to_num(0.0)

    def apply(edits: list[int]) -> Tensor:
        s = S.clone()
        for e in edits:
            c = abs(e) - 1
            s[0, c] = 0 if e < 0 else (torch.maximum(s[0, c], add[c]) if add is not None else s[0, c])
        return (basis.reconstruct(s) + base).clamp_min(0)

    def run(layer_acts: Tensor) -> Tensor:
        _, lg = layer_pass(model, module, x.expand(len(layer_acts), *x.shape[1:]), replace=constant(layer_acts))
        assert lg is not None
        counted.evaluations[index] += len(layer_acts)
        return lg

    edits: list[int] = []
    logits = run(apply(edits))
    while target != original and not bool(reached(logits, orig_t, tgt_t)[0]) and len(edits) < budget:
        options = [e for e in choices if e not in edits and -e not in edits]
        if add is None:
            options = [e for e in options if e < 0]
        if not options:
            break
        lg = run(torch.cat([apply([*edits, e]) for e in options]))
        j = int(margin(lg, orig_t.expand(len(lg)), tgt_t.expand(len(lg))).argmax())
        edits.append(options[j])
        logits = lg[j : j + 1]
    l2 = float((apply(edits) - apply([])).norm())
    return {"edits": edits, "logits": logits[0], "l2": l2}
