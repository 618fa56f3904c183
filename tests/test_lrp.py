"""LRP on real architectures: canonizers, conservation on ResNets, refusals, the model restored."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from zennit.layer import Sum

import xailab
from xailab.core.errors import InputError, UnsupportedModelError
from xailab.core.hooks import count_hooks
from xailab.methods.propagation.canonizers import scan_forward

from .conftest import TinyBNCNN, _randomise_bn, shared_path


# -- helpers ----------------------------------------------------------------------------------------
def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything about a model that LRP's canonizers touch, to compare before and after."""
    return {
        "params": [(n, id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()],
        "param_slots": {n: list(m._parameters) for n, m in model.named_modules()},
        "buffers": [(n, b.clone()) for n, b in model.named_buffers()],
        "children": {n: list(m._modules) for n, m in model.named_modules()},
        "attrs": {n: sorted(m.__dict__) for n, m in model.named_modules()},
        "forward": {n: "forward" in m.__dict__ for n, m in model.named_modules()},
        "hooks": count_hooks(model),
        "training": {n: m.training for n, m in model.named_modules()},
    }


def assert_same(before: dict[str, Any], model: nn.Module) -> None:
    after = snapshot(model)
    for key in ("param_slots", "children", "attrs", "forward", "hooks", "training"):
        assert after[key] == before[key], key
    assert [(n, i, r) for n, i, _, r in after["params"]] == [(n, i, r) for n, i, _, r in before["params"]]
    for (_, _, a, _), (_, _, b, _) in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b)  # bit-identical
    for (na, a), (nb, b) in zip(after["buffers"], before["buffers"], strict=True):
        assert na == nb and torch.equal(a, b)


def ratio(res: Any) -> Tensor:
    return res.extras["relevance_sum"] / res.extras["score"]


class Block(nn.Module):
    """A residual block written in one of several styles; ``style="sum"`` is the LRP-ready form."""

    def __init__(self, ch: int, style: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(ch)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(ch)
        self.relu2 = nn.ReLU()
        self.style = style
        if style == "sum":
            self.sum = Sum()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        if self.style == "sum":
            out = self.sum(torch.stack([out, x], dim=-1))
        elif self.style == "iadd":
            out += x
        elif self.style == "add_":
            out.add_(x)
        elif self.style == "torch.add":
            out = torch.add(x, out)
        else:
            out = out + x
        return self.relu2(out)


class ResNetLike(nn.Module):
    def __init__(self, style: str, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.block1 = Block(6, style)
        self.block2 = Block(6, style)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)
        self.style = style
        if style == "sum":
            self.top_sum = Sum()

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn(self.conv(x)))
        y = self.block2(self.block1(h))
        # a long skip in the model's own forward as well
        y = self.top_sum(torch.stack([y, h], dim=-1)) if self.style == "sum" else y + h
        return self.fc(self.pool(y).flatten(1))


