"""Ablation-CAM's fast path (the model cut at the layer) equals the slow definition.

The slow definition is written out here: for every channel ``k`` the whole model is re-run with
channel ``k`` of the layer set to 0 (a forward hook), ``w_k = (y - y_k) / y``, and the map is
``ReLU(sum_k w_k A_k)``. It is compared with the split path (``split_used``), with xailab's own
full re-run (``split=False``), and with the fallback taken when the split is impossible.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import xailab
from xailab.core.hooks import count_hooks
from xailab.methods.cam.split import SplitError, SplitModel

from .conftest import TinyBNCNN, _randomise_bn


def slow_ablation_cam(model: nn.Module, x: Tensor, layer: str, classes: list[int]) -> Tensor:
    """Layer-resolution Ablation-CAM ``[N, T, h, w]`` by re-running the model once per channel."""
    module = dict(model.named_modules())[layer]
    seen: dict[str, Tensor] = {}

    def record(m: nn.Module, i: Any, out: Tensor) -> None:
        seen["a"] = out.detach().clone()

    def zero(k: int) -> Any:
        def hook(m: nn.Module, i: Any, out: Tensor) -> Tensor:
            out = out.clone()
            out[:, k] = 0
            return out

        return hook

    with torch.no_grad():
        h = module.register_forward_hook(record)
        try:
            y = model(x)[:, classes]
        finally:
            h.remove()
        a = seen["a"]
        cams = torch.zeros(len(x), len(classes), *a.shape[-2:], dtype=x.dtype)
        for k in range(a.shape[1]):
            h = module.register_forward_hook(zero(k))
            try:
                yk = model(x)[:, classes]
            finally:
                h.remove()
            w = (y - yk) / y  # [N, T]
            cams += w[:, :, None, None] * a[:, None, k]
    return torch.relu(cams)


class TinyRes(nn.Module):
    """A residual block whose first conv is the layer; the stem's output skips over it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_a = nn.Conv2d(4, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        s = torch.relu(self.stem(x))
        y = self.conv_b(torch.relu(self.conv_a(s)))
        y += s  # in place, on a value computed after the layer
        return self.fc(self.act(y).mean(dim=(2, 3)))


class Untraceable(TinyRes):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it
            return super().forward(x)
        return x.new_zeros(len(x), 3)


class BakedBatch(TinyRes):
    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]  # read before the layer, used after it: cannot be carried per image
        y = self.conv_b(torch.relu(self.conv_a(torch.relu(self.stem(x)))))
        return self.fc(y.reshape(n, 4, -1).mean(dim=2))


def _x(n: int = 3, size: int = 6) -> Tensor:
    return torch.randn(n, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layer", ["relu1", "conv2", "relu2"])
def test_split_path_equals_the_slow_definition(layer: str) -> None:
    torch.manual_seed(0)
    m = _randomise_bn(TinyBNCNN(), 1).double().eval()
    x = _x(3, 8)
    cam = xailab.create("ablation_cam", m, layer=layer, batch_size=7)
    res = cam.explain(x, target=[0, 3])
    assert cam.split_used, cam.split_reason
    want = slow_ablation_cam(m, x, layer, [0, 3])
    torch.testing.assert_close(res.extras["cam"], want, rtol=1e-9, atol=1e-12)
    up = F.interpolate(want.flatten(0, 1)[:, None], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(res.maps, up.reshape(res.maps.shape), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("model", "split_used"), [(TinyRes, True), (Untraceable, False), (BakedBatch, False)]
)
def test_skip_connections_and_fallbacks_equal_the_slow_definition(model: type, split_used: bool) -> None:
    m = model().double().eval()
    x = _x()
    cam = xailab.create("ablation_cam", m, layer="conv_a", batch_size=5)
    res = cam.explain(x, target=[1, 2])
    assert cam.split_used is split_used, cam.split_reason
    torch.testing.assert_close(res.extras["cam"], slow_ablation_cam(m, x, "conv_a", [1, 2]), rtol=1e-9, atol=1e-12)
    slow = xailab.create("ablation_cam", m, layer="conv_a", split=False).explain(x, target=[1, 2])
    torch.testing.assert_close(res.maps, slow.maps, rtol=1e-9, atol=1e-12)
    assert count_hooks(m) == 0


def test_split_carries_the_skip_branch_and_refuses_bad_cuts() -> None:
    m = TinyRes().double().eval()
    x = _x()
    split = SplitModel.build(m, "conv_a")
    acts, carried = split.head(x)
    assert len(carried) == 1 and carried[0].shape == (3, 4, 6, 6)  # the stem's output
    index = torch.tensor([2, 0, 0])
    torch.testing.assert_close(split.tail(acts[index], carried, index), m(x)[index])
    with pytest.raises(SplitError, match="cannot trace"):
        SplitModel.build(Untraceable(), "conv_a")
    baked = BakedBatch().double().eval()
    with pytest.raises(SplitError, match="not per image"):
        SplitModel.build(baked, "conv_a").check(x, baked(x))
    with pytest.raises(SplitError, match="does not reproduce"):
        split.check(x, m(x) + 1e-2)
    torch.testing.assert_close(split.check(x, m(x)), m.conv_a(torch.relu(m.stem(x))))
    with pytest.raises(SplitError, match="appears 0 times"):
        SplitModel.build(m, "nothing")


def test_resnet18_split_equals_full_rerun() -> None:
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # layer2: 128 x 4 x 4
    fast = xailab.create("ablation_cam", m, layer="layer2", batch_size=64)
    got = fast.explain(x, target=["top1", "least"])
    assert fast.split_used, fast.split_reason
    slow = xailab.create("ablation_cam", m, layer="layer2", split=False, batch_size=64)
    want = slow.explain(x, target=["top1", "least"])
    assert not slow.split_used
    w, v = got.extras["weights"], want.extras["weights"]
    torch.testing.assert_close(w, v, rtol=1e-3, atol=1e-4 * float(v.abs().max()))
    torch.testing.assert_close(got.maps, want.maps, rtol=1e-3, atol=1e-4 * float(want.maps.max()))
    assert got.evaluations == want.evaluations - 1  # the slow path also re-runs to record A
