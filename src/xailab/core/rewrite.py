"""A hook-friendly copy of a model: functional and reused activations become modules (torch.fx).

Hook-based methods (DeepLIFT, LRP, the default CAM layer) need one module per nonlinearity,
applied once, and no in-place update. :func:`hook_friendly` traces the model with
``torch.fx.symbolic_trace`` and rewrites the graph:

* ``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``, ``F.gelu``, ``torch.sigmoid``, ``F.silu``, ...
  (and their in-place forms) become calls of a new activation module (``nn.ReLU()``, ``nn.GELU
  (approximate=...)``, ...) named after the layer it follows (``bn3_relu``);
* an activation or max-pool module applied several times gets a copy per extra use
  (``layer1_0_relu_2``);
* an activation module with ``inplace=True`` is replaced by a copy with ``inplace=False``;
  ``x.add_(y)`` and friends become ``x.add(y)`` (``x += y`` is already ``x + y`` when traced).

The copy is a ``GraphModule`` that *shares* the user's parameters, buffers and modules (its
outputs are the same to the last bit); only the new activation modules are its own. The user's
model is never modified. Where the model cannot be traced (control flow that depends on the
input's values, ...), :class:`~xailab.core.errors.UnsupportedModelError` names the line of the
model's code and the fix.

    friendly = hook_friendly(model)
    friendly.changes        # ["F.relu after 'bn3' -> module 'bn3_relu'", ...]
    friendly.model(x)       # == model(x)
"""

from __future__ import annotations

import copy
import inspect
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from xailab.core.errors import UnsupportedModelError
from xailab.core.structure import inspect_structure

#: function -> activation module built from the function's keyword arguments
_FUNCTIONS: dict[Callable[..., Any], type[nn.Module]] = {
    F.relu: nn.ReLU, torch.relu: nn.ReLU, F.relu_: nn.ReLU, torch.relu_: nn.ReLU, F.relu6: nn.ReLU6,
    F.leaky_relu: nn.LeakyReLU, F.leaky_relu_: nn.LeakyReLU, F.elu: nn.ELU, F.elu_: nn.ELU, F.selu: nn.SELU,
    F.celu: nn.CELU, F.gelu: nn.GELU, F.silu: nn.SiLU, F.mish: nn.Mish, F.softplus: nn.Softplus,
    F.hardswish: nn.Hardswish, F.hardsigmoid: nn.Hardsigmoid, F.hardtanh: nn.Hardtanh,
    torch.sigmoid: nn.Sigmoid, F.sigmoid: nn.Sigmoid, torch.tanh: nn.Tanh, F.tanh: nn.Tanh,
    F.max_pool1d: nn.MaxPool1d, F.max_pool2d: nn.MaxPool2d, F.max_pool3d: nn.MaxPool3d,
    F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
}
_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
#: positional arguments after the input, for functions that have no Python signature
_POSITIONAL: dict[Callable[..., Any], tuple[str, ...]] = {
    F.max_pool1d: _POOL_ARGS, F.max_pool2d: _POOL_ARGS, F.max_pool3d: _POOL_ARGS,
    F.adaptive_max_pool2d: ("output_size", "return_indices"), F.gelu: ("approximate",),
    F.softplus: ("beta", "threshold"),
}
_METHODS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "relu_": nn.ReLU, "sigmoid": nn.Sigmoid, "sigmoid_": nn.Sigmoid,
    "tanh": nn.Tanh, "tanh_": nn.Tanh,
}
_INPLACE_METHODS = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div", "clamp_": "clamp"}
_REUSABLE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool2d,
)
_TORCH_DIR = os.path.dirname(torch.__file__)


@dataclass
class Rewrite:
    """The hook-friendly model and what was changed (empty: the user's model itself)."""

    model: nn.Module
    changes: list[str] = field(default_factory=list)
    #: names of the activation modules added in place of functional calls -> the layer they follow
    added: dict[str, str] = field(default_factory=dict)

    @property
    def rewritten(self) -> bool:
        return bool(self.changes)


def trace(model: nn.Module, method: str = "this method") -> fx.GraphModule:
    """``torch.fx.symbolic_trace(model)``, or an error naming the model's line that stops it."""
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, RuntimeError, AssertionError, ...
        raise UnsupportedModelError(_trace_failure(model, method, e)) from e


def _trace_failure(model: nn.Module, method: str, e: Exception) -> str:
    frames = [f for f in traceback.extract_tb(e.__traceback__)
              if not f.filename.startswith(_TORCH_DIR) and "xailab" not in f.filename.replace("\\", "/").split("/")[-3:]]
    where = f"{frames[-1].filename}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})" if frames else type(model).__name__
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (f"{method} needs every activation as a module, and {type(model).__name__} could not be traced to "
            f"rewrite its functional activations: at {where}: {first}. To fix: make that line independent "
            "of the input's values (no 'if' on a tensor), or write the activations as modules "
            "(self.relu1 = nn.ReLU() ... x = self.relu1(x)), one per use")


