"""Hooks and model state, always undone.

* :func:`model_session`: eval mode (by default) for the duration of an explanation, then every
  module's ``training`` flag, every parameter's ``requires_grad`` and ``.grad`` restored.
* :class:`HookScope`: collects hook handles; leaving the ``with`` block removes them all, also
  when the model raised.
* :func:`resolve_device`: ``auto`` -> CUDA when available, else CPU (one rule for every command).
* :func:`resolve_layer` / :func:`conv_layers`: find a layer by name, with the candidates listed
  when the name is wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from xailab.core.errors import LayerError, ModelError


@contextmanager
def model_session(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode and leave it exactly as it was found.

    With ``eval_mode=False`` the forward passes run in the model's own mode, so BatchNorm layers
    in training mode update their running statistics: every buffer is copied before and written
    back after, so the user's model is unchanged and two identical calls see the same model.
    """
    training = {m: m.training for m in model.modules()}
    params = list(model.parameters())
    grads = [p.grad for p in params]
    requires = [p.requires_grad for p in params]
    buffers = [] if eval_mode else [(b, b.detach().clone()) for b in model.buffers()]
    try:
        if eval_mode:
            model.eval()
        yield model
    finally:
        for m, flag in training.items():
            m.training = flag
        for p, g, r in zip(params, grads, requires, strict=True):
            p.grad = g
            p.requires_grad_(r)
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/``None`` -> CUDA when available, else CPU; a CUDA device without a GPU is refused."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device {device!r}: give cpu, cuda, cuda:N or auto") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device 'cuda' was asked for, but no CUDA GPU is available (use --device cpu)")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class HookScope:
    """``with HookScope() as hooks: hooks.add(module.register_forward_hook(fn))``."""

    def __init__(self) -> None:
        self.handles: list[RemovableHandle] = []

    def add(self, handle: RemovableHandle) -> RemovableHandle:
        self.handles.append(handle)
        return handle

    def remove(self) -> None:
        while self.handles:
            self.handles.pop().remove()

    def __enter__(self) -> HookScope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def count_hooks(model: nn.Module) -> int:
    """Number of hooks of any kind registered on ``model``'s modules (for leak tests)."""
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            total += len(getattr(m, attr, {}))
    return total


class ActivationRecorder:
    """Records a module's output and, if asked, the gradient flowing into it.

    ``with ActivationRecorder(layer) as rec: model(x)`` then ``rec.activation``; with
    ``grad=True`` the output keeps its graph so ``torch.autograd.grad(score, rec.activation)``
    gives the gradient.
    """

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        self.activation: Tensor | None = None
        self._scope = HookScope()

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        if not isinstance(out, Tensor):
            raise LayerError(f"layer {type(module).__name__} does not output a tensor")
        self.activation = out

    def __enter__(self) -> ActivationRecorder:
        self._scope.add(self.layer.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        self._scope.remove()


CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def conv_layers(model: nn.Module) -> list[str]:
    """Names of the 2-D convolution layers of ``model`` in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> tuple[str, nn.Module]:
    """``(name, module)`` for a layer given by name or module; ``None`` = the last conv block.

    With ``None`` the choice is the last module that produces a 4-D map: the last ``Conv2d``
    or, if a residual block/stage follows it, that enclosing block (its output is what Grad-CAM
    users mean by "the last conv layer" of a ResNet).
    """
    modules = dict(model.named_modules())
    if layer is None:
        return _last_spatial_layer(model)
    if isinstance(layer, nn.Module):
        for name, m in modules.items():
            if m is layer:
                return name, m
        raise LayerError("the given layer module is not part of the model")
    if layer in modules and layer != "":
        return layer, modules[layer]
    candidates = [n for n in modules if n]
    close = difflib.get_close_matches(layer, candidates, n=5, cutoff=0.4)
    convs = conv_layers(model)
    msg = f"the model has no layer named '{layer}'."
    if close:
        msg += f" Closest names: {', '.join(close)}."
    if convs:
        msg += f" Conv layers: {', '.join(convs[-8:])}{' (last 8 shown)' if len(convs) > 8 else ''}."
    raise LayerError(msg)


def _last_spatial_layer(model: nn.Module) -> tuple[str, nn.Module]:
    convs = conv_layers(model)
    if not convs:
        raise LayerError("the model has no Conv2d layer; name the layer to explain explicitly")
    last = convs[-1]
    # Prefer the outermost direct child of the top-level sequence/stage that contains the last
    # conv and is itself the last spatial block (e.g. ResNet "layer4" rather than layer4.1.conv2),
    # because the block's output includes the residual addition and the final ReLU.
    parts = last.split(".")
    modules = dict(model.named_modules())
    for depth in range(1, len(parts)):
        name = ".".join(parts[:depth])
        block = modules[name]
        if isinstance(block, nn.Sequential) and len(list(block.children())) > 0:
            # the last child of the sequential that holds the last conv
            children = list(block.named_children())
            child_name, child = children[-1]
            full = f"{name}.{child_name}"
            if last.startswith(full + ".") and any(isinstance(c, nn.Module) for c in child.children()):
                return full, child
    return last, modules[last]


def module_output_shapes(model: nn.Module, x: Tensor) -> dict[str, tuple[int, ...]]:
    """Output shape of every named module for input ``x`` (a dry run, hooks removed after)."""
    shapes: dict[str, tuple[int, ...]] = {}
    with HookScope() as hooks, torch.no_grad():
        for name, m in model.named_modules():
            if not name:
                continue

            def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                if isinstance(out, Tensor):
                    shapes[name] = tuple(out.shape)

            hooks.add(m.register_forward_hook(hook))
        model(x)
    return shapes
