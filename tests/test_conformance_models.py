"""Every registered method over the models people train in 2026 (issue 13): a tiny timm ViT, a tiny
Hugging Face ViTForImageClassification, a torchvision VisionTransformer (nn.MultiheadAttention), a timm ConvNeXt, a timm EfficientNet (SiLU, squeeze-excitation)
and a CNN written with F.relu. Each method
either keeps the contract (shapes, finite maps, model left as found) or refuses with the reason
listed in REFUSED; a refusal not listed, or a listed one that does not happen, fails."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import UnsupportedModelError
from xailab.core.hooks import count_hooks
from xailab.core.registry import METHODS

from .test_rewrite import FunctionalCNN

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")


def timm_vit() -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=16,
                             num_heads=2, num_classes=5, reg_tokens=1)


def hf_vit() -> nn.Module:
    from xailab.models.external import HFLogits

    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=5)
    return HFLogits(transformers.ViTForImageClassification(cfg))


def torchvision_vit() -> nn.Module:  # the vit_b_16 family: nn.MultiheadAttention, class token
    from torchvision.models import VisionTransformer

    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every gradient would be 0
    return model


def convnext() -> nn.Module:
    return timm.create_model("convnext_atto", num_classes=5, dims=(8, 16, 24, 32), depths=(1, 1, 1, 1))


def efficientnet() -> nn.Module:  # timm's test model: SiLU, squeeze-excitation gates, BatchNorm
    return timm.create_model("test_efficientnet", num_classes=5)


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int]]] = {
    "timm_vit": (timm_vit, (3, 16, 16)),
    "hf_vit": (hf_vit, (3, 16, 16)),
    "tv_vit": (torchvision_vit, (3, 16, 16)),
    "convnext": (convnext, (3, 64, 64)),
    "efficientnet": (efficientnet, (3, 32, 32)),
    "frelu_cnn": (FunctionalCNN, (1, 16, 16)),
}
NO_DEEPLIFT = "deeplift has no rule for the nonlinear modules .*LayerNorm"
NOT_CONSERVED = "would not conserve relevance"
NOT_A_VIT = "needs a vision transformer"
SE_GATE = "element-wise product of two activations"
#: (model, method family or name) -> the reason it is refused
REFUSED = {
    ("timm_vit", "deeplift"): NO_DEEPLIFT, ("timm_vit", "deeplift_shap"): NO_DEEPLIFT,
    ("timm_vit", "propagation"): "layer normalisation.*fused softmax attention",
    ("hf_vit", "deeplift"): NO_DEEPLIFT, ("hf_vit", "deeplift_shap"): NO_DEEPLIFT,
    ("hf_vit", "propagation"): NOT_CONSERVED,
    ("tv_vit", "deeplift"): NO_DEEPLIFT, ("tv_vit", "deeplift_shap"): NO_DEEPLIFT,
    ("tv_vit", "propagation"): "layer normalisation.*fused softmax attention",
    ("convnext", "deeplift"): NO_DEEPLIFT, ("convnext", "deeplift_shap"): NO_DEEPLIFT,
    ("convnext", "propagation"): NOT_CONSERVED, ("convnext", "attention"): NOT_A_VIT,
    ("efficientnet", "deeplift"): SE_GATE, ("efficientnet", "deeplift_shap"): SE_GATE,
    ("efficientnet", "propagation"): SE_GATE, ("efficientnet", "attention"): NOT_A_VIT,
    ("frelu_cnn", "attention"): NOT_A_VIT,
}


#: methods that do not share their family's refusals (AttnLRP has rules for norms, attention and gates)
OWN_RULES = {"attnlrp"}


def refusal(model: str, method: str) -> str | None:
    if method in OWN_RULES:
        return REFUSED.get((model, method))
    return REFUSED.get((model, method)) or REFUSED.get((model, METHODS.family(method)))


@pytest.mark.parametrize("method", xailab.available())
@pytest.mark.parametrize("model_name", list(MODELS))
def test_method_on_modern_model(model_name: str, method: str) -> None:
    build, shape = MODELS[model_name]
    torch.manual_seed(0)
    model = build().train()  # the explainer must switch to eval and back
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    flags = {n: m.training for n, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = count_hooks(model)
    explainer = xailab.create(method, model, **METHODS.get(method).quick_params)
    reason = refusal(model_name, method)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if reason is not None:
            with pytest.raises(UnsupportedModelError) as e:
                explainer.explain(x, target=["top1", "least"])
            assert re.search(reason, str(e.value)), str(e.value)
            assert "\n" not in str(e.value)
        else:
            res = explainer.explain(x, target=["top1", "least"])
            assert res.maps.shape[:2] == (2, 2) and res.maps.shape[-2:] == x.shape[-2:]
            assert res.maps.dtype == x.dtype and bool(torch.isfinite(res.maps).all())
            assert float(res.maps.abs().sum()) > 0
    assert count_hooks(model) == hooks
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_deeplift_is_exact_on_an_efficientnet_without_its_gates() -> None:
    """SiLU and BatchNorm have rules: with the squeeze-excitation gates removed, DeepLIFT on the
    EfficientNet sums to f(x) - f(b) (float64); with them it is refused (REFUSED above)."""
    torch.manual_seed(0)
    model = efficientnet().double().eval()
    for m in list(model.modules()):
        if hasattr(m, "se"):
            m.se = nn.Identity()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    res = xailab.create("deeplift", model, baseline="black").explain(x, target="top1")
    with torch.no_grad():
        t = res.targets[:, 0]
        delta = model(x)[torch.arange(2), t] - model(torch.zeros_like(x))[torch.arange(2), t]
    torch.testing.assert_close(res.maps.sum(dim=(1, 2, 3, 4)).flatten(), delta, rtol=1e-9, atol=1e-9)
