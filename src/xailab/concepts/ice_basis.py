"""ICE's concept basis: the layer it factorises, the basis ``P`` and its fit (see :mod:`.ice`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xailab.concepts.activations import (
    ImageSource,
    iter_activations,
    num_images,
)
from xailab.concepts.nmf import OnlineNMF, nnls
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import resolve_layer
from xailab.runs.store import Run, RunError

NON_NEGATIVE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.Softmax,
)
SIGNED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d,
    nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU,
)


# -- the layer ------------------------------------------------------------------------------------
def non_negative_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose output cannot be negative (ReLU and friends)."""
    return [n for n, m in model.named_modules() if n and isinstance(m, NON_NEGATIVE)]


def _layer_advice(model: nn.Module) -> str:
    names = non_negative_layers(model)
    shown = ", ".join(names[-6:]) if names else "none found"
    return f"choose a ReLU output (this model's last ones: {shown}) or pass clamp=True (--clamp)"


def check_signed_module(model: nn.Module, name: str, module: nn.Module, clamp: bool) -> None:
    """Refuse a layer whose type can output negative values (Conv, BatchNorm, Linear...)."""
    if not clamp and isinstance(module, SIGNED):
        raise LayerError(
            f"ICE needs a non-negative layer, but '{name}' is a {type(module).__name__}, whose "
            f"output can be negative: {_layer_advice(model)} to factorise max(0, activations)"
        )


def check_activations(model: nn.Module, name: str, acts: Tensor, clamp: bool) -> Tensor:
    """``acts`` as a float tensor, clamped at 0 with ``clamp``; negative values otherwise refused."""
    if acts.dim() != 4:
        raise LayerError(
            f"layer '{name}' outputs shape {tuple(acts.shape)}; ICE needs a feature map "
            "[N, C, h, w]: choose a convolutional layer"
        )
    acts = acts.float() if not acts.is_floating_point() else acts
    if clamp:
        return acts.clamp_min(0)
    low = float(acts.min())
    if low < 0:
        raise LayerError(
            f"layer '{name}' has negative activations (min {low:.3g}), so it is not a ReLU "
            f"output and NMF cannot factorise it: {_layer_advice(model)}"
        )
    return acts


def to_rows(acts: Tensor) -> Tensor:
    """``[B, C, h, w] -> [B·h·w, C]`` (one row per image position)."""
    return acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])


def from_rows(rows: Tensor, b: int, h: int, w: int) -> Tensor:
    """``[B·h·w, k] -> [B, k, h, w]``."""
    return rows.reshape(b, h, w, -1).permute(0, 3, 1, 2)


# -- the basis ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptBasis:
    """Fitted concepts of one layer: ``directions`` ``P [k, C]`` with unit-norm rows.

    ``thresholds [k]`` (set by :func:`analyse_ice`) decide when a concept counts as present in
    an image (its largest score over positions above the threshold). ``info`` records how the
    basis was fitted (images, seed, epochs, reconstruction error).
    """

    layer: str
    directions: Tensor
    clamp: bool = False
    thresholds: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return int(self.directions.shape[0])

    @property
    def channels(self) -> int:
        return int(self.directions.shape[1])

    def scores(self, acts: Tensor, *, max_iter: int = 100) -> Tensor:
        """Concept maps ``S [B, k, h, w] >= 0`` of layer activations ``[B, C, h, w]``."""
        if acts.dim() != 4 or acts.shape[1] != self.channels:
            raise InputError(f"activations {tuple(acts.shape)} do not fit a basis of {self.channels} channels")
        b, _, h, w = acts.shape
        a = acts.clamp_min(0) if self.clamp else acts
        P = self.directions.to(device=a.device, dtype=a.dtype)
        return from_rows(nnls(to_rows(a), P, max_iter=max_iter), b, h, w)

    def reconstruct(self, maps: Tensor) -> Tensor:
        """``S P`` back in layer space: ``[B, k, h, w] -> [B, C, h, w]``."""
        P = self.directions.to(device=maps.device, dtype=maps.dtype)
        return torch.einsum("bkhw,kc->bchw", maps, P)

    def save(self, run: Run, name: str = "ice") -> None:
        """Store ``P`` as array ``<name>_basis`` (and the thresholds) and the rest in the manifest."""
        run.write_array(f"{name}_basis", self.directions.float())
        if self.thresholds is not None:
            run.write_array(f"{name}_thresholds", self.thresholds.float())
        run.update_manifest(f"{name}_basis", {"layer": self.layer, "clamp": self.clamp,
                                              "n_concepts": self.n_concepts, "channels": self.channels,
                                              "info": self.info})

    @classmethod
    def load(cls, run: Run | str, name: str = "ice") -> ConceptBasis:
        """The basis saved by :meth:`save` in ``run``."""
        run = run if isinstance(run, Run) else Run.open(run)
        meta = run.manifest.get(f"{name}_basis")
        if meta is None:
            raise RunError(f"run {run.path} holds no concept basis '{name}' (fit one with `xailab concepts ice`)")
        P = torch.from_numpy(np.array(run.read_array(f"{name}_basis")))
        thr = torch.from_numpy(np.array(run.read_array(f"{name}_thresholds"))) if f"{name}_thresholds" in run.arrays() else None
        return cls(meta["layer"], P, bool(meta["clamp"]), thr, dict(meta.get("info", {})))


