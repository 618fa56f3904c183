"""Record a transformer's attention probabilities during a forward pass, in the autograd graph.

Attention is computed either by ``F.scaled_dot_product_attention`` (timm, Hugging Face's
``sdpa``, PyTorch 2 models), whose probabilities never exist as a tensor, by an explicit
``softmax(q k^T / sqrt(d))`` (Hugging Face's ``eager``, timm with ``fused_attn=False``), or by
``nn.MultiheadAttention`` (torchvision's ``vit_b_16`` family), whose
``F.multi_head_attention_forward`` is recomputed here for self-attention with packed
projections (masks, ``bias_k`` / ``bias_v`` and separate projections are refused).
:class:`AttentionRecorder` is a ``TorchFunctionMode``: it computes each scaled-dot-product
attention explicitly (the same result, to float rounding) and keeps its probabilities, and keeps
the output of every softmax over the last dimension of a square ``[N, heads, T, T]`` score
tensor. The model is not modified; the maps are in the graph, so ``torch.autograd.grad(score,
recorder.maps)`` gives the gradients that gradient-weighted attention methods need.

    with AttentionRecorder() as rec:
        logits = model(x)
    len(rec.maps), rec.maps[0].shape        # (depth, [N, heads, T, T])
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from xailab.core.errors import UnsupportedModelError

_SOFTMAX = {F.softmax, torch.softmax, Tensor.softmax}


def grouped_kv(q: Tensor, k: Tensor, v: Tensor, enable_gqa: bool) -> tuple[Tensor, Tensor]:
    """``k, v`` repeated per query head group (``scaled_dot_product_attention``'s ``enable_gqa``)."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        rep = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(rep, dim=-3), v.repeat_interleave(rep, dim=-3)
    return k, v


def masked_scores(s: Tensor, is_causal: bool, attn_mask: Tensor | None) -> Tensor:
    """Attention scores ``s`` with ``scaled_dot_product_attention``'s causal mask and ``attn_mask`` applied."""
    if is_causal:
        t, u = s.shape[-2:]
        s = s.masked_fill(torch.ones(t, u, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    return s


def mha_arguments(args: tuple[Any, ...], kwargs: dict[str, Any], who: str) -> dict[str, Any]:
    """The arguments of a ``F.multi_head_attention_forward`` call, refused (``who`` says who reads
    it) unless self-attention with one packed projection and no masks (``nn.MultiheadAttention``'s default)."""
    a = _MHA.bind(*args, **kwargs).arguments
    unsupported = [k for k in _MHA_UNSUPPORTED if a.get(k) is not None]
    if a.get("use_separate_proj_weight") or a.get("add_zero_attn") or a.get("is_causal") or unsupported:
        raise UnsupportedModelError(
            f"{who} nn.MultiheadAttention only without masks, bias_k/bias_v, zero attention or "
            f"separate q/k/v projections (found: {', '.join(unsupported) or 'one of those'})")
    return dict(a)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
          is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> tuple[Tensor, Tensor]:
    """``(output, probabilities)`` of ``F.scaled_dot_product_attention``, computed explicitly."""
    k, v = grouped_kv(q, k, v, enable_gqa)
    s = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
    a = torch.softmax(masked_scores(s, is_causal, attn_mask), dim=-1)
    out = (F.dropout(a, dropout_p) if dropout_p > 0 else a) @ v
    return out, a


_MHA = inspect.signature(F.multi_head_attention_forward)
_MHA_UNSUPPORTED = ("bias_k", "bias_v", "key_padding_mask", "attn_mask", "static_k", "static_v")


def _mha(*args: Any, **kwargs: Any) -> tuple[tuple[Tensor, Tensor | None], Tensor]:
    """``(F.multi_head_attention_forward(...), probabilities [N, heads, T, S])``, recomputed
    explicitly for self-attention with one packed input projection (``nn.MultiheadAttention``'s
    default, as in torchvision's ViT)."""
    a = mha_arguments(args, kwargs, "attention methods read")
    query, key, value = a["query"], a["key"], a["value"]
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    t, n, e = query.shape
    heads = int(a["num_heads"])
    w, b = a["in_proj_weight"].chunk(3), (a["in_proj_bias"].chunk(3) if a["in_proj_bias"] is not None else (None,) * 3)

    def split(x: Tensor, i: int) -> Tensor:  # [T, N, E] -> [N, heads, T, E / heads]
        return F.linear(x, w[i], b[i]).reshape(x.shape[0], n, heads, e // heads).permute(1, 2, 0, 3)

    dropout = float(a["dropout_p"]) if a.get("training", True) else 0.0
    out, probs = _sdpa(split(query, 0), split(key, 1), split(value, 2), dropout_p=dropout)
    out = F.linear(out.permute(2, 0, 1, 3).reshape(t, n, e), a["out_proj_weight"], a["out_proj_bias"])
    weights = None
    if a.get("need_weights", True):
        weights = probs.mean(dim=1) if a.get("average_attn_weights", True) else probs
        weights = weights.squeeze(0) if unbatched else weights
    return (out.squeeze(1) if unbatched else out, weights), probs


def _is_attention(out: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    return (isinstance(out, Tensor) and out.dim() == 4 and out.shape[-1] == out.shape[-2]
            and dim in (-1, 3))


class AttentionRecorder(TorchFunctionMode):
    """Keeps every attention probability tensor ``[N, heads, T, T]`` of the forward passes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out, a = _sdpa(*args, **kwargs)
            self.maps.append(a)
            return out
        if func is F.multi_head_attention_forward:
            result, a = _mha(*args, **kwargs)
            self.maps.append(a)
            return result
        out = func(*args, **kwargs)
        if func in _SOFTMAX and _is_attention(out, args, kwargs):
            self.maps.append(out)
        return out


__all__ = ["AttentionRecorder"]
