"""Agreement with pytorch-grad-cam (grad-cam 1.5.7) on the same model, layer, inputs and classes.

Two comparisons per method:

* raw: our layer-resolution map ``extras["cam"]`` against pytorch-grad-cam's un-normalised
  internal map (the return value of its ``get_cam_image``, captured by wrapping that method on
  the CAM object) after the ReLU its base class applies;
* final: pytorch-grad-cam's public output (min-max normalised at the layer, resized with
  ``cv2.resize``, min-max normalised again) against our upsampled raw map after the same
  min-max normalisation, i.e. its normalisation applied to ours.

pytorch-grad-cam computes in float32 NumPy, so the tolerances are float32's; Ablation-CAM's
relative score drops lose digits to cancellation, hence its wider tolerance.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import xailab

from .conftest import TinyBNCNN, _randomise_bn

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

pytestmark = pytest.mark.reference

PAIRS = {
    "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "ablation_cam": "AblationCAM",
    "score_cam": "ScoreCAM",
}


def reference(name: str, model: nn.Module, layer: nn.Module, x: Tensor, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(raw layer-resolution map after ReLU, public normalised output) of pytorch-grad-cam."""
    raw: list[np.ndarray] = []
    with getattr(pgc, PAIRS[name])(model, [layer]) as cam:
        if hasattr(cam, "batch_size"):
            cam.batch_size = 16
        inner = cam.get_cam_image

        def capture(*args: Any, **kwargs: Any) -> np.ndarray:
            out = inner(*args, **kwargs)
            raw.append(out)
            return out

        cam.get_cam_image = capture
        final = cam(x, [ClassifierOutputTarget(c) for c in classes])
    return np.maximum(raw[0], 0), final


def minmax(maps: Tensor) -> np.ndarray:
    m = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return (m / (m.amax(dim=(-2, -1), keepdim=True) + 1e-7)).numpy()


def tiny() -> tuple[nn.Module, nn.Module, Tensor]:
    torch.manual_seed(0)
    m = _randomise_bn(TinyBNCNN(), 1).eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    return m, m.relu2, x


def resnet() -> tuple[nn.Module, nn.Module, Tensor]:
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    return m, m.layer2, x  # 128 channels of 4 x 4 keep Score- and Ablation-CAM's passes few


@pytest.mark.parametrize("case", [tiny, resnet])
@pytest.mark.parametrize("name", list(PAIRS))
def test_agrees_with_pytorch_grad_cam(name: str, case: Any) -> None:
    model, layer, x = case()
    if name in ("ablation_cam", "score_cam") and case is resnet:
        x = x[:1, :, :16, :16]  # 129 forward passes per implementation: one small image
    classes = [1, 3, 0][: len(x)]
    ours = xailab.create(name, model, layer=layer, batch_size=16).explain(x, target=torch.tensor(classes))
    raw, final = reference(name, model, layer, x, classes)
    mine = ours.extras["cam"][:, 0].numpy()
    scale = float(np.abs(raw).max())
    tol = 2e-3 if name == "ablation_cam" else 1e-4
    np.testing.assert_allclose(mine, raw, rtol=tol, atol=tol * scale)
    np.testing.assert_allclose(minmax(ours.maps[:, 0]), final, atol=10 * tol)
