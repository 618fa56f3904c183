"""Attention-based maps for vision transformers: attention rollout and gradient-weighted attention.

Both read the attention probabilities ``A_l [heads, T, T]`` of every block (recorded by
:class:`~.record.AttentionRecorder`, the model unchanged) and propagate a token-to-token
relevance matrix ``R`` (``T x T``, starting at the identity) from the first block to the last.
The map is the class token's row of ``R`` over the patch tokens (the mean row over the patch
tokens for a model without prefix tokens), on the patch grid found from the patch embedding
(:mod:`xailab.core.tokens`), upsampled bilinearly to the image. Maps are raw.

* **Attention rollout** (Abnar & Zuidema 2020, arXiv:2005.00928): ``Â_l = norm_rows(0.5 *
  fuse_heads(A_l) + 0.5 * I)`` (the residual connection), ``R = Â_l R``. Class-agnostic: every
  target of an image gets the same map.
* **Gradient-weighted attention** (Chefer, Gur & Wolf 2021, "Generic Attention-model
  Explainability", arXiv:2103.15679): ``Ā_l = mean_heads((∇_{A_l} S_t ⊙ A_l)^+)``,
  ``R = R + Ā_l R``. Class-specific: one backward pass per (image, target) row.

Models without softmax attention (CNNs) are refused with
:class:`~xailab.core.errors.UnsupportedModelError`.

    res = create("attention_rollout", vit).explain(images)
    res.extras["tokens"].shape      # [N, T, h, w]: the maps on the patch grid
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xailab.core.card import HOW, MethodCard
from xailab.core.errors import InputError, UnsupportedModelError
from xailab.core.explainer import Explainer
from xailab.core.registry import register
from xailab.core.rows import RowTargets
from xailab.core.tokens import TokenGrid, find_token_grid
from xailab.methods.attention.record import AttentionRecorder
from xailab.methods.cam.base import upsample

WHAT = ("The attention between tokens inside a vision transformer, propagated from the patch "
        "tokens to the class token through every block.")
LIMITS = (
    "Transformers only (softmax attention over patch tokens); CNNs are refused.",
    "Attention says where information flows, not how it is used by the MLPs and the head; "
    "coarse, at the patch grid's resolution.",
)


def attention_card(title: str, summary: str, paper: str, cost: str, limits: tuple[str, ...] = ()) -> MethodCard:
    return MethodCard(title=title, family="attention", summary=summary, paper=paper, limits=LIMITS + limits,
                      cost=cost, what=WHAT, where="Vision transformers (ViT, DeiT, timm and Hugging Face).",
                      how=HOW + " A patch-grid map, upsampled to the image.")


class AttentionExplainer(Explainer):
    """Shared machinery: record the attentions, propagate ``R``, read the class token's row."""

    family: ClassVar[str] = "attention"

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.grid: TokenGrid | None = None
        self._parts: list[Tensor] = []

    one_pass: ClassVar[bool] = True  # the targets come from the method's own forward pass

    def images_per_chunk(self, n_targets: int) -> int:
        return self.batch_size  # one forward pass of the chunk's images serves every target

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._prepare_one_pass(x)

    def _prepare_one_pass(self, x: Tensor) -> None:
        self._parts = []
        self.grid = find_token_grid(self.model, x[:1])  # one dry run (the refusal waits for the logits)

    def check_model(self, example: Tensor) -> None:
        """Refuse a model without a patch embedding followed by tokens before any work."""
        super().check_model(example)
        if self.grid is None:
            raise UnsupportedModelError(f"{self.name} needs a vision transformer: this model has no patch "
                                        "embedding followed by tokens; use a CAM or a gradient method instead")

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        return self._explain_rows(x, RowTargets.known(targets))

    def _attentions(self, x: Tensor, rows: RowTargets, grad: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        """``(logits, targets [B, T], attention maps)`` of one forward pass of ``x``."""
        with torch.set_grad_enabled(grad), AttentionRecorder() as rec:
            logits = self.forward(x.detach().clone().requires_grad_(grad), grad=grad)
        if self.grid is None or not rec.maps:
            raise UnsupportedModelError(
                f"{self.name} needs a vision transformer: this model has "
                + ("no patch embedding followed by tokens" if self.grid is None else "no softmax attention")
                + "; use a CAM or a gradient method instead")
        targets = rows.images(0, logits) if rows.lazy else rows.targets
        return logits, targets, rec.maps

    def _read(self, r: Tensor, x: Tensor) -> Tensor:
        """``R [B, T, T]`` -> the patch map ``[B, h, w]``."""
        assert self.grid is not None
        p = r.shape[-1] - self.grid.h * self.grid.w
        if p < 0:
            raise UnsupportedModelError(f"{self.name}: {r.shape[-1]} tokens do not cover the "
                                        f"{self.grid.h}x{self.grid.w} patch grid")
        rows = r[:, 0, p:] if p else r[:, :, :].mean(1)
        return rows.reshape(len(r), self.grid.h, self.grid.w)

    def _finish(self, maps: Tensor, x: Tensor) -> Tensor:
        self._parts.append(maps.detach().cpu())
        return upsample(maps, x.shape[-2:]).to(x.dtype)

    def _extras(self) -> dict[str, Tensor]:
        return {"tokens": torch.cat(self._parts)} if self._parts else {}


@register("attention_rollout", family="attention", aliases=("rollout",))
class AttentionRollout(AttentionExplainer):
    """Attention rollout (Abnar & Zuidema 2020).

    Args:
        head_fusion: how the heads of a block are combined: ``mean`` (default), ``max`` or ``min``.
    """

    card = attention_card(
        "Attention rollout",
        summary="The product over blocks of each block's head-averaged attention plus the identity "
                "(the residual path), rows normalised: how much each patch token flows into the "
                "class token. The same map for every class.",
        paper="Abnar, Zuidema (2020), \"Quantifying Attention Flow in Transformers\", ACL "
              "(arXiv:2005.00928).",
        cost="One forward pass per image (no gradient); every target shares it.",
        limits=("Class-agnostic: it cannot say which class a region supports.",),
    )

    def __init__(self, model: nn.Module, *, head_fusion: Literal["mean", "max", "min"] = "mean", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if head_fusion not in ("mean", "max", "min"):
            raise InputError(f"head_fusion must be 'mean', 'max' or 'min', not {head_fusion!r}")
        self.head_fusion = head_fusion

    def params(self) -> dict[str, Any]:
        return {**super().params(), "head_fusion": self.head_fusion}

    def _explain_rows(self, x: Tensor, rows: RowTargets) -> Tensor:
        _, targets, maps = self._attentions(x, rows, grad=False)
        r = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype, device=x.device).expand(len(x), -1, -1)
        for a in maps:
            fused = getattr(a, self.head_fusion)(dim=1)
            fused = fused if isinstance(fused, Tensor) else fused.values
            step = 0.5 * fused + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            r = (step / step.sum(-1, keepdim=True)) @ r
        patch = self._read(r, x)[:, None].expand(-1, targets.shape[1], -1, -1)
        return self._finish(patch, x)


@register("attention_gradient", family="attention", aliases=("chefer", "gradient_attention"))
class GradientWeightedAttention(AttentionExplainer):
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021)."""

    card = attention_card(
        "Gradient-weighted attention (Chefer et al.)",
        summary="Each block's attention weighted by its gradient for the class, positive part "
                "averaged over heads, accumulated over blocks as R = R + Ā R; the class token's row "
                "over the patches.",
        paper="Chefer, Gur, Wolf (2021), \"Generic Attention-model Explainability for Interpreting "
              "Bi-Modal and Encoder-Decoder Transformers\", ICCV (arXiv:2103.15679).",
        cost="One forward pass per image and one backward pass per image and target.",
    )

    def _explain_rows(self, x: Tensor, rows: RowTargets) -> Tensor:
        logits, targets, maps = self._attentions(x, rows, grad=True)
        out = []
        n = targets.shape[1]
        for j in range(n):  # one forward pass, a backward pass per target column
            grads = torch.autograd.grad(self.score(logits, targets[:, j]).sum(), maps, retain_graph=j < n - 1)
            r = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype, device=x.device).expand(len(x), -1, -1)
            for a, g in zip(maps, grads, strict=True):
                r = r + (g * a).clamp(min=0).mean(dim=1).detach() @ r
            out.append(self._read(r, x))
        return self._finish(torch.stack(out, dim=1), x)


__all__ = ["AttentionRollout", "GradientWeightedAttention", "attention_card"]
