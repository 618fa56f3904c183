"""CAMs on vision transformers (tokens read through the patch grid) and the default layer
chosen the same way however a CNN writes its activations (issue 16, item 17)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import xailab

from .test_cam_reference import PAIRS, minmax
from .test_rewrite import functional_pair

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def tiny_vit(**kw: Any) -> nn.Module:
    torch.manual_seed(0)
    args = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 48, "num_heads": 2, "num_classes": 10, **kw}
    return timm.create_model("vit_tiny_patch16_224", **args).eval()


def reshape_transform(t: Tensor, prefix: int = 1, h: int = 4, w: int = 4) -> Tensor:
    """pytorch-grad-cam's README recipe for ViTs."""
    res = t[:, prefix:, :].reshape(t.size(0), h, w, t.size(2))
    return res.transpose(2, 3).transpose(1, 2)


def reference(name: str, model: nn.Module, layer: nn.Module, x: Tensor, classes: list[int], prefix: int) -> tuple[np.ndarray, np.ndarray]:
    raw: list[np.ndarray] = []
    cls = getattr(pgc, PAIRS[name])
    with cls(model, [layer], reshape_transform=lambda t: reshape_transform(t, prefix)) as cam:
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


@pytest.mark.reference
#: Ablation-CAM differs by definition: grad-cam's AblationLayerVit ablates a channel in every
#: token, the class token too; ours ablates the channel of the map (the patch tokens)
@pytest.mark.parametrize("name", [n for n in PAIRS if n != "ablation_cam"])
@pytest.mark.parametrize("reg_tokens", [0, 4])
def test_vit_cams_agree_with_pytorch_grad_cam(name: str, reg_tokens: int) -> None:
    """Default layer = blocks[-1].norm1 (grad-cam's advice for ViTs); class and register tokens dropped."""
    model = tiny_vit(reg_tokens=reg_tokens)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    classes = [1, 3]
    ours = xailab.create(name, model, batch_size=16).explain(x, target=torch.tensor(classes))
    assert ours.params["layer"] == "blocks.1.norm1"
    raw, final = reference(name, model, model.blocks[-1].norm1, x, classes, 1 + reg_tokens)
    mine = ours.extras["cam"][:, 0].numpy()
    tol = 1e-4
    np.testing.assert_allclose(mine, raw, rtol=tol, atol=tol * float(np.abs(raw).max()))
    np.testing.assert_allclose(minmax(ours.maps[:, 0]), final, atol=10 * tol)


def test_hf_vit_default_layer_and_explicit_layer(tmp_path: Any) -> None:
    transformers = pytest.importorskip("transformers")
    from xailab.models import load_model

    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    torch.manual_seed(0)
    transformers.ViTForImageClassification(cfg).save_pretrained(str(tmp_path))
    with pytest.warns(UserWarning, match="preprocessor_config"):
        model = load_model(f"hf:{tmp_path}")
    x = torch.rand(2, 3, 32, 32)
    res = xailab.create("gradcam", model).explain(x)
    last = [n for n, m in model.named_modules() if n.endswith(".1.layernorm_before")]
    assert res.params["layer"] == last[0]
    assert res.extras["cam"].shape == (2, 1, 4, 4) and res.maps.shape == (2, 1, 32, 32)
    assert float(res.maps.abs().sum()) > 0
    named = xailab.create("gradcam", model, layer=last[0].replace(".1.layernorm_before", ".0.layernorm_after")).explain(x)
    assert named.extras["cam"].shape == (2, 1, 4, 4)


@pytest.mark.parametrize("conv_mlp", [True, False])
def test_convnext_default_layer_is_the_last_stages_output(conv_mlp: bool) -> None:
    """With its MLP channels-last (conv_mlp=False) the search walks through the block's reshaped
    steps to the block's output, not stopping at the depthwise conv inside it."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", num_classes=5, conv_mlp=conv_mlp).eval()
    x = torch.rand(2, 3, 64, 64)
    res = xailab.create("gradcam", model).explain(x)
    assert "conv_dw" not in res.params["layer"]
    last = xailab.create("gradcam", model, layer="stages.3").explain(x)
    torch.testing.assert_close(res.maps, last.maps)


def test_default_layer_is_after_the_activation_however_it_is_written() -> None:
    """F.relu(bn2(...)) and relu2(bn2(...)) get the same (post-ReLU) layer and the same maps."""
    f, m = functional_pair(torch.float32)
    x = torch.rand(3, 1, 16, 16)
    a = xailab.create("gradcam", f).explain(x)
    b = xailab.create("gradcam", m).explain(x)
    assert b.params["layer"] == "relu2" and a.params["layer"] == "bn2_relu"
    assert "'bn2'" in a.params["layer_note"]
    torch.testing.assert_close(a.maps, b.maps)
    assert not any(isinstance(mod, nn.ReLU) for mod in f.modules())  # the user's model unchanged
