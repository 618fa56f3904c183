"""AttnLRP: layer-wise relevance propagation for transformers (Achtibat et al., ICML 2024).

LRP's zennit rules are module hooks, so :mod:`~xailab.methods.propagation.lrp` refuses layer
normalisation and attention. ``attnlrp`` explains them with the rules of AttnLRP, computed as
gradient x input under a modified backward pass (:mod:`~.transformer_rules`): the ε-rule on
linear layers and convolutions, the identity rule on element-wise nonlinearities and on the
division of a layer norm, the uniform rule (half each) on products of two activations
(``q kᵀ``, ``attn @ v``, gates), and the softmax linearised at its input (Proposition 3.1 of the
paper). Residual additions need no canonizer: gradient x input splits a sum by the z-rule.

The map is ``x * g`` at the input, ``[N, T, C, H, W]``. As for :class:`~.lrp.LRP`,
``extras["relevance_sum"]`` and ``extras["score"]`` record, per explanation, how much of the
logit reached the input. Relevance leaves the input side where a rule is not conservative: at
biases and other additive parameters (position embeddings, the class token), which keep their
share, and at each softmax, whose linearisation has a bias term. With ``softmax="constant"``
(CP-LRP), ``epsilon=0`` and no additive parameters the input relevance sums to the logit
exactly; with the linearised softmax, the input's share plus what each softmax absorbs does (tested).

The model is not modified: a ``TorchFunctionMode`` applies the rules to the torch calls of its
forward pass (timm's ``Attention`` with or without ``F.scaled_dot_product_attention``,
torchvision's ``nn.MultiheadAttention``, Hugging Face's eager and sdpa attention, ``nn.LayerNorm``,
``F.gelu``...). Before explaining, one image's autograd graph is checked: an operation without
a rule (a hand-written normalisation dividing by the activations, ``exp``, ``pow``, GroupNorm...)
is refused with :class:`~xailab.core.errors.UnsupportedModelError` naming it.

    result = create("attnlrp", vit).explain(x, target="top1")
    result.pixel_maps()                                        # [N, 1, H, W]
    result.extras["relevance_sum"] / result.extras["score"]   # the share of the logit kept
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.card import MethodCard
from xailab.core.errors import InputError, UnsupportedModelError
from xailab.core.explainer import RowTargets, row_targets
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.core.structure import autograd_nodes

from .rows import RelevanceRows
from .transformer_rules import AttnLRPRules, Softmax

#: autograd nodes that are linear in their one input-dependent operand (or pick among inputs)
LINEAR_NODES = frozenset({
    "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "RsubBackward1", "NegBackward0",
    "MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "MmBackward0", "BmmBackward0",
    "AddmmBackward0", "AddbmmBackward0", "BaddbmmBackward0", "LinearBackward0", "ConvolutionBackward0",
    "MeanBackward0", "MeanBackward1", "SumBackward0", "SumBackward1", "CatBackward0", "StackBackward0",
    "CloneBackward0", "ExpandBackward0", "PermuteBackward0", "TransposeBackward0", "TBackward0",
    "ViewBackward0", "UnsafeViewBackward0", "ReshapeAliasBackward0", "AliasBackward0", "ToCopyBackward0",
    "SelectBackward0", "SliceBackward0", "IndexBackward0", "GatherBackward0", "UnbindBackward0",
    "SplitBackward0", "SplitWithSizesBackward0", "UnsafeSplitBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "UnsqueezeBackward0", "RepeatBackward0", "FlipBackward0",
    "RollBackward0", "ConstantPadNdBackward0", "MaskedFillBackward0", "AsStridedBackward0", "AsStridedBackward1",
    "AvgPool2DBackward0", "AdaptiveAvgPool2DBackward0", "AvgPool1DBackward0", "AdaptiveAvgPool1DBackward0",
    "MaxPool2DWithIndicesBackward0", "MaxPool1DWithIndicesBackward0", "MaxBackward0", "MaxBackward1",
    "AmaxBackward0", "NativeBatchNormBackward0", "CudnnBatchNormBackward0", "SoftmaxBackward0",
    "torch::autograd::AccumulateGrad", "EpsilonRuleBackward", "IdentityRuleBackward", "UniformRuleBackward",
    "NormRuleBackward",
})
#: products / quotients: linear only with one input-dependent operand (or both under the uniform rule)
_PRODUCTS = frozenset({"MulBackward0", "MmBackward0", "BmmBackward0", "AddmmBackward0", "BaddbmmBackward0",
                       "DivBackward0"})

_RESHAPES = frozenset({"ViewBackward0", "UnsafeViewBackward0", "ExpandBackward0", "ReshapeAliasBackward0",
                       "TransposeBackward0", "PermuteBackward0", "TBackward0", "CloneBackward0", "AliasBackward0",
                       "SqueezeBackward0", "SqueezeBackward1", "UnsqueezeBackward0"})

ATTNLRP_PAPER = ("Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin, Samek (2024), \"AttnLRP: "
                 "Attention-Aware Layer-Wise Relevance Propagation for Transformers\", ICML "
                 "(arXiv:2402.05602); Ali, Schnake, Eberle, Montavon, Müller, Wolf (2022), \"XAI for "
                 "Transformers: Better Explanations through Conservative Propagation\", ICML (CP-LRP).")


def graph_problems(output: Tensor) -> list[str]:
    """What ``output``'s autograd graph (built under :class:`AttnLRPRules`) has no rule for."""
    unknown: Counter[str] = Counter()
    for node, nexts in autograd_nodes(output):
        name = node.name()
        if name not in LINEAR_NODES:
            unknown[name] += 1
        elif name in _PRODUCTS and len(nexts) >= 2 and (
            name == "DivBackward0" or any(_origin(n).name() != "UniformRuleBackward" for n in nexts)
        ):
            unknown[f"{name} of two activations"] += 1
    return [f"{k} x {name}" for name, k in sorted(unknown.items())]


