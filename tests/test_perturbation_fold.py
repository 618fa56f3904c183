"""The BatchNorm-folded copy the perturbation methods run their copies through.

Same function as the model (float64, 1e-12), the user's model untouched, no fold where it would
be wrong (a module called twice, training mode) or impossible (untraceable), and the methods'
maps equal with and without it.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import xailab
from xailab.methods.perturbation.fold import folded_copy

from .conftest import TinyBNCNN, _randomise_bn


@pytest.fixture
def bn64() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval().double()


def test_folded_copy_is_the_same_function_and_leaves_the_model_alone(bn64: nn.Module, images: torch.Tensor) -> None:
    x = images.double()
    before = copy.deepcopy(bn64.state_dict())
    fast = folded_copy(bn64)
    assert fast is not None
    assert isinstance(fast, torch.fx.GraphModule)
    called = [fast.get_submodule(str(n.target)) for n in fast.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in called)  # both BatchNorms folded
    with torch.no_grad():
        assert torch.allclose(fast(x), bn64(x), atol=1e-12)
    assert all(torch.equal(v, bn64.state_dict()[k]) for k, v in before.items())
    assert isinstance(bn64.bn1, nn.BatchNorm2d) and type(bn64) is TinyBNCNN


class SharedConv(nn.Module):
    """One convolution called twice, a BatchNorm after only one call: folding would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x)) + self.conv(x)
        return self.fc(y.mean((2, 3)))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 3, 3), nn.BatchNorm2d(3), nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > 0:
            y = -y
        return self.fc(y.mean((2, 3)))


class Residual(nn.Module):
    """``relu(conv(x)) + conv(x)``: the ReLU's input is read twice, so it must not run in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Linear(3, 2)
        self.head_relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.head_relu(self.fc((self.relu(y) + y).mean((2, 3))))


def test_relu_in_place_only_where_nothing_else_reads_its_input(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = Residual().eval().double()
    fast = folded_copy(model)
    assert fast is not None and isinstance(fast, torch.fx.GraphModule)
    assert not fast.get_submodule("relu").inplace and fast.get_submodule("head_relu").inplace
    assert not model.head_relu.inplace  # the user's model is untouched
    with torch.no_grad():
        assert torch.allclose(fast(images.double()), model(images.double()), atol=1e-12)


def test_no_fold_where_it_would_be_wrong_or_impossible(bn64: nn.Module) -> None:
    torch.manual_seed(0)
    assert folded_copy(_randomise_bn(SharedConv(), 2).eval()) is None
    assert folded_copy(Branchy().eval()) is None
    assert folded_copy(copy.deepcopy(bn64).train()) is None
    assert folded_copy(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()) is None  # nothing to fold


def test_a_model_with_hooks_is_not_copied_and_the_hooks_still_act(bn64: nn.Module, images: torch.Tensor) -> None:
    """A user's hook on a BatchNorm (here doubling its output) would vanish from a folded copy."""
    hooked = copy.deepcopy(bn64)
    bn = next(m for m in hooked.modules() if isinstance(m, nn.BatchNorm2d))
    handle = bn.register_forward_hook(lambda _m, _i, out: 2 * out)
    assert folded_copy(hooked) is None
    x = images[:2].double()
    on = xailab.create("occlusion", hooked, batch_size=16).explain(x, target=[0, 1])
    off = xailab.create("occlusion", hooked, batch_size=16, fold_batchnorm=False).explain(x, target=[0, 1])
    plain = xailab.create("occlusion", bn64, batch_size=16, fold_batchnorm=False).explain(x, target=[0, 1])
    assert torch.allclose(on.maps, off.maps, atol=1e-12) and not torch.allclose(on.maps, plain.maps, atol=1e-6)
    handle.remove()


@pytest.mark.parametrize(("name", "kw"), [("kernel_shap", {"num_samples": 60}), ("lime", {"num_samples": 60}),
                                          ("occlusion", {}), ("rise", {"n_masks": 40})])
def test_maps_equal_with_and_without_folding(name: str, kw: dict[str, int], bn64: nn.Module,
                                             images: torch.Tensor) -> None:
    x = images[:3].double()
    on = xailab.create(name, bn64, batch_size=16, **kw).explain(x, target=[0, 1])
    off = xailab.create(name, bn64, batch_size=16, fold_batchnorm=False, **kw).explain(x, target=[0, 1])
    assert torch.allclose(on.maps, off.maps, atol=1e-9)
    assert on.evaluations == off.evaluations
    assert on.params["fold_batchnorm"] and not off.params["fold_batchnorm"]


class ViewAfterConv(nn.Module):
    """``x.view(x.shape[0], -1)`` after a convolution: raises on a channels-last batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.view(x.shape[0], -1))


@pytest.mark.parametrize("model_name", ["bn64", "view"])
def test_the_folded_copy_gets_channels_last_batches_on_the_cpu_or_nchw_when_it_cannot(
        model_name: str, bn64: nn.Module, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = bn64 if model_name == "bn64" else _randomise_bn(ViewAfterConv(), 1).eval().double()
    x = torch.nn.functional.interpolate(images[:2].double(), size=8) if model_name == "view" else images[:2].double()
    seen: list[bool] = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    explainer = xailab.create("occlusion", model, batch_size=7)
    explainer_prepare = explainer._prepare

    def spy(x_: torch.Tensor, logits: torch.Tensor) -> None:
        explainer_prepare(x_, logits)
        assert explainer._fast is not None
        fast_conv = next(m for m in explainer._fast.modules() if isinstance(m, nn.Conv2d))
        fast_conv.register_forward_pre_hook(
            lambda _m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))

    explainer._prepare = spy  # type: ignore[method-assign]
    on = explainer.explain(x, target=0)
    off = xailab.create("occlusion", model, batch_size=7, fold_batchnorm=False).explain(x, target=0)
    assert torch.allclose(on.maps, off.maps, atol=1e-9)
    assert not conv._forward_pre_hooks  # the user's model untouched
    if model_name == "bn64":
        assert seen and all(seen)
    else:  # the first channels-last batch raised in .view: NCHW from then on, same maps
        assert seen[0] and not any(seen[1:]) and len(seen) > 2
