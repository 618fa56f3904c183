"""Checks that LRP will give a correct answer on a model, or a clear refusal.

LRP rules are module hooks; they are right only when every operation that mixes activations is
a module with a rule. Run on the *canonized* model (BatchNorm merged, residual additions routed
through ``Add`` modules), :func:`prepare_model` refuses, with :class:`UnsupportedModelError`:

* an element-wise sum, difference, product or quotient of two activations (a gate,
  squeeze-excitation, attention, a broadcast residual add) left in the autograd graph: its
  gradient copies or scales relevance instead of dividing it, so relevance is not conserved;
* a layer normalisation, or a fused softmax attention (``F.scaled_dot_product_attention``):
  they have no zennit rule, so a transformer is refused (``attnlrp`` explains it);
* a module whose rule stores its input (conv, linear, pooling, residual sum) called more than once per
  forward pass: the second call overwrites what the first call's rule needs;
* a functional non-ReLU activation (``torch.sigmoid``, ``F.gelu``...) outside a module: its
  gradient rescales relevance, where LRP passes it on unchanged;
* canonizers that changed the model's output (a BatchNorm merged into a layer it does not follow);
* BatchNorm in training mode (``eval_mode=False``): merging uses the running statistics.

It accepts, because they are harmless for LRP's rules (tests show the same relevance as the
rewritten model): a reused activation module (its rule passes relevance on and keeps no input),
a functional ReLU (relevance reaching it is already zero wherever the ReLU is), in-place ReLUs
(zennit's hooks work on a copy). It warns about BatchNorm layers that follow no linear layer
(relevance passes them unchanged), parameterised layers no rule covers (plain gradient) and
functional average pooling such as ``x.mean((2, 3))`` (relevance spread evenly, not by the z-rule).

    plan, warnings = prepare_model(model, x[:1], logits[:1], composite_for)  # or raises
    plan, warnings = prepare_model(model, x[:1], None, composite_for)  # computes the reference
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from zennit.core import Composite

from xailab.core.errors import UnsupportedModelError
from xailab.core.structure import autograd_nodes, inspect_structure

from .canonizers import ResidualSumCanonizer, scan_forward
from .composites import stateful_modules

#: autograd nodes that mix two activations; gradient != LRP relevance for them
_MIXING = {
    "AddBackward0": "a sum of two activations that is not routed through a residual-sum module (e.g. a broadcast residual add)",
    "SubBackward0": "a difference of two activations",
    "MulBackward0": "an element-wise product of two activations (a gate or squeeze-excitation)",
    "DivBackward0": "a quotient of two activations (e.g. a normalisation by the input)",
    "MmBackward0": "a matrix product of two activations (attention)",
    "BmmBackward0": "a batched matrix product of two activations (attention)",
    "AddmmBackward0": "a matrix product of two activations (attention)",
}
_RELU_NAMES = ("relu(", "relu_(")
#: autograd nodes with no LRP rule here, even with one input-dependent operand (transformers)
_NO_RULE = {
    "NativeLayerNormBackward0": "a layer normalisation (it divides by the activations' own spread; "
                                "attnlrp has AttnLRP's rules for layer norms and attention)",
    "ScaledDotProduct": "a fused softmax attention (F.scaled_dot_product_attention)",
}


def _no_rule(name: str) -> str | None:
    return next((k for k in _NO_RULE if name.startswith(k)), None)


def mixing_operations(output: Tensor) -> Counter[str]:
    """Count the autograd nodes of ``output``'s graph that combine two input-dependent tensors."""
    found: Counter[str] = Counter()
    for node, nexts in autograd_nodes(output):
        if node.name() in _MIXING and len(nexts) >= 2:
            found[node.name()] += 1
        elif (key := _no_rule(node.name())) is not None and nexts:
            found[key] += 1
    return found


def _check_batchnorm(model: nn.Module, method: str) -> None:
    bn_training = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if bn_training:
        raise UnsupportedModelError(
            f"{method} needs BatchNorm layers in eval mode (it merges their running statistics into "
            f"the layer before), but {', '.join(bn_training[:3])} are training; use eval_mode=True"
        )


def _structure_problems(model: nn.Module, example: Tensor, calls: Any) -> list[str]:
    """What makes LRP's rules wrong on this model: reused modules (``calls``: name -> calls per
    forward pass) and functional activations other than ReLU."""
    problems = []
    reused = [f"'{n}' ({k} calls)" for n, k in calls.items() if k > 1]
    if reused:
        problems.append(
            f"module(s) called more than once per forward pass: {', '.join(reused[:5])}; a rule keeps "
            "the input of one call only. Give every use its own module"
        )
    functional = sorted({
        f"{i.detail.split('(')[0]}() in '{i.where or '<model.forward>'}'"
        for i in inspect_structure(model, example)
        if i.kind == "functional_activation" and not i.detail.startswith(_RELU_NAMES)
    })
    if functional:
        problems.append(
            f"functional activation(s) {', '.join(functional[:5])}: their gradient rescales relevance. "
            "Use activation modules (nn.Sigmoid, nn.GELU...) so the pass rule applies"
        )
    return problems


