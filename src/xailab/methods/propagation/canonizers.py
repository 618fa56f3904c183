"""Canonizers: reversible rewrites that put a model into a form LRP rules apply to.

* BatchNorm is merged into the linear layer before it (zennit's ``SequentialMergeBatchNorm``):
  ``w' = w * γ / sqrt(var + eps)``, ``b' = (b - mean) * γ / sqrt(var + eps) + β``; the batch norm
  becomes the identity.
* torchvision ResNets get zennit's block canonizers (its ``ResNetCanonizer``): each
  ``BasicBlock``/``Bottleneck`` adds its two branches with a :class:`zennit.layer.Sum` module (our composites keep zennit's rule for it)
  (``out += identity`` is gone).
* Every other residual addition, in any module (xailab's CIFAR ResNets, your own blocks), is
  found by one dry run and routed through an :class:`~xailab.core.modules.Add` module of its own by
  :class:`ResidualSumCanonizer`. Without it the gradient of ``a + b`` hands the *whole* relevance
  to both branches and the total doubles at every block: the relevance sums of about -1e11 for a
  logit of 1.8 that Captum's LRP returns on ResNet-18.

Each canonizer's ``remove()`` restores the model exactly (same parameter objects and values,
no attribute left behind).

    canonizers = model_canonizers(model) + [ResidualSumCanonizer(scan_forward(model, x).adds)]
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

from xailab.core.errors import UnsupportedModelError
from xailab.core.hooks import HookScope
from xailab.core.modules import Add

_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__}
_ADD_INPLACE = {torch.Tensor.add_, torch.Tensor.__iadd__}
SUM_PREFIX = "xailab_residual_sum"
_MISSING = object()


class MergeBatchNorm(SequentialMergeBatchNorm):
    """zennit's ``SequentialMergeBatchNorm``, leaving the batch norm *exactly* the identity.

    zennit sets the merged batch norm to ``mean=0, var=1``, so it still divides by
    ``sqrt(1 + eps)`` (a 5e-6 change of every activation for ``eps=1e-5``); here ``var = 1 - eps``.
    ``remove()`` restores the original tensors either way.
    """

    @staticmethod
    def merge_batch_norm(modules: Any, batch_norm: Any) -> None:
        SequentialMergeBatchNorm.merge_batch_norm(modules, batch_norm)
        eps = float(batch_norm.eps)
        if 0 < eps < 1:
            batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - eps)


def model_canonizers(model: nn.Module) -> list[Canonizer]:
    """zennit canonizers for ``model``: its ResNet block canonizers for torchvision ResNets, and
    BatchNorm merging (:class:`MergeBatchNorm`) for every model."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    canonizers: list[Canonizer] = [MergeBatchNorm()]
    if any(isinstance(m, (BasicBlock, Bottleneck)) for m in model.modules()):
        canonizers += [ResNetBasicBlockCanonizer(), ResNetBottleneckCanonizer()]
    return canonizers


def is_residual_add(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """``a + b`` of two same-shaped activations that both depend on the input (need grad).

    Parameters are frozen (``requires_grad=False``) while LRP runs, so "requires grad" means
    "computed from the input".
    """
    if func not in _ADD and func not in _ADD_INPLACE:
        return False
    if len(args) < 2 or set(kwargs) - {"alpha"} or kwargs.get("alpha", 1) != 1:
        return False
    a, b = args[0], args[1]
    return (
        isinstance(a, Tensor) and isinstance(b, Tensor)
        and not isinstance(a, nn.Parameter) and not isinstance(b, nn.Parameter)
        and a.requires_grad and b.requires_grad
        and a.shape == b.shape and a.dtype == b.dtype
    )


_POOLING = {
    torch.mean, torch.Tensor.mean, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
}
_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveAvgPool3d)


@dataclass
class ForwardScan:
    """What one dry run saw: residual additions per module, functional average pooling, how
    often each watched module ran, and the output (with its autograd graph)."""

    adds: dict[str, int] = field(default_factory=dict)
    functional_pooling: list[str] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    output: Tensor | None = None


