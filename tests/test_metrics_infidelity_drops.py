"""Infidelity's model side made once: perturbations that change nothing are not run, the fully
filled image is run once, maps of every method reuse one set of drops, and the channels-last
batches change nothing (Quantus 0.6 agrees on all of it)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from xailab.core.errors import InputError
from xailab.metrics import infidelity, infidelity_drops

quantus = pytest.importorskip("quantus")


class ViewNet(nn.Module):
    """A convolution read by ``x.view(len(x), -1)``: raises on a channels-last batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).view(len(x), -1))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
                         nn.Linear(128, 5)).eval()


def _quantus(model: nn.Module, x: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = quantus.Infidelity(perturb_baseline=0.0, perturb_patch_sizes=[4], n_perturb_samples=1,
                                 normalise=False, abs=False, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), batch_size=len(x),
            device="cpu", softmax=True)
    return np.asarray(got, dtype=np.float64)


def _dark_images(n: int) -> torch.Tensor:
    """Images with black squares (equal to the fill 0): filling them changes nothing."""
    x = torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    x[:, :, :8] = 0.0  # the top two rows of 4x4 squares
    x[1, :, 8:12, 4:8] = 0.0
    return x


@pytest.mark.parametrize("make", [_cnn, ViewNet])
def test_skipped_and_shared_perturbations_still_equal_quantus(make: type) -> None:
    model = make().eval()
    x = _dark_images(6)
    y = model(x).argmax(1)
    a = torch.randn(6, 16, 16, generator=torch.Generator().manual_seed(6)) * 0.01
    rows: list[int] = []
    handle = model.register_forward_hook(lambda m, i, o: rows.append(len(i[0])))
    try:
        ours = infidelity(model, x, a, y, patch=4, fill=0.0)
    finally:
        handle.remove()
    # 16 squares; 8 black in every image, one more in image 1; the full fill once for all
    assert sum(rows) == 6 + (6 * 16 - 6 * 8 - 1) - 6 + 1
    assert ours.numpy() == pytest.approx(_quantus(model, x, a, y), rel=1e-4, abs=1e-9)


def test_drops_are_reused_for_other_maps_and_refused_for_other_inputs() -> None:
    model = _cnn()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    y = model(x).argmax(1)
    d = infidelity_drops(model, x, y, patch=4)
    for seed in (1, 2):
        a = torch.randn(5, 16, 16, generator=torch.Generator().manual_seed(seed))
        for norm in (False, True):
            alone = infidelity(model, x, a, y, patch=4, normalise=norm)
            assert torch.equal(infidelity(model, x, a, y, patch=4, normalise=norm, drops=d), alone)
            assert torch.equal(infidelity(model, x, a, patch=4, normalise=norm, drops=d), alone)  # its targets
    a = torch.randn(5, 16, 16)
    for bad in (dict(images=x + 0.1), dict(target=(y + 1) % 5), dict(patch=2), dict(fill="blur"),
                dict(output="logit")):
        kw = dict(images=x, target=y, patch=4) | bad
        with pytest.raises(InputError, match="drops were computed for other"):
            infidelity(model, kw.pop("images"), a, kw.pop("target"), drops=d, **kw)
