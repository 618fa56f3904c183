"""IROF and sensitivity-n: agreement with Quantus 0.6 on the same maps and settings, and
behaviour on the patch model whose right answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xailab
from xailab.core.errors import InputError
from xailab.metrics import irof, random_maps, sensitivity_n
from xailab.metrics.irof import superpixels

from .test_metrics_support import PatchNet, patch_images

quantus = pytest.importorskip("quantus")


def _cnn(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 5)).eval()


def test_irof_equals_quantus_irof(monkeypatch: pytest.MonkeyPatch) -> None:
    # Quantus's IROF builds a one-channel mask and refuses colour images (shape assertion)
    channels = 1
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 on NumPy >= 2.4
    model = _cnn(channels)
    x = torch.rand(4, channels, 24, 24, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    a = torch.randn(4, 24, 24, generator=torch.Generator().manual_seed(6))
    ours = irof(model, x, a, y, fill=0.3)
    metric = quantus.IROF(perturb_baseline=0.3, normalise=False, disable_warnings=True, return_aggregate=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one image a call: Quantus pads a batch's curves to its longest, which adds a triangle
        want = [metric(model=model, x_batch=x[i: i + 1].numpy(), y_batch=y[i: i + 1].numpy(),
                       a_batch=a[i: i + 1, None].expand(1, channels, 24, 24).numpy(), batch_size=1,
                       device="cpu")[0] for i in range(4)]
    # Quantus divides float32 probabilities; we score in float64
    assert ours.numpy() == pytest.approx(np.array(want, dtype=np.float64), rel=1e-4, abs=1e-9)


def test_irof_prefers_the_patch_and_refuses_bad_segments() -> None:
    model, x = PatchNet().eval(), patch_images(8)
    sal = xailab.create("saliency", model).explain(x, target=0)
    found = irof(model, x, sal, fill=0.0)
    rnd = irof(model, x, random_maps(x, seed=0), 0, fill=0.0)
    assert found.mean() > rnd.mean()  # removing the patch's superpixels first drops the score early
    seg = superpixels(x)
    assert seg.shape == (8, *x.shape[-2:]) and int(seg.min()) == 0
    assert torch.equal(irof(model, x, sal, segments=seg, fill=0.0), found)
    with pytest.raises(InputError, match="segments must be"):
        irof(model, x, sal, segments=seg[:, :4])


def test_sensitivity_n_equals_quantus_sensitivity_n(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    model = _cnn(1)
    x = torch.rand(12, 1, 12, 12, generator=torch.Generator().manual_seed(7))
    y = model(x).argmax(1)
    a = torch.randn(12, 12, 12, generator=torch.Generator().manual_seed(8))
    ours = sensitivity_n(model, x, a, y, step=4, fill=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = quantus.SensitivityN(features_in_step=4, n_max_percentage=0.8, perturb_baseline=0.0, normalise=False,
                                    disable_warnings=True, return_aggregate=False)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), batch_size=12,
            device="cpu")
    assert len(ours) == int(0.8 * 144 // 4) == len(want)
    assert ours.numpy() == pytest.approx(np.asarray(want, dtype=np.float64), abs=1e-4)


def test_sensitivity_n_is_one_for_input_times_gradient_of_a_linear_model_and_refuses_one_image() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)).eval()
    x = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    ixg = xailab.create("input_x_gradient", model).explain(x, target=0)
    # removing pixels (fill 0) drops the logit by exactly their input x gradient sum, and the
    # k-th step's drop is the sum over all steps so far: correlated, not equal, for k > 1
    rho = sensitivity_n(model, x, ixg, 0, step=64, max_fraction=1.0, output="logit")
    assert rho.shape == (1,) and float(rho[0]) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(InputError, match="at least 2"):
        sensitivity_n(model, x[:1], ixg.pixel_maps()[:1, 0], 0)
