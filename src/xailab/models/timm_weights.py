"""A timm architecture sized by its weights: what a state dict says about ``timm.create_model``'s
arguments.

A ViT trained on 1-channel 28x28 images for 10 classes has weights that fix ``in_chans`` (the
first convolution's input channels), ``num_classes`` (the classifier's rows) and ``img_size``
(the position embedding's grid times the patch size). :func:`shape_kwargs` reads them (and, for
ViT-like models, ``patch_size``, ``embed_dim``, ``depth`` and ``mlp_ratio``) from the tensors'
shapes; :func:`fit_to_weights` rebuilds the model with the first three where the spec left them
open, and otherwise refuses with the spec to write, every argument named. ``num_heads`` is not in
the weights (the attention's projections have the same shape for any head count): it is never
guessed.

    model = fit_to_weights(build, "vit_tiny_patch16_224", {}, model, state_dict, "vit.safetensors")
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from xailab.core.errors import CheckpointError
from xailab.models.checkpoint import fit_report

#: the arguments a state dict fixes without changing what any weight means: filled in when not given
INFERRED = ("in_chans", "num_classes", "img_size")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def _first(name: Any) -> str | None:
    if isinstance(name, tuple | list):
        name = name[0] if name else None
    return name if isinstance(name, str) and name else None


def _vit_kwargs(model: nn.Module, sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """img_size, patch_size, embed_dim, depth, mlp_ratio of a ViT-like state dict (pos_embed + patch_embed)."""
    proj, pos = sd.get("patch_embed.proj.weight"), sd.get("pos_embed")
    if proj is None or pos is None or proj.ndim != 4 or pos.ndim != 3:
        return {}
    p = int(proj.shape[-1])
    out: dict[str, Any] = {"patch_size": p, "embed_dim": int(proj.shape[0])}
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 0) or 0)
    grid = math.isqrt(max(0, int(pos.shape[1]) - prefix))
    if grid and grid * grid == int(pos.shape[1]) - prefix and proj.shape[-2] == proj.shape[-1]:
        out["img_size"] = grid * p
    depth = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    if depth:
        out["depth"] = max(depth) + 1
    fc1 = sd.get("blocks.0.mlp.fc1.weight")
    if fc1 is not None and fc1.ndim == 2 and fc1.shape[1]:
        out["mlp_ratio"] = int(fc1.shape[0]) / int(fc1.shape[1])
    return out


def shape_kwargs(model: nn.Module, sd: Mapping[str, Tensor]) -> dict[str, Any]:
    """The ``timm.create_model`` arguments the shapes in ``sd`` fix, read with ``model``'s own
    ``pretrained_cfg`` (its first convolution and classifier) as the map."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    out: dict[str, Any] = {}
    conv, head = _first(cfg.get("first_conv")), _first(cfg.get("classifier"))
    w = sd.get(f"{conv}.weight") if conv else None
    if w is not None and w.ndim >= 3:
        out["in_chans"] = int(w.shape[1])
    w = sd.get(f"{head}.weight") if head else None
    if w is not None and w.ndim >= 1:
        out["num_classes"] = int(w.shape[0])
    return {**out, **_vit_kwargs(model, sd)}


def _spec(name: str, kwargs: Mapping[str, Any]) -> str:
    return "timm:" + ",".join([name, *(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in kwargs.items())])


def fit_to_weights(build: Callable[[dict[str, Any]], nn.Module], name: str, given: Mapping[str, Any],
                   model: nn.Module, sd: Mapping[str, Tensor], where: str) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` (built from ``given``) if ``sd`` fits it; else the model rebuilt with the
    :data:`INFERRED` arguments the weights fix and ``given`` leaves open, if that fits. Returns the
    model and the arguments filled in; a :class:`CheckpointError` naming the spec to use otherwise."""
    problem = fit_report(model, sd)
    if not problem:
        return model, {}
    seen = shape_kwargs(model, sd)
    filled = {k: seen[k] for k in INFERRED if k in seen and k not in given}
    if filled:
        rebuilt = build({**given, **filled})
        if not fit_report(rebuilt, sd):
            return rebuilt, filled
    if not seen:
        raise CheckpointError(f"{where} does not fit timm model {name!r}: {problem}")
    blocks = getattr(model, "blocks", None)
    other = (seen.get("embed_dim", getattr(model, "embed_dim", None)) != getattr(model, "embed_dim", None)
             or (isinstance(blocks, nn.Sequential) and seen.get("depth", len(blocks)) != len(blocks)))
    heads = " and the num_heads it was trained with (the weights do not say)" if other else ""
    spec = _spec(name, {**given, **seen})
    raise CheckpointError(
        f"{where} does not fit timm model {name!r} as specified: {problem}. The weights' shapes say "
        f"{', '.join(f'{k}={v}' for k, v in seen.items())}: try --model '{spec}'{heads}")


__all__ = ["INFERRED", "fit_to_weights", "shape_kwargs"]