# -- fitting ----------------------------------------------------------------------------------
def _check_counts(ks: Sequence[int], n: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"numbers of concepts must be >= 1, got {list(ks)}")
    if n < ks[-1]:
        raise InputError(
            f"too few images for {ks[-1]} concepts: got {n}; give at least as many images as "
            "concepts (hundreds for stable concepts) or ask for fewer concepts"
        )
    return ks


def fit_concepts(
    model: nn.Module,
    images: ImageSource,
    n_concepts: int | Sequence[int],
    *,
    layer: str | nn.Module | None = None,
    batch_size: int = 64,
    epochs: int = 1,
    seed: int = 0,
    clamp: bool = False,
    forget: float = 0.7,
    nmf_rows: int = 4096,
    progress: bool = False,
) -> dict[int, ConceptBasis]:
    """Fit one basis per number of concepts in ``n_concepts``, all in the same activation stream.

    Args:
        images: the image set (tensor or Dataset, see :mod:`.activations`), visited ``epochs``
            times in a seeded random order (so an online fit does not see one class at a time).
        layer: a non-negative layer (a ReLU output); ``None`` = the last conv block.
        clamp: factorise ``max(0, activations)`` of a layer that can be negative, instead of
            refusing it.
        forget: how much of the statistics of past epochs' rows is kept (see :class:`OnlineNMF`).
        nmf_rows: rows per NMF update (each activation batch is split into updates of this size).
    """
    start = time.perf_counter()
    name, module = resolve_layer(model, layer)
    check_signed_module(model, name, module, clamp)
    n = num_images(images)
    ks = _check_counts([n_concepts] if isinstance(n_concepts, int) else n_concepts, n)
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    models = {k: OnlineNMF(k, seed=seed, forget=forget) for k in ks}
    bar = progress_bar(n * epochs, f"ICE fit {name}", progress)
    rows_per_epoch = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for idx, acts in iter_activations(model, module, images, batch_size, order=order):
            acts = check_activations(model, name, acts, clamp)
            if epoch == 0 and not rows_per_epoch:
                if ks[-1] > acts.shape[1]:
                    raise InputError(
                        f"{ks[-1]} concepts for a layer of {acts.shape[1]} channels: ask for at most "
                        f"{acts.shape[1]} concepts (NMF finds at most as many directions as channels)"
                    )
                rows_per_epoch = n * acts.shape[2] * acts.shape[3]
            for chunk in to_rows(acts).split(max(1, nmf_rows)):
                for nmf in models.values():
                    nmf.partial_fit(chunk, rows_per_epoch=rows_per_epoch)
            bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - start
    info = {"n_images": n, "epochs": epochs, "seed": seed, "forget": forget, "fit_seconds": seconds}
    return {k: ConceptBasis(name, nmf.directions().float().cpu(), clamp, None, dict(info)) for k, nmf in models.items()}


def fit_ice(
    model: nn.Module, images: ImageSource, n_concepts: int = 10, **kwargs: Any
) -> ConceptBasis:
    """One basis of ``n_concepts`` concepts (see :func:`fit_concepts` for the options)."""
    return fit_concepts(model, images, [n_concepts], **kwargs)[n_concepts]


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` images, or one that shows nothing (``enabled=False``)."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")
