"""Interpretable features a surrogate reads: ICE concept scores, dissected units, pixel statistics.

Each function returns :class:`Features`: ``values [N, F]`` (float64), one readable ``name`` per
column and ``source`` (what the features were made from, recorded in the run).

* :func:`ice_features`: per image, the largest score of each ICE concept of a fitted basis
  over the layer's positions (``score="max"``), its mean (``"mean"``), or whether the concept is
  present (``"presence"``: the max above the basis's threshold, 0/1);
* :func:`unit_features`: the spatial mean activation of the labelled units of a dissected layer,
  named by their labels (``unit 12 (red)``);
* :func:`pixel_features`: colour and texture statistics of a grid of image regions (mean of
  each channel, brightness standard deviation, edge energy), computed on the pixels a person sees.

    feats = ice_features(model, ConceptBasis.load("runs/ice"), images)
    feats.values.shape, feats.names[:2]        # (N, 10), ['concept 0', 'concept 1']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xailab.concepts.activations import ImageSource, iter_activations
from xailab.concepts.ice_basis import ConceptBasis
from xailab.core.errors import InputError

SCORES = ("max", "mean", "presence")


class FeatureError(InputError):
    """Features that do not belong to this model or layer (exit 2, one line)."""


@dataclass(frozen=True)
class Features:
    """Interpretable features of ``N`` images: ``values [N, F]``, ``names [F]``, ``source``."""

    values: np.ndarray
    names: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != 2 or self.values.shape[1] != len(self.names):
            raise InputError(f"features {self.values.shape} do not match {len(self.names)} names")

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def rows(self, index: np.ndarray) -> Features:
        """The features of some images."""
        return Features(self.values[index], self.names, self.source)


def _layer_module(model: nn.Module, layer: str, what: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules:
        raise FeatureError(f"{what} were made at layer '{layer}', which this model does not have: "
                           "they come from another model; make them on this one")
    return modules[layer]


def ice_features(model: nn.Module, basis: ConceptBasis, images: ImageSource, *, score: str = "max",
                 batch_size: int = 64, concept_names: Sequence[str] | None = None) -> Features:
    """Per image and concept: the concept's largest (or mean) score over the layer, or its presence."""
    if score not in SCORES:
        raise InputError(f"unknown ICE score {score!r}; choose one of {', '.join(SCORES)}")
    if score == "presence" and basis.thresholds is None:
        raise InputError("this basis has no presence thresholds (fitted without analysis): use score='max'")
    module = _layer_module(model, basis.layer, "the concepts")
    out = []
    for batch in iter_activations(model, module, images, batch_size):
        acts = batch.activations
        if acts.dim() != 4 or acts.shape[1] != basis.channels:
            raise FeatureError(f"the concepts were fitted on {basis.channels} channels of layer '{basis.layer}', "
                               f"this model's layer gives {tuple(acts.shape[1:])}: they come from another model")
        s = basis.scores(acts.float()).flatten(2)
        v = s.mean(2) if score == "mean" else s.amax(2)
        if score == "presence":
            assert basis.thresholds is not None
            v = (v > basis.thresholds.to(v.device)).to(v.dtype)
        out.append(v.detach().cpu().double())
    names = list(concept_names) if concept_names is not None else [f"concept {c}" for c in range(basis.n_concepts)]
    return Features(torch.cat(out).numpy(), names,
                    {"kind": "ice", "layer": basis.layer, "score": score, "n_concepts": basis.n_concepts})


def unit_features(model: nn.Module, layer: str, units: Sequence[int], labels: Sequence[str], images: ImageSource, *,
                  batch_size: int = 64) -> Features:
    """Per image: the spatial mean activation of each listed unit of ``layer`` (names from ``labels``)."""
    if not units:
        raise InputError(f"no labelled unit in layer '{layer}' to read features from")
    module = _layer_module(model, layer, "the unit labels")
    idx = torch.as_tensor(list(units), dtype=torch.long)
    out = []
    for batch in iter_activations(model, module, images, batch_size):
        acts = batch.activations
        if acts.dim() < 2 or int(idx.max()) >= acts.shape[1]:
            raise FeatureError(f"the labels name unit {int(idx.max())} of layer '{layer}', which has "
                               f"{acts.shape[1] if acts.dim() >= 2 else 0} units here: they come from another model")
        a = acts.flatten(2).mean(2) if acts.dim() > 2 else acts
        out.append(a[:, idx.to(a.device)].detach().cpu().double())
    names = [f"unit {u} ({lab})" for u, lab in zip(units, labels, strict=True)]
    return Features(torch.cat(out).numpy(), names, {"kind": "units", "layer": layer, "units": len(units)})


def _cell_names(grid: int) -> list[str]:
    if grid == 1:
        return ["image"]
    if grid == 3:
        rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
        return [f"{r}-{c}" for r in rows for c in cols]
    if grid == 2:
        return [f"{r}-{c}" for r in ("top", "bottom") for c in ("left", "right")]
    return [f"cell {r},{c}" for r in range(grid) for c in range(grid)]


def pixel_features(display: Tensor, *, grid: int = 3) -> Features:
    """Colour and texture statistics of a ``grid x grid`` of regions of ``display [N, C, H, W]`` in [0, 1].

    Per region: the mean of each channel (``red``, ``green``, ``blue`` or ``grey``), the standard
    deviation of brightness (contrast) and the mean absolute difference of neighbouring
    brightness values (edge energy, a texture measure).
    """
    if display.dim() != 4 or display.shape[1] not in (1, 3):
        raise InputError(f"pixel features need images [N, 1 or 3, H, W], got {tuple(display.shape)}")
    if grid < 1 or grid > min(display.shape[-2:]) // 2:
        raise InputError(f"--grid {grid} does not fit images of {tuple(display.shape[-2:])}")
    x = display.detach().double().cpu()
    grey = x.mean(1, keepdim=True)
    dx = (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    dy = (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    edges = torch.nn.functional.pad(dx, (0, 1)) + torch.nn.functional.pad(dy, (0, 0, 0, 1))
    channels = ("red", "green", "blue") if x.shape[1] == 3 else ("grey",)
    h, w = x.shape[-2:]
    cols, names = [], []
    for ci, cell in enumerate(_cell_names(grid)):
        r, c = divmod(ci, grid)
        sl = (slice(None), slice(None), slice(r * h // grid, (r + 1) * h // grid),
              slice(c * w // grid, (c + 1) * w // grid))
        for k, ch in enumerate(channels):
            cols.append(x[sl][:, k].mean((1, 2)))
            names.append(f"{ch} mean ({cell})")
        cols.append(grey[sl].flatten(1).std(1))
        names.append(f"contrast ({cell})")
        cols.append(edges[sl].flatten(1).mean(1))
        names.append(f"edges ({cell})")
    return Features(torch.stack(cols, 1).numpy(), names, {"kind": "pixels", "grid": grid})
