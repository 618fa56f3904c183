"""The gradient CAMs against their formulas worked by hand, layer choice and errors.

Every check runs in float64 on tiny models. The activations ``A`` and gradients ``G`` of the
by-hand side come from running the model's modules one by one (no hooks, no xailab code), then
the paper's formula is applied, and the upsampling is an independent bilinear resize.
"""

from __future__ import annotations

import math

import pytest
import torch
from bench.common import CifarCNN
from torch import Tensor, nn

import xailab
from xailab.core.errors import LayerError
from xailab.core.hooks import count_hooks
from xailab.methods.cam.layers import find_cam_layer

from .conftest import TinyBNCNN, TinyCNN, _randomise_bn

CAMS = ["gradcam", "gradcam_pp", "xgradcam", "layercam", "ablation_cam", "score_cam"]
GRADIENT_CAMS = ["gradcam", "gradcam_pp", "xgradcam", "layercam"]


def bilinear(maps: Tensor, size: int) -> Tensor:
    """Resize ``[..., h, w]`` to ``size x size`` with half-pixel centres, written out per axis."""

    def weights(n_in: int, n_out: int) -> Tensor:
        m = torch.zeros(n_out, n_in, dtype=torch.float64)
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            lo = min(math.floor(src), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1 - (src - lo)
            m[i, hi] += src - lo
        return m

    rows, cols = weights(maps.shape[-2], size), weights(maps.shape[-1], size)
    return rows @ maps @ cols.T


def bn_model() -> TinyBNCNN:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval().double()


def split_bn_model(m: TinyBNCNN, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    """``(A, logits)`` of TinyBNCNN with ``A`` the output of ``layer``, computed module by module."""
    a1 = m.relu1(m.bn1(m.conv1(x)))
    if layer == "relu1":
        a = a1.detach().requires_grad_(True)
        return a, m.fc(m.pool2(m.relu2(m.bn2(m.conv2(m.pool1(a))))).flatten(1))
    a = m.relu2(m.bn2(m.conv2(m.pool1(a1)))).detach().requires_grad_(True)
    return a, m.fc(m.pool2(a).flatten(1))


def by_hand(method: str, a: Tensor, g: Tensor) -> Tensor:
    """The layer-resolution CAM of one (image, class): ``a, g [K, h, w]``."""
    if method == "layercam":
        return torch.relu((torch.relu(g) * a).sum(0))
    s = a.sum(dim=(1, 2))
    if method == "gradcam":
        w = g.mean(dim=(1, 2))
    elif method == "xgradcam":
        w = torch.stack([(g[k] * a[k]).sum() / (s[k] + 1e-7) for k in range(len(a))])
    else:  # gradcam_pp, eq. 19 of Chattopadhay et al. with alpha = 0 where the gradient is 0
        w = torch.zeros(len(a), dtype=a.dtype)
        for k in range(len(a)):
            for i in range(a.shape[1]):
                for j in range(a.shape[2]):
                    gk = g[k, i, j]
                    if gk != 0:
                        alpha = gk**2 / (2 * gk**2 + s[k] * gk**3 + 1e-6)
                        w[k] += alpha * max(gk, 0)
    return torch.relu((w[:, None, None] * a).sum(0))


@pytest.mark.parametrize("layer", ["relu1", "relu2"])
@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_gradient_cams_equal_their_formula(method: str, layer: str, images: Tensor) -> None:
    m, x = bn_model(), images[:3].double()
    res = xailab.create(method, m, layer=layer).explain(x, target=["top1", "least"])
    for i in range(len(x)):
        for t in range(2):
            c = int(res.targets[i, t])
            a, logits = split_bn_model(m, x[i : i + 1], layer)
            (g,) = torch.autograd.grad(logits[0, c], a)
            cam = by_hand(method, a[0].detach(), g[0])
            torch.testing.assert_close(res.extras["cam"][i, t], cam, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(res.maps[i, t], bilinear(cam, x.shape[-1]), rtol=1e-10, atol=1e-12)


def test_gradcam_on_a_gap_network_is_cam() -> None:
    """With global average pooling then a linear layer, dS_c/dA_k = W_ck / (h w) everywhere:
    Grad-CAM is the CAM of Zhou et al. divided by h w, and Grad-CAM++'s weight has a closed form."""
    torch.manual_seed(0)
    m, x = TinyCNN().double().eval(), torch.rand(2, 3, 6, 6, dtype=torch.float64)
    a = m.features(x).detach()  # [2, 6, 6, 6]: the layer "features", no upsampling needed
    z = 36
    for c in range(3):
        w = m.fc.weight[c].detach()
        grad = xailab.create("gradcam", m, layer="features").explain(x, target=c)
        torch.testing.assert_close(grad.maps[:, 0], torch.relu(torch.einsum("k,nkhw->nhw", w / z, a)))
        pp = xailab.create("gradcam_pp", m, layer="features").explain(x, target=c)
        g, s = w / z, a.sum(dim=(2, 3))  # [K], [N, K]
        w_pp = torch.relu(g) * z / (2 + s * g + 1e-6 / g**2)  # sum_ij alpha relu(g), alpha constant
        torch.testing.assert_close(pp.extras["weights"][:, 0], w_pp)
        layer = xailab.create("layercam", m, layer="features").explain(x, target=c)
        torch.testing.assert_close(layer.maps[:, 0], torch.relu(torch.einsum("k,nkhw->nhw", torch.relu(g), a)))


class TwoChannel(nn.Module):
    """conv(3->3) - ReLU - GAP - linear, where class c reads channel c only (weights 0 elsewhere)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.diag(torch.tensor([1.5, -2.0, 0.7])))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.relu(self.conv(x)).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", ["gradcam", "gradcam_pp", "xgradcam", "layercam", "ablation_cam"])
def test_a_class_ignores_the_channels_it_does_not_read(method: str) -> None:
    m = TwoChannel().double().eval()
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = m.relu(m.conv(x)).detach()
    res = xailab.create(method, m, layer="relu").explain(x, target=[0, 1, 2])
    for c in range(3):
        ac = a[:, c]
        if "weights" in res.extras:
            w = res.extras["weights"][:, c]
            others = [k for k in range(3) if k != c]
            assert torch.all(w[:, others] == 0), "a channel the class does not read got a weight"
            if method == "ablation_cam":  # y = W_cc mean(A_c) + b_c, zeroing A_c leaves b_c
                y = m(x)[:, c].detach()
                torch.testing.assert_close(w[:, c], m.fc.weight[c, c] * ac.mean(dim=(1, 2)) / y)
        cam = res.extras["cam"][:, c]
        wc = res.extras["weights"][:, c, c] if "weights" in res.extras else None
        want = torch.relu(wc[:, None, None] * ac) if wc is not None else torch.relu(torch.relu(m.fc.weight[c, c] / 25) * ac)
        torch.testing.assert_close(cam, want)


@pytest.mark.parametrize("method", CAMS)
def test_several_targets_equal_one_at_a_time(method: str, images: Tensor) -> None:
    m, x = bn_model(), images[:3].double()
    both = xailab.create(method, m, layer="relu2").explain(x, target=["top1", "least"])
    for t, spec in enumerate(["top1", "least"]):
        one = xailab.create(method, m, layer="relu2").explain(x, target=spec)
        torch.testing.assert_close(both.maps[:, t], one.maps[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("method", CAMS)
def test_batch_size_only_changes_the_passes(method: str, images: Tensor) -> None:
    """Passes of 3 rows cut across images and targets; the maps must not notice."""
    m, x = bn_model(), images[:4].double()
    runs = [
        xailab.create(method, m, layer="relu1", batch_size=bs).explain(x, target=["top1", "least"])
        for bs in (1, 3, 4096)
    ]
    for r in runs[:2]:
        torch.testing.assert_close(r.maps, runs[2].maps, rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(r.extras["cam"], runs[2].extras["cam"], rtol=1e-10, atol=1e-13)
    assert len({r.evaluations for r in runs}) == 1


@pytest.mark.parametrize("method", CAMS)
def test_maps_are_raw_nonnegative_and_scale_with_the_model(method: str, images: Tensor) -> None:
    """No min-max normalisation: scaling the last layer by 3 scales gradient-CAM maps by 3."""
    m, x = bn_model(), images[:2].double()
    base = xailab.create(method, m, layer="relu2").explain(x, target=[0, 1])
    assert (base.maps >= 0).all() and base.maps.amax() > 0
    with torch.no_grad():
        m.fc.weight.mul_(3)
        m.fc.bias.mul_(3)
    scaled = xailab.create(method, m, layer="relu2").explain(x, target=[0, 1])
    if method in GRADIENT_CAMS and method != "gradcam_pp":  # Grad-CAM++'s alpha is not linear
        torch.testing.assert_close(scaled.maps, 3 * base.maps)
    elif method == "ablation_cam":  # relative score drops: unchanged by scaling the logits
        torch.testing.assert_close(scaled.maps, base.maps)


def test_inplace_ops_after_the_layer_do_not_change_the_map() -> None:
    """The layer is a conv followed by an in-place ReLU; the map must use the conv's own output."""

    def net(inplace: bool) -> nn.Sequential:
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=inplace), nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(inplace=inplace), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
        ).double().eval()

    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for method in CAMS:
        a = xailab.create(method, net(False), layer="2").explain(x, target=[0, 2])
        b = xailab.create(method, net(True), layer="2").explain(x, target=[0, 2])
        torch.testing.assert_close(a.maps, b.maps, msg=method)
        assert (a.extras["cam"] >= 0).all()


def test_default_layer_is_the_last_conv_block() -> None:
    import torchvision

    assert find_cam_layer(torchvision.models.resnet18().eval(), torch.rand(1, 3, 32, 32))[0] == "layer4"
    # the zoo's hook-friendly rebuilds: residual sums are Add modules and shortcuts Identity
    # modules inside the block; neither may stop the search before the block's own output
    from xailab.models import create_model

    assert find_cam_layer(create_model("resnet18").eval(), torch.rand(1, 3, 32, 32))[0] == "layer4"
    assert find_cam_layer(create_model("resnet20").eval(), torch.rand(1, 3, 32, 32))[0] == "layer3"
    assert find_cam_layer(CifarCNN().eval(), torch.rand(1, 3, 32, 32))[0] == "features.21"  # conv 19, BN 20, ReLU 21
    assert find_cam_layer(TinyBNCNN().eval(), torch.rand(1, 3, 16, 16))[0] == "relu2"
    assert find_cam_layer(TinyCNN().eval(), torch.rand(1, 3, 16, 16))[0] == "features"
    res = xailab.create("gradcam", TinyBNCNN().eval()).explain(torch.rand(2, 3, 16, 16))
    assert res.params["layer"] == "relu2"


def test_wrong_layer_name_lists_the_candidates() -> None:
    with pytest.raises(LayerError, match=r"no layer named 'conv3'.*conv2.*Conv layers: conv1, conv2"):
        xailab.create("gradcam", TinyBNCNN(), layer="conv3")


@pytest.mark.parametrize("method", CAMS)
def test_layer_without_a_map_is_refused(method: str, images: Tensor) -> None:
    m = TinyBNCNN().eval()
    with pytest.raises(LayerError, match=r"'fc' \(Linear\) outputs a tensor of shape \[\d+, 4\].*\[N, C, H, W\].*Conv layers: conv1, conv2"):
        xailab.create(method, m, layer="fc").explain(images[:2])
    assert count_hooks(m) == 0


class Reuses(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)
        self.act, self.unused = nn.ReLU(), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.conv2(self.act(self.conv1(x)))).mean(dim=(2, 3)))


@pytest.mark.parametrize("method", CAMS)
def test_reused_or_unused_layer_is_refused(method: str, images: Tensor) -> None:
    m = Reuses().eval()
    with pytest.raises(LayerError, match="runs more than once"):
        xailab.create(method, m, layer="act").explain(images[:2])
    with pytest.raises(LayerError, match="did not run"):
        xailab.create(method, m, layer="unused").explain(images[:2])
    assert count_hooks(m) == 0


def test_model_without_conv_needs_a_layer() -> None:
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    with pytest.raises(LayerError, match="no Conv2d"):
        xailab.create("gradcam", m).explain(torch.rand(2, 3, 2, 2))
