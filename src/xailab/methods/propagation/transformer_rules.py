"""AttnLRP's rules (Achtibat et al., ICML 2024) as modified gradients, applied without touching the model.

AttnLRP computes relevance in the *gradient x input* form: the relevance of any tensor ``a`` is
``R(a) = a * g(a)``, where ``g`` is the gradient of the explained logit under a modified backward
pass. Plain gradient x input already is LRP for linear maps (the ε-rule with ε = 0, biases
absorbing their share), for sums (the residual connections: ``R(a) + R(b) = R(a + b)``) and, by
the paper's Proposition 3.1, for the softmax (its linearisation at the input:
``R_i = x_i (R_i^out - s_i Σ_j R_j^out)``). The other operations get a modified backward:

* **linear layers and convolutions** (ε-rule): ``g_in = Wᵀ (g_out · z / (z + ε sign z))``, the
  bias keeping its share;
* **layer normalisation** (``F.layer_norm``, ``F.rms_norm``; identity rule on the division): the
  standard deviation is a constant of the backward pass (detached), so the centring and the affine
  part are linear; the affine part gets the ε-rule like a linear layer;
* **element-wise nonlinearities** (GELU, SiLU, ReLU, sigmoid, tanh, ...; identity rule):
  ``g_in = g_out · f(x) / x``, i.e. ``R(x) = R(f(x))``;
* **products of two activations** (``q kᵀ``, ``attn @ v``, gates ``a * b``; uniform rule): each
  operand gets half the gradient, so half the relevance;
* **fused attention** (``F.scaled_dot_product_attention``, ``F.multi_head_attention_forward`` of
  ``nn.MultiheadAttention``): computed explicitly, with the rules above on its products.

With ``softmax="constant"`` the attention probabilities are constants of the backward pass (no
relevance reaches queries and keys; CP-LRP, Ali et al. 2022, the variant lxt uses inside
torchvision's ViT); the values then get all the relevance of ``attn @ v``.

:class:`AttnLRPRules` is a ``TorchFunctionMode``: inside ``with AttnLRPRules(...)`` the torch calls
of any model (timm, torchvision, Hugging Face) run with these rules; parameters must not require
grad (frozen), so that a product with a weight is not taken for a product of two activations.
:func:`graph_problems` lists what the resulting autograd graph still contains that has no rule.

    with AttnLRPRules(epsilon=1e-6):
        logits = model(x.requires_grad_())
    (g,) = torch.autograd.grad(logits[:, t].sum(), x)
    relevance = x * g
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from xailab.core.errors import UnsupportedModelError
from xailab.methods.attention.record import grouped_kv, masked_scores, mha_arguments

Softmax = Literal["linearize", "constant"]

#: element-wise nonlinearities: the identity rule
ELEMENTWISE = {
    F.relu, torch.relu, Tensor.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    torch.sigmoid, Tensor.sigmoid, F.sigmoid, torch.tanh, Tensor.tanh, F.tanh, F.softplus, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.prelu, F.relu_, torch.relu_, Tensor.relu_, F.leaky_relu_, F.elu_,
}
_INPLACE_TO_PLAIN = {F.relu_: F.relu, torch.relu_: F.relu, Tensor.relu_: F.relu, F.leaky_relu_: F.leaky_relu,
                     F.elu_: F.elu}
_CONV = {F.conv1d, F.conv2d, F.conv3d}
_MATMUL = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm, torch.mm, Tensor.mm}
_MUL = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__}
_SOFTMAX = {F.softmax, torch.softmax, Tensor.softmax}


class EpsilonRule(torch.autograd.Function):
    """Identity forward on a layer's output ``z``; backward ``g · z / (z + ε sign z)`` (ε > 0)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, epsilon: float) -> Tensor:
        out = z.clone()
        ctx.save_for_backward(out)
        ctx.epsilon = epsilon
        return out

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        (z,) = ctx.saved_tensors
        size = z.abs()
        return g * size / (size + ctx.epsilon), None  # z / (z + ε sign z), 0 at z = 0


