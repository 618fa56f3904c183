"""The layer a CAM explains when the user names none, the same however the model is written.

* A transformer on image patches (:mod:`.tokens`): the first LayerNorm of the last block, read
  as a map through the patch grid.
* A CNN: the last conv layer or block, after its activation (:func:`.layers.find_cam_layer`).
  Written with ``F.relu(self.bn3(...))`` the activation is no module, so the search would stop at
  ``bn3``, before the ReLU, and give another map than the same network written with
  ``nn.ReLU`` modules (anti-correlated on a trained model). Such a model is traced
  (:func:`xailab.core.rewrite.hook_friendly`) and the CAM runs on the traced copy, whose
  activation module (``bn3_relu``) is then chosen; the note says so. Where the model cannot be
  traced, a warning names the line and the layer used.

    chosen = choose_cam_layer(model, images[:1])
    chosen.name, chosen.note     # ('bn3_relu', "relu after 'bn3' -> module 'bn3_relu' (traced)")
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from torch import Tensor, nn

from xailab.core.errors import UnsupportedModelError
from xailab.core.rewrite import hook_friendly
from xailab.core.structure import inspect_structure
from xailab.core.tokens import TokenGrid, find_token_layer
from xailab.methods.cam.layers import find_cam_layer


@dataclass
class CamLayer:
    """The chosen layer, the model to run (the user's or its traced copy) and how it was found."""

    name: str
    module: nn.Module
    model: nn.Module
    grid: TokenGrid | None = None
    note: str = ""


def choose_cam_layer(model: nn.Module, x: Tensor) -> CamLayer:
    """The default CAM layer of ``model`` (one or two dry runs on ``x[:1]``)."""
    tokens = find_token_layer(model, x[:1])
    if tokens is not None:
        name, module, grid = tokens
        return CamLayer(name, module, model, grid, f"first LayerNorm of the last block, {grid.h}x{grid.w} patch tokens")
    name, module = find_cam_layer(model, x[:1])
    if not any(i.kind == "functional_activation" for i in inspect_structure(model, x[:1])):
        return CamLayer(name, module, model)
    try:
        rw = hook_friendly(model, "the default CAM layer")
    except UnsupportedModelError as e:
        warnings.warn(f"CAM layer '{name}' may come before a functional activation: {e}", stacklevel=3)
        return CamLayer(name, module, model, note="the model could not be traced; layer before any F.relu")
    traced, traced_module = find_cam_layer(rw.model, x[:1])
    if traced in rw.added:  # an activation the user's model applies as a function follows the layer
        return CamLayer(traced, traced_module, rw.model,
                        note=f"the functional activation after '{rw.added[traced]}', traced into module '{traced}'")
    return CamLayer(name, module, model)


__all__ = ["CamLayer", "choose_cam_layer"]