def resnet_like(style: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(ResNetLike(style), 2).double().eval()


def images(n: int = 2, size: int = 8, seed: int = 1) -> Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- residual additions are routed through Sum modules ----------------------------------------------
@pytest.mark.parametrize("style", ["add", "iadd", "add_", "torch.add"])
def test_residual_adds_equal_the_explicit_sum_model(style: str) -> None:
    ref_model = resnet_like("sum")
    model = resnet_like(style)
    x = images()
    assert scan_forward(model, x[:1]).adds == {"": 1, "block1": 1, "block2": 1}
    before = snapshot(model)
    for composite in ("epsilon", "epsilon_gamma_box", "epsilon_alpha2_beta1"):
        ours = xailab.create("lrp", model, composite=composite).explain(x, target=["top1", "least"])
        ref = xailab.create("lrp", ref_model, composite=composite).explain(x, target=["top1", "least"])
        torch.testing.assert_close(ours.maps, ref.maps, rtol=1e-10, atol=1e-12)
    assert_same(before, model)
    cons = xailab.create("lrp_epsilon_plus", model, zero_bias=True, epsilon=1e-12, stabilizer=1e-12).explain(x)
    torch.testing.assert_close(ratio(cons), torch.ones(2, 1, dtype=torch.float64), rtol=1e-8, atol=0)


class Plain(nn.Module):
    """conv-ReLU-conv-ReLU-conv-ReLU-pool-fc with activations written in several styles."""

    def __init__(self, style: str) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 5, 3)
        self.r1, self.r2, self.r3 = nn.ReLU(inplace=style == "inplace"), nn.ReLU(), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)
        self.style = style

    def forward(self, x: Tensor) -> Tensor:
        if self.style == "functional":
            acts = [F.relu, torch.relu, lambda t: t.relu()]
        elif self.style == "reused":
            acts = [self.r1, self.r1, self.r1]
        else:
            acts = [self.r1, self.r2, self.r3]
        x = acts[2](self.c3(acts[1](self.c2(acts[0](self.c1(x))))))
        if self.style == "mean":
            return self.fc(x.mean(dim=(2, 3)))
        return self.fc(self.pool(x).flatten(1))


@pytest.mark.parametrize("style", ["reused", "functional", "inplace"])
def test_reused_functional_and_inplace_relu_give_the_same_relevance(style: str) -> None:
    """Harmless for LRP: the ReLU rule passes relevance on and keeps no state; where a functional
    ReLU's gradient masks, the relevance is already zero (it is proportional to the activation)."""
    torch.manual_seed(0)
    ref = Plain("modules").double().eval()
    model = Plain(style).double().eval()
    model.load_state_dict(ref.state_dict())
    x = images(3, 7)
    for composite in ("epsilon", "epsilon_plus", "alpha2_beta1", "epsilon_gamma_box"):
        a = xailab.create("lrp", model, composite=composite).explain(x, target=["top1", "least"])
        b = xailab.create("lrp", ref, composite=composite).explain(x, target=["top1", "least"])
        torch.testing.assert_close(a.maps, b.maps, rtol=1e-12, atol=1e-14)


def test_functional_mean_pooling_warns() -> None:
    """``x.mean((2, 3))`` has no rule: the gradient spreads relevance evenly (still conserved)."""
    torch.manual_seed(0)
    model = Plain("mean").double().eval()
    with pytest.warns(UserWarning, match=r"functional average pooling mean\(\) in '<model.forward>'"):
        xailab.create("lrp_epsilon_plus", model).explain(images(2, 7))


# -- BatchNorm ------------------------------------------------------------------------------------
def fold_by_hand(model: TinyBNCNN) -> nn.Module:
    folded = copy.deepcopy(model)
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2")):
        c, b = getattr(folded, conv), getattr(folded, bn)
        scale = b.weight / torch.sqrt(b.running_var + b.eps)
        with torch.no_grad():
            c.weight.mul_(scale[:, None, None, None])
            c.bias.copy_((c.bias - b.running_mean) * scale + b.bias)
        setattr(folded, bn, nn.Identity())
    return folded


@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus", "epsilon_gamma_box", "alpha2_beta1"])
def test_batchnorm_merged_like_folding_by_hand(tiny_bn_cnn: nn.Module, images: Tensor, composite: str) -> None:
    model = tiny_bn_cnn.double()
    folded = fold_by_hand(model)  # type: ignore[arg-type]
    x = images[:3].double()
    torch.testing.assert_close(folded(x), model(x))
    a = xailab.create("lrp", model, composite=composite).explain(x, target=["top1", "least"])
    b = xailab.create("lrp", folded, composite=composite).explain(x, target=["top1", "least"])
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-9, atol=1e-12)


