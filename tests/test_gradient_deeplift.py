"""DeepLIFT (rescale rule): summation-to-delta, a slow line-by-line reference, model support.

The slow reference follows Shrikumar et al. (2017) layer by layer for conv-ReLU-maxpool-linear
nets (Captum's max-pool split). Models that reuse a ReLU module or apply activations in place
are explained exactly; activations applied as functions, and modules the rule does not cover,
are refused.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xailab
from xailab.core.errors import InputError, UnsupportedModelError

from .conftest import TinyBNCNN, TinyCNN, _randomise_bn


@pytest.fixture
def x64(images: torch.Tensor) -> torch.Tensor:
    return images[:4].double()


def _df(model: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, t) - model(b).gather(1, t)


@pytest.mark.parametrize("baseline", ["black", "white", "blur", "uniform", "gaussian"])
def test_summation_to_delta_is_exact(baseline: str, x64: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(TinyBNCNN(), 1).eval().double()  # conv-BN-ReLU-maxpool-conv-BN-ReLU
    res = xailab.create("deeplift", model, baseline=baseline, batch_size=3).explain(x64, target=["top1", "least"])
    assert res.extras["delta"].abs().max() < 1e-12
    assert res.evaluations == 2 * 4  # the baselines and the images (their pass also gives the targets)


class ConvReluPool(nn.Module):
    def __init__(self, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel, stride, padding)
        side = (8 + 2 * padding - kernel) // stride + 1
        self.fc = nn.Linear(4 * side * side, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def slow_deeplift(m: ConvReluPool, x: torch.Tensor, b: torch.Tensor, t: int, eps: float = 1e-10) -> torch.Tensor:
    """DeepLIFT rescale for conv-ReLU-maxpool-linear, one formula per line."""
    z, zb = m.conv(x), m.conv(b)
    r, rb = z.relu(), zb.relu()
    kw = {"kernel_size": m.pool.kernel_size, "stride": m.pool.stride, "padding": m.pool.padding,
          "return_indices": True}
    p, idx = F.max_pool2d(r, **kw)  # type: ignore[call-overload]
    pb, idxb = F.max_pool2d(rb, **kw)  # type: ignore[call-overload]
    m_p = m.fc.weight[t].reshape(p.shape[1:]).expand_as(p)  # linear: multiplier = weight
    top = torch.maximum(p, pb)

    def route(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(r).flatten(2)
        return out.scatter_add_(2, index.flatten(2), values.flatten(2)).reshape(r.shape)

    # max-pool: the difference splits into the image's maxima and the baseline's maxima
    share = route(m_p * (top - pb), idx) + route(m_p * (p - top), idxb)
    dr = r - rb
    small = dr.abs() < eps
    m_r = torch.where(small, route(m_p, idx), share / torch.where(small, 1, dr))
    dz = z - zb
    small = dz.abs() < eps
    m_z = m_r * torch.where(small, (z > 0).double(), dr / torch.where(small, 1, dz))  # ReLU: dy / dx
    xi = x.clone().requires_grad_(True)
    (m_x,) = torch.autograd.grad((m.conv(xi) * m_z.detach()).sum(), xi)  # conv: linear
    return ((x - b) * m_x).detach()


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, 2, 0), (3, 2, 1)])
def test_equals_the_slow_reference(kernel: int, stride: int, padding: int) -> None:
    model = ConvReluPool(kernel, stride, padding).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64)
    b = torch.rand(3, 3, 8, 8, generator=g, dtype=torch.float64) * 0.5
    res = xailab.create("deeplift", model, baseline=b).explain(x, target=1)
    expected = slow_deeplift(model, x, b, 1)
    torch.testing.assert_close(res.maps[:, 0], expected, rtol=1e-10, atol=1e-12)
    assert res.extras["delta"].abs().max() < 1e-12


class Shared(nn.Module):
    """Applies one ReLU module twice and one in-place ReLU, with an in-place residual add."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.r1 = nn.ReLU()
        self.r2 = self.r1 if shared else nn.ReLU()
        self.r3 = nn.ReLU(inplace=shared)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.r1(self.c1(x))
        out = self.c2(h)
        out += h  # in place, as torchvision's BasicBlock
        out = self.r3(self.r2(out) - 0.1)
        return self.fc(out.mean(dim=(2, 3)))


def test_reused_and_inplace_relus_are_exact(x64: torch.Tensor) -> None:
    shared = Shared(shared=True).double().eval()
    separate = Shared(shared=False).double().eval()
    separate.load_state_dict(shared.state_dict())
    a = xailab.create("deeplift", shared, baseline="blur").explain(x64, target=["top1", "least"])
    b = xailab.create("deeplift", separate, baseline="blur").explain(x64, target=["top1", "least"])
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-12, atol=1e-14)
    assert a.extras["delta"].abs().max() < 1e-12