class IdentityRule(torch.autograd.Function):
    """``y = f(x)`` forward; backward ``g · f(x) / x``: the relevance ``x·g_in = y·g_out`` passes on."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, fn: Any, kwargs: dict[str, Any]) -> Tensor:
        y = fn(x, **kwargs)
        ctx.save_for_backward((y / x).masked_fill_(x == 0, 0.0))  # x = 0: no relevance to pass on
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        (ratio,) = ctx.saved_tensors
        return g * ratio, None, None


class NormRule(torch.autograd.Function):
    """``(x - mean) / std`` over the last dims (``F.layer_norm`` without affine); backward with the
    standard deviation a constant (identity rule on the division): ``g_in = (g - mean(g)) / std``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, shape: tuple[int, ...], eps: float) -> Tensor:
        dims = tuple(range(-len(shape), 0))
        ctx.dims = dims
        ctx.save_for_backward(torch.rsqrt(torch.var(x, dims, correction=0, keepdim=True) + eps))
        return F.layer_norm(x, shape, None, None, eps)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, ...]:
        (rstd,) = ctx.saved_tensors
        return (g - g.mean(ctx.dims, keepdim=True)) * rstd, None, None


class UniformRule(torch.autograd.Function):
    """Identity forward on one operand of a product of two activations; backward ``g / 2``."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g * 0.5


def _active(t: Any) -> bool:
    return isinstance(t, Tensor) and t.requires_grad


def half(t: Tensor) -> Tensor:
    """``t`` whose gradient is halved (one operand of a product of two activations)."""
    return UniformRule.apply(t) if t.requires_grad else t


class AttnLRPRules(TorchFunctionMode):
    """Runs every torch call inside it with AttnLRP's rules (module docstring).

    Args:
        epsilon: ε of the ε-rule on linear layers, convolutions and the affine part of norms.
        softmax: ``"linearize"`` (AttnLRP) or ``"constant"`` (CP-LRP: no relevance through q, k).
    """

    def __init__(self, *, epsilon: float = 1e-6, softmax: Softmax = "linearize") -> None:
        super().__init__()
        self.epsilon, self.softmax = float(epsilon), softmax
        self.seen: Counter[str] = Counter()

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return self._layer(F.linear, *args, **kwargs)
        if func in _CONV:
            return self._layer(func, *args, **kwargs)
        if func is F.layer_norm:
            return self.layer_norm(*args, **kwargs)
        if func is F.rms_norm:
            return self.rms_norm(*args, **kwargs)
        if func in ELEMENTWISE and args and _active(args[0]):
            self.seen["elementwise"] += 1
            fn = _INPLACE_TO_PLAIN.get(func, func)
            rest = {k: v for k, v in kwargs.items() if k != "inplace"}
            if len(args) > 1:  # positional extras: F.leaky_relu(x, 0.1), F.prelu(x, weight)
                return IdentityRule.apply(args[0], lambda t, **kw: fn(t, *args[1:], **kw), rest)
            return IdentityRule.apply(args[0], fn, rest)
        if func in _MATMUL or func in _MUL:
            if len(args) >= 2 and _active(args[0]) and _active(args[1]):
                self.seen["product"] += 1
                return func(half(args[0]), half(args[1]), *args[2:], **kwargs)
            return func(*args, **kwargs)
        if func in _SOFTMAX and self.softmax == "constant":
            return func(*args, **kwargs).detach()
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)[0]
        if func is F.multi_head_attention_forward:
            return self.multi_head_attention(*args, **kwargs)
        return func(*args, **kwargs)

    # -- the rules, callable directly (the mode is off inside __torch_function__) ------------------
    def _layer(self, fn: Any, x: Tensor, weight: Tensor, bias: Tensor | None = None,
               *args: Any, **kwargs: Any) -> Tensor:
        z = fn(x, weight, bias, *args, **kwargs)
        if not _active(x):
            return z
        self.seen["linear"] += 1
        return EpsilonRule.apply(z, self.epsilon) if self.epsilon > 0 else z  # ε = 0: the plain gradient

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return self._layer(F.linear, x, weight, bias)

    def affine(self, y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """``y * weight + bias`` of a norm, with the ε-rule (weight and bias over the last dims)."""
        z = y * weight if weight is not None else y
        z = z + bias if bias is not None else z
        if (weight is None and bias is None) or self.epsilon == 0:
            return z
        return EpsilonRule.apply(z, self.epsilon)

    def layer_norm(self, x: Tensor, normalized_shape: Any, weight: Tensor | None = None,
                   bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
        if not _active(x):
            return F.layer_norm(x, normalized_shape, weight, bias, eps)
        self.seen["norm"] += 1
        return self.affine(NormRule.apply(x, tuple(normalized_shape), eps), weight, bias)

    def rms_norm(self, x: Tensor, normalized_shape: Any, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
        if not _active(x):
            return F.rms_norm(x, normalized_shape, weight, eps)
        self.seen["norm"] += 1
        dims = tuple(range(-len(tuple(normalized_shape)), 0))
        eps = torch.finfo(x.dtype).eps if eps is None else eps
        rms = (x.pow(2).mean(dims, keepdim=True) + eps).sqrt().detach()
        return self.affine(x / rms, weight, None)

    def attention(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                  is_causal: bool = False, scale: float | None = None,
                  enable_gqa: bool = False) -> tuple[Tensor, Tensor]:
        """``F.scaled_dot_product_attention``, explicitly: ``(softmax(q kᵀ · scale + mask) @ v, probabilities)``."""
        if dropout_p > 0:
            raise UnsupportedModelError("attnlrp: attention dropout is active (the model is training); "
                                        "explain in eval mode (eval_mode=True)")
        self.seen["attention"] += 1
        k, v = grouped_kv(q, k, v, enable_gqa)
        if self.softmax == "constant":
            q, k = q.detach(), k.detach()
        s = self.product(q * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])), k.transpose(-2, -1))
        a = torch.softmax(masked_scores(s, is_causal, attn_mask), dim=-1)
        if self.softmax == "constant":
            a = a.detach()
        return self.product(a, v), a

    def product(self, a: Tensor, b: Tensor) -> Tensor:
        """``a @ b`` with the uniform rule when both depend on the input."""
        if _active(a) and _active(b):
            self.seen["product"] += 1
            return half(a) @ half(b)
        return a @ b

    def multi_head_attention(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        """``F.multi_head_attention_forward`` of ``nn.MultiheadAttention`` (packed projections, no masks)."""
        a = mha_arguments(args, kwargs, "attnlrp reads")
        if a.get("training", False) and float(a["dropout_p"]) > 0:
            raise UnsupportedModelError("attnlrp: attention dropout is active (the model is training); "
                                        "explain in eval mode (eval_mode=True)")
        query, key, value = a["query"], a["key"], a["value"]
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        t, n, e = query.shape
        heads = int(a["num_heads"])
        w = a["in_proj_weight"].chunk(3)
        b = a["in_proj_bias"].chunk(3) if a["in_proj_bias"] is not None else (None,) * 3

        def split(x: Tensor, i: int) -> Tensor:  # [T, N, E] -> [N, heads, T, E / heads]
            return self.linear(x, w[i], b[i]).reshape(x.shape[0], n, heads, e // heads).permute(1, 2, 0, 3)

        out, probs = self.attention(split(query, 0), split(key, 1), split(value, 2))
        out = self.linear(out.permute(2, 0, 1, 3).reshape(t, n, e), a["out_proj_weight"], a["out_proj_bias"])
        weights = None
        if a.get("need_weights", True):  # returned as computed, but not explained (detached)
            weights = (probs.mean(dim=1) if a.get("average_attn_weights", True) else probs).detach()
            weights = weights.squeeze(0) if unbatched else weights
        return (out.squeeze(1) if unbatched else out), weights
