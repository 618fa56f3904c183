"""HiResCAM: every activation weighted by its own gradient, summed over the channels.

Draelos & Carin (2020), "Use HiResCAM instead of Grad-CAM for faithful explanations of
convolutional neural networks" (arXiv:2011.08891). With ``A [K, h, w]`` the layer's output and
``G = dS_c / dA`` the gradient of the explained score at it:

    HiResCAM_c = ReLU( sum_k G_k ⊙ A_k )

Grad-CAM averages ``G_k`` over the positions before multiplying; HiResCAM keeps the element-wise
product, so when the layers after ``A`` are a linear map (a flatten and a dense layer, as in
many CNN heads) ``sum_k G_k ⊙ A_k`` at a position is exactly that position's contribution to the
score, and its sum over positions is the score minus the bias. On a layer followed directly by
global average pooling and a dense layer (ResNet's last block) ``G_k`` is the same at every
position, so HiResCAM equals Grad-CAM there. Unlike LayerCAM it keeps negative
gradients, so evidence against the class cancels evidence for it before the ReLU. The weights are
per location, so the Explanation has no ``extras["weights"]``; ``extras["cam"]`` holds the map
at the layer's resolution. The numbers agree with pytorch-grad-cam's ``HiResCAM``.

    maps = create("hirescam", model, layer="layer4").explain(images).maps   # [N, 1, H, W]
"""

from __future__ import annotations

from torch import Tensor

from xailab.core.registry import register
from xailab.methods.cam.base import CAM, cam_card


@register("hirescam", family="cam", aliases=("hires_cam",))
class HiResCAM(CAM):
    """HiResCAM: every activation weighted by its own (signed) gradient."""

    card = cam_card(
        "HiResCAM",
        summary="Every activation weighted by its own gradient, summed over the channels and "
                "ReLU'd: ReLU(Σ_k ∂S_c/∂A^k ⊙ A^k). With a linear head after the layer, the "
                "unrectified map sums to the score minus the bias; right before global average "
                "pooling it equals Grad-CAM.",
        paper="Draelos, Carin (2020), \"Use HiResCAM instead of Grad-CAM for faithful explanations "
              "of convolutional neural networks\" (arXiv:2011.08891).",
        where="arXiv 2020; CNNs, exact for a layer followed by a linear head.",
        limits=(
            "Its faithfulness guarantee holds only when the layers after the chosen one are linear; "
            "after further convolutions and ReLUs the map is a first-order approximation.",
            "Noisier than Grad-CAM: no averaging over positions smooths the gradient.",
        ),
    )

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        assert grads is not None, "gradient CAMs are always given the gradients"
        return grads  # per location: the map is ReLU(sum_k G_k * A_k)
