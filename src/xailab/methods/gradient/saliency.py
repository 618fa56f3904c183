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
from xailab.methods.gradient.base import GradientExplainer, gradient_card


@register("saliency", family="gradient", aliases=("gradient", "vanilla_gradient"))
class Saliency(GradientExplainer):
    """Gradient of the target score with respect to the input.

    Args:
        absolute: return ``|gradient|`` (the classic saliency map, default) or the signed gradient.
    """

    card = gradient_card(
        "Saliency (vanilla gradient)",
        summary="The gradient of the class score with respect to each input pixel: how much a "
                "tiny change of that pixel would change the score: |∂S_c/∂x| per colour channel "
                "(signed with absolute=False), summed over the channels for display.",
        paper="Simonyan, Vedaldi, Zisserman (2014), \"Deep Inside Convolutional Networks: "
              "Visualising Image Classification Models and Saliency Maps\", ICLR workshop "
              "(arXiv:1312.6034).",
        where="ICLR 2014 workshop; any differentiable classifier.",
        cost="One forward and one backward pass per image and target.",
        limits=(
            "Noisy and speckled: the gradient of a ReLU network jumps between neighbouring "
            "pixels.",
            "Saturation: a feature that already drives the score to its plateau gets a gradient "
            "near zero.",
            "Local: says what would change the score, not what produced it; fails the "
            "completeness axiom.",
        ),
    )

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

    card = gradient_card(
        "Input × Gradient",
        summary="The input multiplied element-wise by the gradient of the class score: a "
                "first-order Taylor estimate of each pixel's contribution, x ⊙ ∂S_c/∂x.",
        paper="Shrikumar, Greenside, Shcherbina, Kundaje (2016), \"Not Just a Black Box: Learning "
              "Important Features Through Propagating Activation Differences\" (arXiv:1605.01713).",
        where="arXiv 2016; any differentiable classifier.",
        cost="One forward and one backward pass per image and target.",
        limits=(
            "Inherits the gradient's noise and saturation.",
            "Zero wherever the input is zero: dark (or mean-valued, after normalisation) pixels "
            "get no attribution whatever their role.",
        ),
    )

    one_pass = True

    def _points(self, xs: Tensor, state: Any, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        return xs, xs
