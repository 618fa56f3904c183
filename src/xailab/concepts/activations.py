"""Stream a layer's activations over an image set: batched, hooked, with bounded memory.

The shared engine of the concept tools (ICE, TCAV, network dissection). An image set is any of

* a tensor ``[N, C, H, W]`` (already prepared for the model);
* an :class:`~xailab.data.ImageDataset` (read with ``get_batch``, no augmentation);
* any map-style ``torch.utils.data.Dataset`` whose items are ``image`` or ``(image, label)``;

and only one batch of images and activations is alive at a time, so a dataset of any size fits.

    for index, acts in iter_activations(model, "layer3.2", images, batch_size=128):
        acts.shape      # [B, C, h, w]: the layer's output for images[index]

:func:`layer_pass` is the one-batch primitive underneath: it runs the model once with a hook on
the layer that records its output and, if asked, replaces it (``replace=``, e.g. by a concept
reconstruction) or cuts the graph there so that ``torch.autograd.grad(logits, tap.leaf)`` gives
the gradient of the logits with respect to the layer through the rest of the network only
(``grad=True``). Hooks are removed when the pass ends, also when the model raises.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeAlias

import numpy as np
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import HookScope, model_device, model_session, resolve_layer
from xailab.core.tokens import TokenGrid, as_map, token_grid_of

ImageSource: TypeAlias = "Tensor | torch.utils.data.Dataset[Any]"
Index: TypeAlias = "Tensor | Sequence[int] | np.ndarray | slice"


class ActivationBatch(NamedTuple):
    """One batch of a stream: ``indices`` (long ``[B]``, positions in the image set) and the
    layer's ``activations`` for those images (``[B, C, h, w]`` for a conv layer)."""

    indices: Tensor
    activations: Tensor


# -- image sets -----------------------------------------------------------------------------------
def num_images(images: ImageSource) -> int:
    """Number of images in an image set."""
    try:
        return len(images)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(
            f"cannot count the images of a {type(images).__name__}: give a tensor [N, C, H, W] "
            "or a map-style Dataset"
        ) from None


def _as_index(index: Index, n: int) -> Tensor:
    if isinstance(index, slice):
        return torch.arange(n)[index]
    return torch.as_tensor(np.asarray(index), dtype=torch.long).reshape(-1)


def take(images: ImageSource, index: Index) -> tuple[Tensor, Tensor | None]:
    """``(images [B, C, H, W] float, labels [B] or None)`` at ``index`` of an image set."""
    n = num_images(images)
    idx = _as_index(index, n)
    if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise InputError(f"image index out of range for {n} images")
    if isinstance(images, Tensor):
        return images[idx], None
    get_batch = getattr(images, "get_batch", None)
    if callable(get_batch):  # ImageDataset: one gather, never augmented here
        x, y = get_batch(idx, augment=False)
        return x, y
    items = [images[int(i)] for i in idx]
    if items and isinstance(items[0], (tuple, list)):
        xs = torch.stack([torch.as_tensor(it[0]) for it in items])
        ys = torch.as_tensor([int(it[1]) for it in items], dtype=torch.long)
        return xs.float(), ys
    return torch.stack([torch.as_tensor(it) for it in items]).float(), None


def labels_of(images: ImageSource) -> Tensor | None:
    """All labels of an image set when it carries them cheaply (``.targets``), else None."""
    targets = getattr(images, "targets", None)
    if targets is None:
        return None
    return torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(-1)


def batch_indices(n: int, batch_size: int, order: Tensor | None = None) -> Iterator[Tensor]:
    """Long index batches covering ``range(n)`` (or ``order``) in steps of ``batch_size``."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    seq = torch.arange(n) if order is None else order.reshape(-1).long()
    for lo in range(0, len(seq), batch_size):
        yield seq[lo : lo + batch_size]


# -- one pass ---------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the hook to skip the rest of the network once the layer has been read."""


@dataclass
class Tap:
    """What one hooked pass saw: the layer's output and, with ``grad=True``, the leaf tensor
    that replaced it (differentiate the logits with respect to ``leaf``)."""

    activations: Tensor | None = None
    leaf: Tensor | None = None


