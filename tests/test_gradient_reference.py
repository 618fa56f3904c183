"""Agreement with Captum 0.9 on the same float64 model, inputs, targets and random draws.

Random methods are compared on the same draws: Captum's draws are replaced by ours
(``SmoothGrad.noise`` and ``GradientShap.draws`` return exactly what an explain call used).
Known differences, asserted here so a change on either side shows up:

* Captum's ``riemann_trapezoid`` weights sum to ``1 - 1/n`` (ours to 1): ours x (n-1)/n = Captum's.
* Captum's DeepLift raises on a module applied twice (ResNet's ReLU), which we explain exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import xailab

from .conftest import TinyBNCNN, TinyCNN, _randomise_bn

captum_attr = pytest.importorskip("captum.attr")
pytestmark = pytest.mark.reference


@pytest.fixture(autouse=True)
def _quiet_one_thread() -> Iterator[None]:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="captum")
        yield
    torch.set_num_threads(n)


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval().double()


@pytest.fixture
def x64(images: torch.Tensor) -> torch.Tensor:
    return images[:4].double()


T = torch.tensor([0, 3, 1, 2])


def _ours(name: str, model: nn.Module, x: torch.Tensor, **kw: Any) -> torch.Tensor:
    return xailab.create(name, model, **kw).explain(x, target=T).maps[:, 0]


def test_saliency_and_input_x_gradient(model: nn.Module, x64: torch.Tensor) -> None:
    for absolute in (True, False):
        ref = captum_attr.Saliency(model).attribute(x64, target=T, abs=absolute)
        torch.testing.assert_close(_ours("saliency", model, x64, absolute=absolute), ref)
    ref = captum_attr.InputXGradient(model).attribute(x64, target=T)
    torch.testing.assert_close(_ours("input_x_gradient", model, x64), ref.detach())


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre",
                                  "riemann_trapezoid"])
def test_integrated_gradients_same_rule_and_steps(rule: str, model: nn.Module, x64: torch.Tensor) -> None:
    n = 12
    b = torch.rand(x64.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = _ours("integrated_gradients", model, x64, rule=rule, n_steps=n, baseline=b, batch_size=7)
    ref = captum_attr.IntegratedGradients(model).attribute(x64, b, target=T, n_steps=n, method=rule)
    if rule == "riemann_trapezoid":  # Captum's weights 1/(2n), 1/n, ..., 1/(2n) sum to 1 - 1/n
        ours = ours * (n - 1) / n
    # Captum computes Riemann nodes in float32 (torch.linspace(...).tolist()): ~1e-8 apart
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


def _captum_noise(monkeypatch: pytest.MonkeyPatch, noise: torch.Tensor) -> None:
    """Make Captum's NoiseTunnel add ``noise [N, K, C, H, W]`` (it draws torch.normal, image-major)."""
    flat = noise.reshape(-1, *noise.shape[2:])

    def fake_normal(mean: float, std: torch.Tensor) -> torch.Tensor:
        assert std.shape == flat.shape
        return flat.clone()

    monkeypatch.setattr(torch, "normal", fake_normal)


@pytest.mark.parametrize("variant", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_with_the_same_noise(variant: str, model: nn.Module, x64: torch.Tensor,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sg = xailab.create("smoothgrad", model, variant=variant, n_samples=5, noise_level=0.2,
                       pixel_range=(0, 1), batch_size=6)
    ours = sg.explain(x64, target=T).maps[:, 0]
    _captum_noise(monkeypatch, sg.noise(x64))
    nt = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
    ref = nt.attribute(x64, nt_type=variant, nt_samples=5, stdevs=0.2, target=T)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


def test_smoothgrad_of_integrated_gradients(model: nn.Module, x64: torch.Tensor,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    sg = xailab.create("smoothgrad", model, method="integrated_gradients", n_steps=6, rule="riemann_middle",
                       n_samples=3, noise_level=0.1, pixel_range=(0, 1))
    ours = sg.explain(x64, target=T).maps[:, 0]
    _captum_noise(monkeypatch, sg.noise(x64))
    nt = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model))
    ref = nt.attribute(x64, nt_type="smoothgrad", nt_samples=3, stdevs=0.1, target=T,
                       baselines=torch.zeros_like(x64), n_steps=6, method="riemann_middle")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-9)


def test_gradient_shap_with_the_same_draws(model: nn.Module, x64: torch.Tensor,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    background = torch.rand(7, 3, 16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    gs = xailab.create("gradient_shap", model, background=background, n_samples=6, noise_level=0.1,
                       pixel_range=(0, 1), batch_size=5)
    ours = gs.explain(x64, target=T).maps[:, 0]
    d = gs.draws(x64)
    _captum_noise(monkeypatch, d["noise"])
    monkeypatch.setattr(np.random, "choice", lambda k, n: d["index"].reshape(-1).numpy())
    monkeypatch.setattr(np.random, "uniform", lambda lo, hi, n: d["alpha"].reshape(-1).numpy())
    ref = captum_attr.GradientShap(model).attribute(x64, background, n_samples=6, stdevs=0.1, target=T)
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-12)


class ConvPool(nn.Module):
    """Max-pooling right after a convolution (Captum's max-pool rule is exact here)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv2(self.pool(self.conv(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("net", [TinyCNN, ConvPool])
def test_deeplift_where_captum_is_exact(net: type[nn.Module], x64: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = net().double().eval()
    t = T % 3
    b = torch.rand(x64.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 0.5
    res = xailab.create("deeplift", model, baseline=b).explain(x64, target=t)
    ref, delta = captum_attr.DeepLift(model).attribute(x64, b, target=t, return_convergence_delta=True)
    assert delta.abs().max() < 1e-10  # Captum is exact on these models...
    torch.testing.assert_close(res.maps[:, 0], ref.detach(), rtol=1e-9, atol=1e-12)  # ...and agrees
    torch.testing.assert_close(res.extras["delta"][:, 0], delta, rtol=0, atol=1e-10)


def test_captum_deeplift_raises_on_resnet_where_we_are_exact() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=4).eval().double()
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with pytest.raises(RuntimeError, match="used more than once"):
        captum_attr.DeepLift(model).attribute(x, torch.zeros_like(x), target=1)
    assert xailab.create("deeplift", model).explain(x, target=1).extras["delta"].abs().max() < 1e-10