def test_torchvision_resnet18_is_exact() -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(weights=None, num_classes=5), 2).eval().double()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = xailab.create("deeplift", model, baseline="blur").explain(x, target=["top1", "least"])
    assert res.extras["delta"].abs().max() < 1e-10
    assert res.maps.abs().max() > 0


class Functional(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x)
        h = {"F.relu": F.relu, "torch.relu": torch.relu, "Tensor.relu": lambda t: t.relu(),
             "torch.sigmoid": torch.sigmoid}[self.how](h)
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("how", ["F.relu", "torch.relu", "Tensor.relu", "torch.sigmoid"])
def test_functional_activations_are_rewritten_and_exact(how: str, x64: torch.Tensor) -> None:
    """Functional activations run as modules of a traced copy (core.rewrite): exact summation."""
    model = Functional(how).double().eval()
    res = xailab.create("deeplift", model).explain(x64)
    assert res.extras["delta"].abs().max() < 1e-10
    assert res.maps.abs().max() > 0


def test_uncovered_modules_and_outputs_are_refused(x64: torch.Tensor) -> None:
    class WithNorm(TinyCNN):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.GroupNorm(2, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.norm(self.features(x))).flatten(1))

    with pytest.raises(UnsupportedModelError, match="GroupNorm"):
        xailab.create("deeplift", WithNorm().double().eval()).explain(x64)
    with pytest.raises(InputError, match="output='logit'"):
        xailab.create("deeplift", TinyCNN().double().eval(), output="probability").explain(x64)


def test_a_product_of_activations_is_refused(x64: torch.Tensor) -> None:
    class Gated(TinyCNN):  # squeeze-excitation style: a product of two activations
        def __init__(self) -> None:
            super().__init__()
            self.gate = nn.Sigmoid()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features(x)
            h = h * self.gate(h.mean(dim=(2, 3), keepdim=True))
            return self.fc(self.pool(h).flatten(1))

    torch.manual_seed(0)
    with pytest.raises(UnsupportedModelError, match="element-wise product of two activations"):
        xailab.create("deeplift", Gated().double().eval()).explain(x64, target="top1")
    with pytest.raises(UnsupportedModelError, match="element-wise product"):
        xailab.create("deeplift_shap", Gated().double().eval(), background=x64).explain(x64, target="top1")


def test_deeplift_is_ig_on_a_linear_model(x64: torch.Tensor) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3)).double().eval()
    dl = xailab.create("deeplift", model, baseline="white").explain(x64, target=1).maps
    ig = xailab.create("integrated_gradients", model, baseline="white", n_steps=2).explain(x64, target=1).maps
    torch.testing.assert_close(dl, ig, rtol=1e-12, atol=1e-12)


def test_model_state_is_untouched(x64: torch.Tensor) -> None:
    model = Shared(shared=True).double().eval()
    before = copy.deepcopy(model.state_dict())
    xailab.create("deeplift", model).explain(x64)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_batchnorm_in_training_mode_is_refused(x64: torch.Tensor) -> None:
    model = _randomise_bn(TinyBNCNN(), 1).double().train()
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        xailab.create("deeplift", model, eval_mode=False).explain(x64)
    xailab.create("deeplift", model).explain(x64)  # eval_mode=True (default) is fine
    assert model.training


def test_outputs_changed_in_place_after_the_call_are_handled(x64: torch.Tensor) -> None:
    class Mutates(TinyCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features[1](self.features[0](x))
            h += 0.5  # changes the ReLU's recorded output in place
            h = self.features[3](self.features[2](h))
            return self.fc(self.pool(h).flatten(1))

    class Copies(TinyCNN):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.features[1](self.features[0](x)) + 0.5
            h = self.features[3](self.features[2](h))
            return self.fc(self.pool(h).flatten(1))

    torch.manual_seed(0)
    a, b = Mutates().double().eval(), Copies().double().eval()
    b.load_state_dict(a.state_dict())
    ra = xailab.create("deeplift", a, baseline="blur").explain(x64, target=["top1", "least"])
    rb = xailab.create("deeplift", b, baseline="blur").explain(x64, target=["top1", "least"])
    torch.testing.assert_close(ra.maps, rb.maps, rtol=1e-12, atol=1e-14)
    assert ra.extras["delta"].abs().max() < 1e-12
    assert ra.evaluations == rb.evaluations + 4  # the baselines went through again, with copies