def test_model_restored_after_an_error_inside_lrp() -> None:
    class Failing(ResNetLike):
        calls = 0

        def forward(self, x: Tensor) -> Tensor:
            Failing.calls += 1
            # 1 scoring, 2 residual search, 3 check with Sum modules, 4 inspect_structure, 5 LRP
            if Failing.calls == 5:
                assert "forward" in self.block1.__dict__ and count_hooks(self.conv) > 0  # canonized, hooked
                raise RuntimeError("boom")
            return super().forward(x)

    torch.manual_seed(0)
    model = _randomise_bn(Failing("add"), 2).eval()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        xailab.create("lrp_epsilon_plus", model).explain(images().float())
    assert Failing.calls == 5
    assert_same(before, model)


# -- ResNets: conservation ------------------------------------------------------------------------
def test_torchvision_resnet18_conserves_relevance() -> None:
    """64x64 input, BN statistics randomised so that the merged biases are large.

    Tolerance: with ``zero_bias=True`` the input relevance of the z+ and αβ composites sums to
    the logit within 1e-4 in float32 (1e-8 in float64; the stabilisers take the rest). The ε-rule
    without biases is conservative on paper but unstable in float: its denominators leave out the
    bias that made a neuron active, and tiny ones amplify rounding (seen in float64: ratios of
    1.02 and 10 on this model). With biases, they absorb part of the relevance: only recorded.
    """
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(num_classes=10), 4).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = snapshot(model)
    for composite in ("epsilon_plus", "epsilon_alpha2_beta1"):
        res = xailab.create("lrp", model, composite=composite, zero_bias=True, epsilon=1e-9,
                            stabilizer=1e-9).explain(x, target=["top1", "least"])
        torch.testing.assert_close(ratio(res), torch.ones(1, 2), rtol=1e-4, atol=0)
    res = xailab.create("lrp_epsilon_gamma_box", model).explain(x)
    assert torch.isfinite(res.maps).all() and 0.1 < float(ratio(res).abs()) < 10
    assert_same(before, model)