class _Scan(TorchFunctionMode):
    def __init__(self, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.stack = stack
        self.adds: Counter[str] = Counter()
        self.pooling: dict[str, None] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        where, module = self.stack[-1] if self.stack else ("", None)
        if is_residual_add(func, args, kwargs):
            self.adds[where] += 1
        elif (
            func in _POOLING and args and isinstance(args[0], Tensor) and args[0].requires_grad
            and not isinstance(module, _POOL_MODULES)
        ):
            self.pooling[f"{getattr(func, '__name__', 'mean')}() in '{where or '<model.forward>'}'"] = None
        return func(*args, **kwargs)


def scan_forward(
    model: nn.Module,
    example: Tensor,
    *,
    forward: Callable[[Tensor], Tensor] | None = None,
    watch: Iterable[nn.Module] = (),
) -> ForwardScan:
    """One dry run of ``forward`` (default: ``model``) on ``example``, with gradients.

    ``adds`` = ``{module name: residual additions in its own forward}`` (``""`` is the model's
    ``forward``); ``functional_pooling``: ``x.mean(...)`` and friends outside pooling modules;
    ``calls``: how often each module of ``watch`` ran. Run it with the parameters frozen
    (``requires_grad=False``) and the model already canonized by zennit (so additions zennit
    handles are not counted).
    """
    names = {m: n for n, m in model.named_modules()}
    stack: list[tuple[str, nn.Module]] = []
    mode = _Scan(stack)
    watched = set(watch)
    calls: Counter[str] = Counter()

    def pre(mod: nn.Module, inp: Any) -> None:
        stack.append((names.get(mod, "?"), mod))
        if mod in watched:
            calls[names.get(mod, "?")] += 1

    def post(mod: nn.Module, inp: Any, out: Any) -> None:
        stack.pop()

    x = example.detach().requires_grad_(True)
    with HookScope() as hooks, torch.enable_grad():
        for m in model.modules():
            hooks.add(m.register_forward_pre_hook(pre))
            hooks.add(m.register_forward_hook(post))
        with mode:
            out = (forward or model)(x)
    return ForwardScan(dict(mode.adds), list(mode.pooling), dict(calls), out)


class _RouteAdds(TorchFunctionMode):
    """Inside one module's forward: send its k-th residual addition through ``sums[k]``."""

    def __init__(self, sums: list[nn.Module], where: str) -> None:
        super().__init__()
        self.sums = sums
        self.where = where
        self.used = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not is_residual_add(func, args, kwargs):
            return func(*args, **kwargs)
        if self.used >= len(self.sums):
            raise UnsupportedModelError(
                f"module '{self.where or '<model.forward>'}' made more residual additions than in the "
                "dry run (a data-dependent structure); LRP cannot be applied to it"
            )
        a, b = args[0], args[1]
        out = self.sums[self.used](torch.stack([a, b]))
        self.used += 1
        if func in _ADD_INPLACE:
            return a.copy_(out)  # keep in-place semantics; the gradient flows through `out` only
        return out


class ResidualSumCanonizer(Canonizer):
    """Route the residual additions found by :func:`scan_forward` through ``Add`` modules.

    For each module with ``k`` additions it adds ``k`` children ``xailab_residual_sum{i}`` (so a
    composite gives them the z-rule) and wraps ``forward`` so that its ``i``-th addition
    ``a + b`` becomes ``Add()(torch.stack([a, b]))``: same value, and LRP splits the
    relevance between the branches in proportion to their contributions.
    """

    def __init__(self, plan: dict[str, int]) -> None:
        self.plan = dict(plan)
        self.module: nn.Module | None = None
        self.count = 0
        self.previous: Any = _MISSING

    def copy(self) -> ResidualSumCanonizer:
        return ResidualSumCanonizer(self.plan)

    def apply(self, root_module: nn.Module) -> list[ResidualSumCanonizer]:
        lookup = dict(root_module.named_modules())
        instances: list[ResidualSumCanonizer] = []
        try:
            for name, count in self.plan.items():
                if name not in lookup:
                    raise UnsupportedModelError(f"module '{name}' disappeared between the dry run and LRP")
                instance = self.copy()
                instance.register(lookup[name], name, count)
                instances.append(instance)
        except BaseException:
            for instance in reversed(instances):
                instance.remove()
            raise
        return instances

    def register(self, module: nn.Module, name: str, count: int) -> None:
        for i in range(count):
            if hasattr(module, f"{SUM_PREFIX}{i}"):
                raise UnsupportedModelError(f"module '{name}' already has an attribute {SUM_PREFIX}{i}")
        self.module, self.count = module, count
        self.previous = module.__dict__.get("forward", _MISSING)
        sums: list[nn.Module] = []
        for i in range(count):
            s = Add()
            module.add_module(f"{SUM_PREFIX}{i}", s)
            sums.append(s)
        original = module.forward

        def forward(*args: Any, **kwargs: Any) -> Any:
            with _RouteAdds(sums, name):
                return original(*args, **kwargs)

        object.__setattr__(module, "forward", forward)

    def remove(self) -> None:
        module = self.module
        if module is None:
            return
        for i in range(self.count):
            delattr(module, f"{SUM_PREFIX}{i}")
        if self.previous is _MISSING:
            module.__dict__.pop("forward", None)
        else:
            object.__setattr__(module, "forward", self.previous)
        self.module = None
