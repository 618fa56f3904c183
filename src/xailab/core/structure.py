"""Inspect a model's forward pass for patterns that make hook-based rules silently wrong.

DeepLIFT and LRP replace the backward pass of each nonlinearity *module* with their own rule. That
is only correct when every nonlinearity is its own module, used once per forward pass, and the
graph has no in-place updates. Three patterns break it and are common in real models:

* ``reused_module``: one ``nn.ReLU`` instance applied at several places (torchvision's
  ResNet ``BasicBlock`` calls ``self.relu`` twice). A module hook cannot tell the calls apart.
* ``functional_activation``: ``F.relu(x)`` / ``torch.relu`` / ``x.relu()`` outside an activation
  module: no module, so no hook, so the plain gradient is used there.
* ``inplace_op``: ``out += identity`` or ``nn.ReLU(inplace=True)``: the input a rule needs is
  overwritten before the backward pass.

:func:`inspect_structure` runs one forward pass and reports each occurrence;
:func:`require_supported` turns them into an :class:`UnsupportedModelError` that says what to do.

    issues = inspect_structure(torchvision.models.resnet18(), torch.rand(1, 3, 64, 64))
    [i.kind for i in issues][:2]   # ['reused_module', 'inplace_op']
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from xailab.core.errors import UnsupportedModelError
from xailab.core.hooks import HookScope, model_session

ACTIVATIONS: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU,
)
POOLS: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)

_FUNCTIONAL = {
    F.relu, torch.relu, Tensor.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu,
    F.silu, F.mish, torch.sigmoid, Tensor.sigmoid, F.sigmoid, torch.tanh, Tensor.tanh, F.tanh,
    F.softplus, F.hardswish, F.hardsigmoid, F.hardtanh, F.prelu,
}
_INPLACE = {
    Tensor.__iadd__, Tensor.__isub__, Tensor.__imul__, Tensor.__itruediv__, Tensor.add_,
    Tensor.sub_, Tensor.mul_, Tensor.div_, Tensor.relu_, torch.relu_, F.relu_, Tensor.clamp_,
    Tensor.sigmoid_, Tensor.tanh_, F.leaky_relu_, F.elu_,
}
KINDS = frozenset({"reused_module", "functional_activation", "inplace_op"})


@dataclass(frozen=True)
class StructureIssue:
    """A pattern in a model that makes a propagation method silently wrong (kind, where, detail)."""

    kind: str  # one of KINDS
    where: str  # module name ("" = the model's own forward)
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} at '{self.where or '<model.forward>'}': {self.detail}"


class _Recorder(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stack = stack
        self.functional: list[tuple[str, str]] = []
        self.inplace: list[tuple[str, str]] = []

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        where, inner = self.stack[-1] if self.stack else ("", None)
        if func in _FUNCTIONAL and not isinstance(inner, ACTIVATIONS):
            self.functional.append((where, getattr(func, "__name__", str(func))))
        if func in _INPLACE or (func in _FUNCTIONAL and kwargs.get("inplace")):
            self.inplace.append((where, getattr(func, "__name__", str(func))))
        return func(*args, **kwargs)


def inspect_structure(model: nn.Module, example: Tensor) -> list[StructureIssue]:
    """Run ``model(example)`` once (no grad, model state untouched) and report the issues."""
    names = {m: n for n, m in model.named_modules()}
    stack: list[tuple[str, nn.Module]] = []
    calls: Counter[nn.Module] = Counter()
    rec = _Recorder(stack)

    def pre(mod: nn.Module, inp: Any) -> None:
        stack.append((names.get(mod, "?"), mod))
        calls[mod] += 1

    def post(mod: nn.Module, inp: Any, out: Any) -> None:
        if stack:
            stack.pop()

    with model_session(model), HookScope() as hooks, torch.no_grad():
        for m in model.modules():
            hooks.add(m.register_forward_pre_hook(pre))
            hooks.add(m.register_forward_hook(post))
        with rec:
            model(example[:1])

    issues: list[StructureIssue] = []
    for mod, n in calls.items():
        if isinstance(mod, (*ACTIVATIONS, *POOLS)) and n > 1:
            issues.append(StructureIssue(
                "reused_module", names.get(mod, "?"),
                f"{type(mod).__name__} module applied {n} times in one forward pass",
            ))
        if isinstance(mod, ACTIVATIONS) and getattr(mod, "inplace", False):
            issues.append(StructureIssue("inplace_op", names.get(mod, "?"), f"{type(mod).__name__}(inplace=True)"))
    for where, fname in _dedupe(rec.functional):
        issues.append(StructureIssue("functional_activation", where, f"{fname}() called outside an activation module"))
    for where, fname in _dedupe(rec.inplace):
        if any(i.kind == "inplace_op" and i.where == where for i in issues):
            continue  # already reported as an inplace activation module
        issues.append(StructureIssue("inplace_op", where, f"in-place {fname}"))
    return issues


def _dedupe(items: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict.fromkeys(items))


_ADVICE = {
    "reused_module": "give every use its own activation module (e.g. self.relu1, self.relu2)",
    "functional_activation": "replace F.relu/torch.relu calls by nn.ReLU modules",
    "inplace_op": "use out = out + identity instead of out += identity, and nn.ReLU(inplace=False)",
}


def require_supported(
    model: nn.Module, example: Tensor, method: str, kinds: Iterable[str] = KINDS
) -> list[StructureIssue]:
    """Raise :class:`UnsupportedModelError` if the model shows any of ``kinds``; else the rest."""
    wanted = set(kinds)
    unknown = wanted - KINDS
    if unknown:
        raise ValueError(f"unknown structure kinds {sorted(unknown)}; known: {sorted(KINDS)}")
    issues = inspect_structure(model, example)
    bad = [i for i in issues if i.kind in wanted]
    if bad:
        shown = "; ".join(str(i) for i in bad[:6]) + (f"; and {len(bad) - 6} more" if len(bad) > 6 else "")
        advice = "; ".join(_ADVICE[k] for k in sorted({i.kind for i in bad}))
        raise UnsupportedModelError(
            f"{method} would give wrong attributions on this model: {shown}. To fix: {advice}; "
            "or use a gradient method (integrated_gradients, saliency) that has no such restriction."
        )
    return [i for i in issues if i.kind not in wanted]


def autograd_nodes(output: Tensor | None) -> Iterator[tuple[Any, list[Any]]]:
    """Every node of ``output``'s autograd graph once, with the nodes it feeds from."""
    seen: set[Any] = set()
    todo = [output.grad_fn] if output is not None else []
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nexts = [f for f, _ in node.next_functions if f is not None]
        yield node, nexts
        todo.extend(nexts)


#: autograd nodes that multiply or divide two input-dependent tensors: a module rule cannot see them
PRODUCTS = {
    "MulBackward0": "an element-wise product of two activations (a gate or squeeze-excitation)",
    "DivBackward0": "a quotient of two activations (e.g. a normalisation by the input)",
    "MmBackward0": "a matrix product of two activations (attention)",
    "BmmBackward0": "a batched matrix product of two activations (attention)",
}


def activation_products(model: nn.Module, example: Tensor) -> Counter[str]:
    """Count the products and quotients of two input-dependent tensors in ``model(example[:1])``
    (keys of :data:`PRODUCTS`). Parameters are detached, so ``x * weight`` is not counted."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = example[:1].detach().clone().requires_grad_(True)
    with model_session(model), torch.enable_grad():
        out = torch.func.functional_call(model, params, (x,))
    found: Counter[str] = Counter()
    for node, nexts in autograd_nodes(out if isinstance(out, Tensor) else None):
        if node.name() in PRODUCTS and len(nexts) >= 2:
            found[node.name()] += 1
    return found