def _unique(gm: fx.GraphModule, base: str) -> str:
    names = dict(gm.named_modules())
    name, k = base.replace(".", "_"), 2
    while name in names or hasattr(gm, name):
        name, k = f"{base.replace('.', '_')}_{k}", k + 1
    return name


def _module_for(fn: Callable[..., Any], node: fx.Node) -> nn.Module | None:
    """The activation module equal to ``fn(*node.args, **node.kwargs)``; None if an argument is a tensor."""
    cls = _FUNCTIONS[fn]
    extra: dict[str, Any] = dict(node.kwargs)
    try:
        sig: inspect.Signature | None = inspect.signature(fn)
    except (TypeError, ValueError):
        sig = None
    if fn in _POSITIONAL or sig is None or any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values()):
        names = _POSITIONAL.get(fn, ())
        if len(node.args) - 1 > len(names):
            return None
        extra.update(zip(names, node.args[1:], strict=False))
    else:
        bound = sig.bind_partial(*node.args, **node.kwargs)
        extra = {k: v for k, v in bound.arguments.items() if k != next(iter(sig.parameters))}
    extra.pop("inplace", None)
    if any(isinstance(v, fx.Node) for v in extra.values()):
        return None
    try:
        return cls(**extra)
    except TypeError:
        return None


def _producer(node: fx.Node) -> str:
    arg = node.args[0] if node.args else None
    if isinstance(arg, fx.Node) and arg.op == "call_module":
        return str(arg.target)
    return ""


def _replace_with_module(gm: fx.GraphModule, node: fx.Node, module: nn.Module, label: str, rw: Rewrite) -> None:
    after = _producer(node)
    name = _unique(gm, f"{after}_{label}" if after else node.name)
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, (node.args[0],))
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    rw.added[name] = after
    rw.changes.append(f"{label} after '{after or 'the input'}' -> module '{name}'")


def hook_friendly(model: nn.Module, method: str = "this method") -> Rewrite:
    """A copy of ``model`` with one activation module per use and no in-place updates.

    Returns ``Rewrite(model, [])`` (the user's model itself) when nothing needs rewriting.
    Raises :class:`UnsupportedModelError` when the model cannot be traced, or a functional
    activation takes a tensor argument (``F.prelu(x, w)``, ``F.leaky_relu(x, slope_tensor)``).
    """
    gm = trace(model, method)
    rw = Rewrite(gm)
    uses: dict[str, int] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in _FUNCTIONS:
            module = _module_for(node.target, node)
            if module is None:
                raise UnsupportedModelError(
                    f"{method}: the functional activation {node.target.__name__} at node '{node.name}' "
                    "takes a tensor argument; write it as a module")
            _replace_with_module(gm, node, module, node.target.__name__.rstrip("_"), rw)
        elif node.op == "call_method" and node.target in _METHODS and len(node.args) == 1 and not node.kwargs:
            _replace_with_module(gm, node, _METHODS[node.target](), node.target.rstrip("_"), rw)
        elif node.op == "call_method" and node.target in _INPLACE_METHODS:
            node.target = _INPLACE_METHODS[node.target]
            rw.changes.append(f"in-place {node.name} -> out of place")
        elif node.op == "call_module":
            _split_module_use(gm, node, uses, rw)
    if not rw.changes:
        return Rewrite(model)
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # gm's own parents: the user's modules are not touched
    gm.recompile()
    return rw


def _split_module_use(gm: fx.GraphModule, node: fx.Node, uses: dict[str, int], rw: Rewrite) -> None:
    target = str(node.target)
    module = gm.get_submodule(target)
    if not isinstance(module, _REUSABLE):
        return
    uses[target] = uses.get(target, 0) + 1
    inplace = bool(getattr(module, "inplace", False))
    if uses[target] == 1 and not inplace:
        return
    twin = copy.deepcopy(module)
    if inplace:
        twin.inplace = False  # type: ignore[assignment]
    name = _unique(gm, target if uses[target] == 1 else f"{target}_{uses[target]}")
    gm.add_submodule(name, twin)
    node.target = name
    why = "in-place" if uses[target] == 1 else f"use {uses[target]}"
    rw.changes.append(f"'{target}' ({why}) -> module '{name}'")


def hook_ready(model: nn.Module, example: torch.Tensor, method: str, kinds: frozenset[str]) -> Rewrite:
    """:func:`hook_friendly` where the model traces; where it does not, the model itself if one
    forward pass finds none of the structure issues ``kinds`` (:mod:`xailab.core.structure`),
    else the error naming the line that stops tracing."""
    try:
        return hook_friendly(model, method)
    except UnsupportedModelError:
        if any(i.kind in kinds for i in inspect_structure(model, example)):
            raise
        return Rewrite(model)


__all__ = ["Rewrite", "hook_friendly", "hook_ready", "trace"]
