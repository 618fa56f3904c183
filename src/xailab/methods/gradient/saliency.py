"""Saliency (vanilla gradient) and input x gradient.

Saliency (Simonyan et al. 2014, arXiv:1312.6034): ``|d S_t / d x|`` (or signed), per channel.
Input x gradient (Shrikumar et al. 2016, arXiv:1605.01713): ``x * d S_t / d x``.

Both are one gradient per (image, target) on the engine of :mod:`.base`, so SmoothGrad can
wrap them (``create("smoothgrad", model, method="input_x_gradient")``). They are *one-pass*
methods: the targets and logits come from the same forward pass as the gradient (one model
evaluation per image and target, no separate scoring pass).

    result = create("saliency", model).explain(images, target="top1")
    result.maps.shape  # [N, 1, C, H, W]; result.pixel_maps() sums the channels
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from xailab.core.registry import register
from xailab.methods.gradient.base import GradientExplainer


@register("saliency", family="gradient", aliases=("gradient", "vanilla_gradient"))
class Saliency(GradientExplainer):
    """Gradient of the target score with respect to the input.

    Args:
        absolute: return ``|gradient|`` (the classic saliency map, default) or the signed gradient.
    """

    one_pass = True

    def __init__(self, model: nn.Module, *, absolute: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.absolute = absolute

    def params(self) -> dict[str, Any]:
        return {**super().params(), "absolute": self.absolute}

    def _points(self, xs: Tensor, state: Any, img: Tensor, step: Tensor) -> tuple[Tensor, float]:
        return xs, 1.0

    def _post(self, a: Tensor) -> Tensor:
        return a.abs() if self.absolute else a


@register("input_x_gradient", family="gradient", aliases=("ixg", "gradient_x_input"))
class InputXGradient(GradientExplainer):
    """Input times the gradient of the target score."""

    one_pass = True

    def _points(self, xs: Tensor, state: Any, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        return xs, xs
