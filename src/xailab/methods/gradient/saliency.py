"""Saliency (vanilla gradient) and input x gradient.

Saliency (Simonyan et al. 2014, arXiv:1312.6034): ``|d S_t / d x|`` (or signed), per channel.
Input x gradient (Shrikumar et al. 2016, arXiv:1605.01713): ``x * d S_t / d x``.

    result = create("saliency", model).explain(images, target="top1")
    result.maps.shape  # [N, 1, C, H, W]; result.pixel_maps() sums the channels
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from xailab.core.explainer import Explainer, expand_targets
from xailab.core.registry import register


@register("saliency", family="gradient", aliases=("gradient", "vanilla_gradient"))
class Saliency(Explainer):
    """Gradient of the target score with respect to the input.

    Args:
        absolute: return ``|gradient|`` (the classic saliency map, default) or the signed gradient.
    """

    per_channel = True

    def __init__(self, model: nn.Module, *, absolute: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.absolute = absolute

    def params(self) -> dict[str, Any]:
        return {**super().params(), "absolute": self.absolute}

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        b, t = targets.shape
        xs = x.repeat_interleave(t, dim=0)  # (image, target) rows
        grads, _ = self.target_gradients(xs, expand_targets(targets, 1))
        grads = grads.reshape(b, t, *x.shape[1:])
        return grads.abs() if self.absolute else grads


@register("input_x_gradient", family="gradient", aliases=("ixg", "gradient_x_input"))
class InputXGradient(Explainer):
    """Input times the gradient of the target score."""

    per_channel = True

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        b, t = targets.shape
        xs = x.repeat_interleave(t, dim=0)
        grads, _ = self.target_gradients(xs, expand_targets(targets, 1))
        return (xs * grads).reshape(b, t, *x.shape[1:])