def _origin(node: Any) -> Any:
    """The first node above ``node`` that is not a reshaping of one tensor (matmul's views)."""
    while node.name() in _RESHAPES:
        nexts = [f for f, _ in node.next_functions if f is not None]
        if len(nexts) != 1:
            break
        node = nexts[0]
    return node


@register("attnlrp", family="propagation", aliases=("attn_lrp", "lrp_transformer"))
class AttnLRP(RelevanceRows):
    """AttnLRP (module docstring).

    Args:
        epsilon: ε of the ε-rule on linear layers, convolutions and the affine part of norms.
        softmax: ``"linearize"`` (AttnLRP, default) or ``"constant"`` (CP-LRP: the attention
            probabilities are constants, relevance flows through the values only).
        check: check the model's autograd graph (on the first image) for operations without a rule;
            a passed check is remembered for the model until its modules, training flags,
            parameters (in-place updates included) or the input shape change.
        **kwargs: ``batch_size``, ``output``, ``eval_mode``, ``seed`` of :class:`Explainer`. With
            ``output="probability"`` (or log) the relevance starting at the target logit is that score.
    """

    ranges: ClassVar[dict[str, Limit]] = {"epsilon": (0, None)}
    card = MethodCard(
        title="AttnLRP (LRP for transformers)", family="propagation",
        summary="Layer-wise relevance propagation through attention and layer norms, as gradient x input "
                "under modified gradients: ε-rule on linear layers, identity rule on GELU and on the "
                "normalisation, uniform rule (half each) on q·kᵀ and attn·v, the softmax linearised.",
        paper=ATTNLRP_PAPER,
        limits=("Biases, position embeddings, the class token and each softmax's linearisation keep part "
                "of the relevance: the map sums to a fraction of the logit (recorded per explanation).",
                "Operations without a rule (hand-written normalisations, exp, GroupNorm) are refused.",
                "Like every LRP variant the map depends on the rules; ε, the bias treatment and the "
                "softmax variant change it visibly."),
        cost="One forward and one backward pass per image and target (no recomputation of layers); "
             "a check of the autograd graph on first use.",
        what="The computational graph operation by operation, attention and normalisations included.",
        where="ICML 2024; vision transformers (timm, torchvision, Hugging Face), also CNNs (then LRP-ε "
              "with the identity rule on activations).",
    )
    per_channel = True
    one_pass = True

    def __init__(self, model: nn.Module, *, epsilon: float = 1e-6, softmax: Softmax = "linearize",
                 check: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not (epsilon >= 0 and math.isfinite(epsilon)):
            raise InputError(f"epsilon must be a finite number >= 0, got {epsilon}")
        if softmax not in ("linearize", "constant"):
            raise InputError(f"softmax must be 'linearize' (AttnLRP) or 'constant' (CP-LRP), not {softmax!r}")
        self.epsilon, self.softmax, self.check = float(epsilon), softmax, check
        self._sums: list[Tensor] = []
        self._scores: list[Tensor] = []

    def params(self) -> dict[str, Any]:
        return {**super().params(), "epsilon": self.epsilon, "softmax": self.softmax}

    def samples_per_image(self, n_targets: int) -> int:
        return n_targets

    def rules(self) -> AttnLRPRules:
        return AttnLRPRules(epsilon=self.epsilon, softmax=self.softmax)

    # -- the check, once per explain call ------------------------------------------------------
    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._prepare_one_pass(x)

    def _prepare_one_pass(self, x: Tensor) -> None:
        self._sums, self._scores = [], []
        if not self.check:
            return
        key = _model_key(self.model, x[:1], self.softmax)
        seen = _CHECKED.setdefault(self.model, set())
        if key not in seen:  # this model, unchanged, passed the check before (same input shape)
            self._check(x[:1])
            if len(seen) >= 8:
                seen.pop()
            seen.add(key)

    def _check(self, example: Tensor) -> None:
        training = [n for n, m in self.model.named_modules()
                    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
        if training:
            raise UnsupportedModelError(f"{self.name} needs BatchNorm layers in eval mode (their batch statistics "
                                        f"are not a linear map), but {', '.join(training[:3])} are training; "
                                        "use eval_mode=True")
        with _frozen(self.model), torch.enable_grad():
            reference = self.forward(example, grad=False)
            with self.rules():
                out = self.forward(example.detach().requires_grad_(True))
        problems = graph_problems(out)
        if problems:
            raise UnsupportedModelError(
                f"{self.name} has no rule for these operations of the model's forward pass: {', '.join(problems[:6])}. "
                "Write normalisations as nn.LayerNorm / F.layer_norm and activations as modules or torch "
                "functions, or use a gradient method (integrated_gradients, attention_gradient)")
        scale = float(reference.abs().max()) + 1e-12
        tol = 1e-6 if out.dtype == torch.float64 else 1e-3
        if float((out.detach() - reference).abs().max()) > tol * scale:
            raise UnsupportedModelError(
                f"{self.name}: the model computes other logits under the AttnLRP rules (max difference "
                f"{float((out.detach() - reference).abs().max()):.3g}); an in-place activation whose result is "
                "not used, or an unusual layer norm, is the likely cause")

    # -- one slice of rows (the loop: RelevanceRows) -----------------------------------------
    def _relevance(self, rows: Tensor, targets: RowTargets, first_row: int) -> tuple[Tensor, Tensor]:
        """Input relevance ``x * g`` ``[M, C, H, W]`` and the explained score ``[M]``."""
        with _frozen(self.model), torch.enable_grad():
            xi = rows.detach().requires_grad_(True)
            with self.rules():
                logits = self.forward(xi)
            tg = row_targets(targets, 0, len(xi), logits, first_row)
            logit = logits.gather(1, tg.reshape(-1, 1))
            score = self.score(logits, tg).detach()
            # gradient x input: the target logit's relevance is logit * g, so g = score / logit
            g = score.reshape(-1, 1) / torch.where(logit == 0, 1.0, logit.detach())
            start = torch.zeros_like(logits).scatter(1, tg.reshape(-1, 1), g)
            (grad,) = torch.autograd.grad(logits, xi, grad_outputs=start)
        return (xi * grad).detach(), score


#: per model: the keys (see _model_key) of its passed checks
_CHECKED: weakref.WeakKeyDictionary[nn.Module, set[tuple[Any, ...]]] = weakref.WeakKeyDictionary()


def _model_key(model: nn.Module, example: Tensor, softmax: str) -> tuple[Any, ...]:
    """What the check's outcome depends on: the modules and their training flags, the parameters
    (identity and in-place version), the forward code, the input's shape, dtype and device."""
    return (
        tuple((n, type(m), id(m), m.training) for n, m in model.named_modules()),
        tuple((id(p), p._version) for p in model.parameters()),
        type(model).forward, id(model.__dict__.get("forward")),
        tuple(example.shape[1:]), example.dtype, example.device, softmax,
    )


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters ``requires_grad=False`` inside (a product with a weight is then linear), restored after."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


__all__ = ["AttnLRP", "graph_problems"]
