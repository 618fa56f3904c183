"""The contract every registered method keeps, checked for each one as soon as it is registered."""

from __future__ import annotations

import pytest
import torch

import xailab
from xailab.core.errors import ModelError, TargetError
from xailab.core.hooks import count_hooks
from xailab.core.registry import METHODS

from .conftest import TinyBNCNN, _randomise_bn

METHOD_NAMES = xailab.available()


def make(name: str, model: torch.nn.Module, **kw: object) -> xailab.Explainer:
    cls = METHODS.get(name)
    return xailab.create(name, model, **{**cls.quick_params, **kw})


def test_registry_is_not_empty() -> None:
    assert "saliency" in METHOD_NAMES


def tiny_transformer() -> torch.nn.Module:
    """A 16x16-input ViT (timm), for the methods that explain transformers only."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=16,
                             num_heads=2, num_classes=5)


@pytest.fixture
def model(request: pytest.FixtureRequest) -> torch.nn.Module:
    torch.manual_seed(0)
    name = getattr(request.node, "callspec", None) and request.node.callspec.params.get("name")
    if name and getattr(METHODS.get(name), "family", "") == "attention":
        m = tiny_transformer()
    else:
        m = _randomise_bn(TinyBNCNN(), 1)
    m.train()  # the explainer must switch to eval and back
    return m


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_contract(name: str, model: torch.nn.Module, images: torch.Tensor) -> None:
    x = images[:3]
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    before_flags = {n: m.training for n, m in model.named_modules()}
    before_hooks = count_hooks(model)

    res = make(name, model).explain(x, target=["top1", "least"])

    n, t = 3, 2
    assert res.targets.shape == (n, t)
    assert res.maps.shape[:2] == (n, t)
    assert res.maps.shape[-2:] == x.shape[-2:]
    assert res.maps.dim() in (4, 5)
    assert res.maps.dtype == x.dtype
    assert torch.isfinite(res.maps).all()
    assert res.method == name
    assert res.seconds > 0 and res.evaluations >= n
    # the model is left as it was found
    assert count_hooks(model) == before_hooks
    assert {n: m.training for n, m in model.named_modules()} == before_flags
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_batch_size_parity_and_seed(name: str, model: torch.nn.Module, images: torch.Tensor) -> None:
    model.eval()
    x = images[:4].double()
    model.double()
    big = make(name, model, batch_size=4096, seed=3).explain(x, target=["top1", "top2"])
    small = make(name, model, batch_size=1, seed=3).explain(x, target=["top1", "top2"])
    again = make(name, model, batch_size=4096, seed=3).explain(x, target=["top1", "top2"])
    torch.testing.assert_close(small.maps, big.maps, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(again.maps, big.maps, rtol=0, atol=0)


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_no_hook_left_after_error(name: str, images: torch.Tensor) -> None:
    class Exploding(torch.nn.Module):
        calls = 0

        def __init__(self) -> None:
            super().__init__()
            attention = getattr(METHODS.get(name), "family", "") == "attention"
            self.inner = tiny_transformer() if attention else TinyBNCNN()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Exploding.calls += 1
            # the first call works unless it builds a graph: one-pass methods have no scoring pass
            if Exploding.calls > 1 or (torch.is_grad_enabled() and x.requires_grad):
                raise RuntimeError("boom")
            out: torch.Tensor = self.inner(x)
            return out

    model = Exploding().eval()
    with pytest.raises(RuntimeError, match="boom"):
        make(name, model).explain(images[:2], target="top1")
    assert count_hooks(model) == 0


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_bad_targets_and_logits(name: str, model: torch.nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(TargetError, match="out of range"):
        make(name, model).explain(images[:2], target=99)

    class NaNModel(TinyBNCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x) * float("nan")

    with pytest.raises(ModelError, match="NaN"):
        make(name, NaNModel().eval()).explain(images[:2])