def test_xailab_resnet20_conserves_relevance_and_is_restored() -> None:
    from xailab.models import create_model

    torch.manual_seed(0)
    model = _randomise_bn(create_model("resnet20"), 5).eval()  # convs have bias=None
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert scan_forward(model, x[:1]).adds == {}  # its residual sums are Add modules already
    model.train()  # the explainer switches to eval and back
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    grads = [p.grad for p in model.parameters()]
    before = snapshot(model)
    res = xailab.create("lrp_epsilon_alpha2_beta1", model, zero_bias=True, epsilon=1e-9,
                        stabilizer=1e-9).explain(x, target=["top1", "least"])
    torch.testing.assert_close(ratio(res), torch.ones(2, 2), rtol=1e-4, atol=0)
    assert_same(before, model)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_pretrained_resnet20_conserves_relevance() -> None:
    from xailab.models import create_model

    model = create_model("resnet20", weights=str(shared_path("cifar10-resnet", "resnet20.safetensors"))).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    box = xailab.create("lrp_epsilon_gamma_box", model, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with pytest.raises(InputError, match="outside the box"):  # noise is not an image in [0, 1]
        box.explain(x * 3)
    x = (x.clamp(-2, 2) + 2) / 4  # in [0, 1], then normalised
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    out = xailab.create("lrp_epsilon_plus", model, zero_bias=True).explain(x, target=["top1", "least"])
    torch.testing.assert_close(ratio(out), torch.ones(2, 2), rtol=1e-4, atol=0)  # float32
    assert torch.isfinite(box.explain(x).maps).all()


# -- refusals -------------------------------------------------------------------------------------
class Gated(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc_gate = nn.Linear(4, 4)
        self.conv_sq = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        if self.kind == "se":  # squeeze-excitation: an element-wise product of two activations
            h = self.relu(h) * torch.sigmoid(self.fc_gate(h.mean(dim=(2, 3))))[:, :, None, None]
        elif self.kind == "sigmoid":
            h = torch.sigmoid(h)
        elif self.kind == "reused_conv":
            h = self.relu(self.conv_sq(self.relu(self.conv_sq(self.relu(h)))))
        elif self.kind == "broadcast_add":
            h = self.relu(h)
            h = h + h.mean(dim=(2, 3), keepdim=True)
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize(("kind", "message"), [
    ("se", "product of two activations"),
    ("sigmoid", "functional activation"),
    ("reused_conv", "more than once"),
    ("broadcast_add", "sum of two activations"),
])
def test_refuses_what_no_rule_covers(kind: str, message: str) -> None:
    torch.manual_seed(0)
    model = Gated(kind).eval()
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match=message):
        xailab.create("lrp_epsilon", model).explain(torch.rand(2, 3, 6, 6))
    assert_same(before, model)


def test_refuses_a_batchnorm_merged_into_the_wrong_layer() -> None:
    class Misordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3)
            self.bn2 = nn.BatchNorm2d(4)  # defined after conv1, used after conv2
            self.conv2 = nn.Conv2d(4, 4, 3)
            self.bn1 = nn.BatchNorm2d(4)
            self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            x = self.relu1(self.bn1(self.conv1(x)))
            return self.fc(self.relu2(self.bn2(self.conv2(x))).mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = _randomise_bn(Misordered(), 0).eval()
    with pytest.raises(UnsupportedModelError, match="changed the model's output"):
        xailab.create("lrp_epsilon", model).explain(torch.rand(2, 3, 8, 8))


def test_refuses_batchnorm_in_training_mode(tiny_bn_cnn: nn.Module, images: Tensor) -> None:
    tiny_bn_cnn.train()
    with pytest.raises(UnsupportedModelError, match="eval mode"):
        xailab.create("lrp_epsilon", tiny_bn_cnn, eval_mode=False).explain(images[:2])


def test_warns_about_layers_without_rules() -> None:
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    _randomise_bn(model, 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        xailab.create("lrp_epsilon", model).explain(torch.rand(2, 3, 6, 6))
    text = " ".join(str(w.message) for w in caught)
    assert "cannot be merged" in text and "0" in text
    assert "GroupNorm" in text


# -- parameters -----------------------------------------------------------------------------------
def test_parameters_are_checked(tiny_cnn: nn.Module, images: Tensor) -> None:
    with pytest.raises(InputError, match="unknown LRP composite"):
        xailab.create("lrp", tiny_cnn, composite="gamma_gamma")
    with pytest.raises(InputError, match="always uses composite"):
        xailab.create("lrp_epsilon", tiny_cnn, composite="zplus")
    with pytest.raises(InputError, match="epsilon"):
        xailab.create("lrp", tiny_cnn, epsilon=-1.0)
    with pytest.raises(InputError, match="both low and high"):
        xailab.create("lrp_epsilon_gamma_box", tiny_cnn, low=0.0).explain(images[:1])
    assert xailab.create("lrp_flat", tiny_cnn).params()["composite"] == "epsilon_plus_flat"
    assert set(xailab.available(family="propagation")) >= {"lrp", "lrp_epsilon", "lrp_zplus", "lrp_epsilon_gamma_box"}


def test_box_bounds_from_normalisation_equal_given_bounds(tiny_cnn: nn.Module, images: Tensor) -> None:
    model = tiny_cnn.double()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (images[:2].double() - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    low = [-m / s for m, s in zip(mean, std, strict=True)]
    high = [(1 - m) / s for m, s in zip(mean, std, strict=True)]
    a = xailab.create("lrp_epsilon_gamma_box", model, mean=mean, std=std).explain(x)
    b = xailab.create("lrp_epsilon_gamma_box", model, low=low, high=high).explain(x)
    c = xailab.create("lrp_epsilon_gamma_box", model).explain(x)  # per-image box
    torch.testing.assert_close(a.maps, b.maps)
    assert not torch.allclose(a.maps, c.maps)
    assert c.params["bounds"] == "per_image" and a.params["bounds"]["mean"] == list(mean)