def prepare_model(
    model: nn.Module,
    example: Tensor,
    reference: Tensor | None,
    composite_for: Callable[[dict[str, int]], Composite],
    *,
    forward: Callable[[Tensor], Tensor] | None = None,
    method: str = "lrp",
    check: bool = True,
) -> tuple[dict[str, int], list[str]]:
    """Find the residual additions to canonize, then check the canonized model (module doc).

    Returns ``(plan, warnings)``: ``plan`` = ``{module name: residual additions}`` for
    :class:`~.canonizers.ResidualSumCanonizer`; raises :class:`UnsupportedModelError` for a
    model LRP would get wrong. ``composite_for(plan)`` builds the composite that will explain;
    its canonizers are applied (no rule hooks) during the check and removed after.
    ``reference`` are the model's logits for ``example`` (``None``: computed here, one no-grad
    pass before any canonizer, only when checking); ``forward`` maps inputs to logits (default:
    ``model``). Parameters must be frozen and the model in eval mode.
    """
    if check:
        _check_batchnorm(model, method)
    if reference is None and check:
        with torch.no_grad():
            reference = (forward or model)(example)
    composite = composite_for({})
    handles: list[Any] = []
    try:
        for canonizer in composite.canonizers:  # zennit's (BatchNorm, torchvision blocks)
            handles += canonizer.apply(model)
        freeze(model)  # merged BatchNorm may have created bias parameters
        first = scan_forward(model, example, forward=forward, watch=stateful_modules(composite, model).values())
        plan = first.adds
        if not check:
            return plan, []
        last = first
        if plan:  # the same canonizers plus ours, and a second pass to check the result
            composite = composite_for(plan)
            handles += ResidualSumCanonizer(plan).apply(model)
            last = scan_forward(model, example, forward=forward, watch=stateful_modules(composite, model).values())
        assert last.output is not None and reference is not None
        _check_same_function(last.output.detach(), reference, method)
        problems = _graph_problems(last.output) + _structure_problems(model, example, last.calls)
        if problems:
            raise UnsupportedModelError(
                f"{method} would not conserve relevance on this model: " + "; ".join(problems)
                + ". Fix the model as said, or use a gradient method (integrated_gradients, saliency)."
            )
        messages = _warnings(model)
        if first.functional_pooling:
            messages.append(
                f"functional average pooling {', '.join(first.functional_pooling[:3])}: the gradient "
                "spreads relevance evenly over its inputs instead of by the z-rule; use an "
                "nn.AdaptiveAvgPool2d / nn.AvgPool2d module"
            )
        return plan, messages
    finally:
        for handle in reversed(handles):
            handle.remove()


def freeze(model: nn.Module) -> None:
    """``requires_grad=False`` on every parameter: only the input needs a gradient."""
    for p in model.parameters():
        p.requires_grad_(False)


def _check_same_function(out: Tensor, reference: Tensor, method: str) -> None:
    ref = reference.to(out)
    scale = float(ref.abs().max()) + 1e-12
    tol = 1e-4 if out.dtype == torch.float64 else 2e-3
    if out.shape != ref.shape or float((out - ref).abs().max()) > tol * scale:
        raise UnsupportedModelError(
            f"{method}: merging BatchNorm layers into the layer before them changed the model's output "
            f"(max difference {float((out - ref).abs().max()):.3g} for logits up to {scale:.3g}). A BatchNorm "
            "is probably defined (in __init__) right after a conv/linear layer it does not follow in "
            "forward; define modules in the order forward uses them"
        )


def _graph_problems(out: Tensor) -> list[str]:
    mixing = mixing_operations(out)
    return [f"{k} x {_MIXING.get(name) or _NO_RULE[name]}" for name, k in sorted(mixing.items())]


def _warnings(model: nn.Module) -> list[str]:
    """Layers LRP treats approximately: unmerged BatchNorm, parameterised layers without rules."""
    out = []
    unmerged = [
        n for n, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _is_identity_bn(m)
    ]
    if unmerged:
        out.append(
            f"BatchNorm layer(s) {', '.join(unmerged[:5])} follow no conv/linear layer, so they cannot be "
            "merged; relevance passes through them unchanged (their shift and scale are ignored)"
        )
    covered = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    uncovered = [
        f"{n} ({type(m).__name__})" for n, m in model.named_modules()
        if not isinstance(m, covered) and any(True for _ in m.parameters(recurse=False))
    ]
    if uncovered:
        out.append(
            f"no LRP rule for the parameterised layer(s) {', '.join(uncovered[:5])}: the plain gradient "
            "passes through them"
        )
    return out


def _is_identity_bn(m: nn.Module) -> bool:
    mean, var = getattr(m, "running_mean", None), getattr(m, "running_var", None)
    if mean is None or var is None:
        return False
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    return bool(
        (mean == 0).all() and torch.allclose(var + m.eps, torch.ones_like(var), rtol=0, atol=1e-6)
        and (w is None or (w == 1).all()) and (b is None or (b == 0).all())
    )


def warn_all(messages: list[str], method: str) -> None:
    for msg in messages:
        warnings.warn(f"{method}: {msg}", stacklevel=3)