@contextmanager
def tap_layer(
    module: nn.Module,
    *,
    replace: Callable[[Tensor], Tensor] | None = None,
    grad: bool = False,
    stop: bool = False,
    grid: TokenGrid | None = None,
) -> Iterator[Tap]:
    """A forward hook on ``module`` for the duration of the block (removed on exit).

    ``replace(a)`` returns what the rest of the network sees instead of the output ``a``;
    ``grad`` makes that tensor a fresh leaf and switches gradient mode on from there (run the
    model under ``torch.no_grad()``: no graph is built before the layer); ``stop`` ends the
    forward pass at the layer (the model call raises an internal exception that
    :func:`layer_pass` catches). With the patch ``grid`` of a transformer, a token output
    ``[N, T, D]`` is seen (and replaced) as the map ``[N, D, h, w]`` of its patch tokens
    (:mod:`xailab.core.tokens`).
    """
    tap = Tap()

    def hook(mod: nn.Module, inputs: Any, output: Any) -> Any:
        if not isinstance(output, Tensor):
            raise LayerError(
                f"layer {type(mod).__name__} outputs a {type(output).__name__}, not a tensor: "
                "choose a layer whose output is one feature map"
            )
        tap.activations = as_map(output, grid).detach()
        if stop:
            raise _Stop
        new = replace(tap.activations) if replace is not None else None
        if grad:
            new = (new if new is not None else tap.activations).detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # restored by the caller's no_grad() on exit
            tap.leaf = new
        if new is not None and grid is not None and output.dim() == 3:
            new = grid.to_tokens(new, like=output)  # patch tokens from the map, prefix tokens kept
        return new

    with HookScope() as hooks:
        hooks.add(module.register_forward_hook(hook))
        yield tap


def constant(value: Tensor) -> Callable[[Tensor], Tensor]:
    """A ``replace=`` function that swaps the layer's output for ``value`` (same shape)."""

    def swap(a: Tensor) -> Tensor:
        if a.shape != value.shape:
            raise LayerError(f"replacement of shape {tuple(value.shape)} for a layer output {tuple(a.shape)}")
        return value.to(a.dtype)

    return swap


def layer_pass(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    *,
    replace: Callable[[Tensor], Tensor] | None = None,
    grad: bool = False,
    stop: bool = False,
) -> tuple[Tap, Tensor | None]:
    """Run ``model(x)`` once with :func:`tap_layer`; ``(tap, logits)`` (logits None if ``stop``).

    With ``grad=True`` the logits carry a graph from ``tap.leaf`` only:
    ``torch.autograd.grad(logits[:, k].sum(), tap.leaf)`` is ``d logit_k / d layer``.
    """
    grid = token_grid_of(model, x)  # a transformer's tokens are read as a map on the patch grid
    with tap_layer(module, replace=replace, grad=grad, stop=stop, grid=grid) as tap, torch.no_grad():
        try:
            out = model(x)
        except _Stop:
            out = None
    if tap.activations is None:
        raise LayerError("the layer was not called in the model's forward pass: choose another layer")
    if out is not None:
        out = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise LayerError(f"the model must return logits [N, classes], got {getattr(out, 'shape', type(out))}")
    return tap, out


# -- streams ----------------------------------------------------------------------------------
def iter_activations(
    model: nn.Module,
    layer: str | nn.Module | None,
    images: ImageSource,
    batch_size: int = 64,
    *,
    order: Tensor | None = None,
    eval_mode: bool = True,
) -> Iterator[ActivationBatch]:
    """Yield ``(index, activations)`` for the images of ``images`` in batches of ``batch_size``.

    Args:
        model: the classifier; run in eval mode (by default), every flag restored afterwards.
        layer: a layer name (``"layer3.2"``), a module of ``model``, or ``None`` for the last
            conv block (see :func:`xailab.core.hooks.resolve_layer`).
        images: a tensor ``[N, C, H, W]`` or a Dataset (see the module docstring).
        batch_size: images per forward pass; only one batch is alive at a time.
        order: the image indices to visit, in this order (default: all, in order), e.g. a
            seeded ``torch.randperm`` for an online fit that must not see one class at a time.

    The activations are detached, on the model's device, and the forward pass stops at the
    layer (the rest of the network is not run).

        acts = torch.cat([a.mean((2, 3)) for _, a in iter_activations(model, "layer2", x)])
    """
    _, module = resolve_layer(model, layer)
    device = model_device(model)
    n = num_images(images)
    with model_session(model, eval_mode=eval_mode):
        for idx in batch_indices(n, batch_size, order):
            x, _ = take(images, idx)
            tap, _ = layer_pass(model, module, x.to(device), stop=True)
            assert tap.activations is not None
            yield ActivationBatch(idx, tap.activations)


def collect_activations(
    model: nn.Module,
    layer: str | nn.Module | None,
    images: ImageSource,
    batch_size: int = 64,
    *,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """All activations (or ``reduce(activations)`` per batch) concatenated, on the CPU.

    Holds everything in memory: for small sets (TCAV concept sets), or with a ``reduce`` such as
    ``lambda a: a.flatten(1)`` or ``lambda a: a.amax((2, 3))``.
    """
    parts = []
    for _, acts in iter_activations(model, layer, images, batch_size):
        parts.append((reduce(acts) if reduce is not None else acts).cpu())
    if not parts:
        raise InputError("the image set is empty")
    return torch.cat(parts)
