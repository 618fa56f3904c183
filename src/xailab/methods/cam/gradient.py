"""CAMs weighted by the gradient ``G = dS_c / dA`` of the target score at the layer.

With ``A [K, h, w]`` the layer's output, ``G`` its gradient and ``Z = h * w``:

* Grad-CAM (Selvaraju et al. 2017, arXiv:1610.02391): ``w_k = (1/Z) sum_ij G_kij``.
* Grad-CAM++ (Chattopadhay et al. 2018, arXiv:1710.11063, eq. 19 with the exponential score):
  ``a_kij = G^2 / (2 G^2 + (sum_ab A_kab) G^3 + eps)`` (0 where ``G = 0``),
  ``w_k = sum_ij a_kij ReLU(G_kij)``, ``eps = 1e-6``.
* XGrad-CAM (Fu et al. 2020, arXiv:2008.02312): ``w_k = sum_ij G_kij A_kij / (sum_ab A_kab + eps)``,
  ``eps = 1e-7``.
* LayerCAM (Jiang et al. 2021, IEEE TIP 30): per-location weights ``w_kij = ReLU(G_kij)``.

Each map is ``ReLU(sum_k w_k A_k)`` upsampled (see :mod:`xailab.methods.cam.base`); the
constants are pytorch-grad-cam's, so the numbers agree with it.

    maps = create("gradcam_pp", model, layer="layer4").explain(images).maps   # [N, 1, H, W]
"""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.core.registry import register
from xailab.methods.cam.base import CAM, cam_card, spatial_sum


def _grads(grads: Tensor | None) -> Tensor:
    assert grads is not None, "gradient CAMs are always given the gradients"
    return grads


@register("gradcam", family="cam", aliases=("grad_cam",))
class GradCAM(CAM):
    """Grad-CAM: channels weighted by their spatially averaged gradient."""

    card = cam_card(
        "Grad-CAM",
        summary="Channels of a convolutional layer weighted by their spatially averaged gradient,"
                " summed and ReLU'd: ReLU(Σ_k α_k A^k) with α_k = mean_ij ∂S_c/∂A^k_ij.",
        paper="Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra (2017), \"Grad-CAM: Visual "
              "Explanations from Deep Networks via Gradient-based Localization\", ICCV.",
        where="ICCV 2017; CNNs (any layer with spatial feature maps).",
        limits=(
            "Averaged gradients can cancel: several instances of an object are often not all "
            "found.",
        ),
    )

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return _grads(grads).mean(dim=(-2, -1))


@register("gradcam_pp", family="cam", aliases=("gradcam++", "grad_cam_pp", "gradcampp"))
class GradCAMPlusPlus(CAM):
    """Grad-CAM++: channels weighted by positive gradients with pixel-wise coefficients."""

    card = cam_card(
        "Grad-CAM++",
        summary="Like Grad-CAM, but channel weights are sums of positive gradients with "
                "pixel-wise coefficients from second- and third-order terms (exponential score "
                "assumption), to cover several instances of a class.",
        paper="Chattopadhay, Sarkar, Howlader, Balasubramanian (2018), \"Grad-CAM++: Generalized "
              "Gradient-based Visual Explanations for Deep Convolutional Networks\", WACV.",
        where="WACV 2018; CNNs.",
        limits=(
            "Its higher-order terms assume an exponential of the score; on raw logits this is an "
            "approximation.",
        ),
    )

    eps = 1e-6

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        g = _grads(grads)
        g2 = g * g
        alpha = g2 / (2 * g2 + spatial_sum(acts) * (g2 * g) + self.eps)
        alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(g)).sum(dim=(-2, -1))


@register("xgradcam", family="cam", aliases=("xgrad_cam",))
class XGradCAM(CAM):
    """XGrad-CAM: channels weighted by the activation-weighted sum of their gradient."""

    card = cam_card(
        "XGrad-CAM",
        summary="Channel weights as the activation-weighted sum of the gradients, chosen to "
                "satisfy sensitivity and conservation axioms approximately.",
        paper="Fu, Hu, Dong, Guo, Gao, Wang (2020), \"Axiom-based Grad-CAM: Towards Accurate "
              "Visualization and Explanation of CNNs\", BMVC.",
        where="BMVC 2020; CNNs.",
    )

    eps = 1e-7

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return (_grads(grads) * acts / (spatial_sum(acts) + self.eps)).sum(dim=(-2, -1))


@register("layercam", family="cam", aliases=("layer_cam",))
class LayerCAM(CAM):
    """LayerCAM: every activation weighted by its own positive gradient."""

    card = cam_card(
        "LayerCAM",
        summary="Every activation weighted by its own positive gradient, ReLU(Σ_k "
                "ReLU(∂S_c/∂A^k_ij) A^k_ij): usable on earlier layers for finer maps.",
        paper="Jiang, Zhang, Hou, Cheng, Wei (2021), \"LayerCAM: Exploring Hierarchical Class "
              "Activation Maps for Localization\", IEEE TIP.",
        where="IEEE Transactions on Image Processing 2021; CNNs.",
        limits=(
            "Maps from early layers are sharper but noisier and more edge-like.",
        ),
    )

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        return torch.relu(_grads(grads))
