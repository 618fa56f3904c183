"""ROAD and infidelity: agreement with Quantus 0.6 on the same maps and settings, and behaviour
on the patch model whose right answer is known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xailab
from xailab.core.errors import InputError
from xailab.metrics import infidelity, random_maps, road
from xailab.metrics.infidelity import block_order
from xailab.metrics.road import impute

from .test_metrics_support import PATCH, PatchNet, patch_images

quantus = pytest.importorskip("quantus")


def _cnn(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(128, 5)).eval()


def test_imputation_equals_quantus_noisy_linear_imputation() -> None:
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    arr = rng.random((3, 12, 12))
    idx = rng.permutation(144)[:100]
    expected = noisy_linear_imputation(arr, idx, noise=0.0)
    removed = torch.zeros(1, 144, dtype=torch.bool)
    removed[0, idx] = True
    got = impute(torch.tensor(arr)[None], removed.view(1, 12, 12))[0].numpy()
    assert np.abs(got - expected).max() < 1e-8
    kept = ~removed.view(12, 12).numpy()
    assert np.array_equal(got[:, kept], arr[:, kept])  # kept pixels untouched


def test_road_equals_quantus_road() -> None:
    # Quantus's ROAD indexes channel-broadcast maps as pixels, so it runs on one channel only
    model = _cnn(1)
    x = torch.rand(12, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1)
    a = torch.rand(12, 16, 16, generator=torch.Generator().manual_seed(2))
    pcts = list(range(1, 100, 7))
    ours = road(model, x, a, y, percentages=pcts, noise=0.0, output="accuracy", batch_size=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = quantus.ROAD(percentages=pcts, noise=0.0, normalise=False, disable_warnings=True)(
            model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), batch_size=12,
            device="cpu")
    assert ours.scores.mean(0).numpy() == pytest.approx(np.array([res[p] for p in pcts]), abs=1e-12)
    assert ours.scores.shape == (12, len(pcts)) and ours.fractions[0] == pytest.approx(0.01)


def test_infidelity_equals_quantus_infidelity() -> None:
    model = _cnn(3)
    x = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    y = model(x).argmax(1)
    a = torch.randn(10, 16, 16, generator=torch.Generator().manual_seed(4)) * 0.01
    ours = infidelity(model, x, a, y, patch=4, fill=0.0)
    expected = quantus.Infidelity(perturb_baseline=0.0, perturb_patch_sizes=[4], n_perturb_samples=1,
                                  normalise=False, abs=False, disable_warnings=True)(
        model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), batch_size=10,
        device="cpu", softmax=True)
    assert ours.numpy() == pytest.approx(np.asarray(expected, dtype=np.float64), rel=1e-4, abs=1e-9)


def test_on_the_patch_model_road_and_infidelity_prefer_the_patch() -> None:
    model = PatchNet().eval()
    x = patch_images(8) * 0.2
    x[:, :, PATCH[0], PATCH[1]] += 0.8  # a bright patch: imputing it from its dark border lowers the score
    sal = xailab.create("saliency", model).explain(x, target=0).pixel_maps()[:, 0]
    rnd = random_maps(x)
    assert road(model, x, sal, 0, noise=0.0).auc.mean() < road(model, x, rnd, 0, noise=0.0).auc.mean()
    # the patch model is linear in the patch for non-negative inputs: the per-channel gradient
    # (saliency summed over 3 channels, / 3) predicts every change of the logit exactly
    exact = infidelity(model, x, sal / 3, 0, output="logit")
    assert exact.max() < 1e-10 < infidelity(model, x, rnd * sal.max(), 0, output="logit").min()


def test_road_noise_is_seeded_per_row_and_blocks_cover_the_image() -> None:
    model, x = PatchNet().eval(), patch_images(3)
    a = random_maps(x)
    one = road(model, x, a, 0, percentages=[10, 50], seed=3, batch_size=1).scores
    many = road(model, x, a, 0, percentages=[10, 50], seed=3, batch_size=64).scores
    assert torch.allclose(one, many, rtol=0, atol=1e-6)  # same noise; float32 model
    assert block_order(5, 6, 4).tolist()[4] == [2, 2, 2, 2, 3, 3]
    with pytest.raises(InputError):
        road(model, x, a, 0, percentages=[120])


def test_the_direct_imputation_equals_conjugate_gradients_on_a_224_pixel_image() -> None:
    # one factorisation per image shared by its channels vs the CG reference, on blob-shaped masks
    # of a smooth map (the hard case: large connected holes) and a scattered one; all-removed rows
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 224, 224, generator=g)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(1, 1, 256, 256, generator=g), 33, 1)[0, 0]
    ranks = smooth.flatten().argsort(descending=True).argsort().view(224, 224)
    removed = torch.stack([ranks < int(224 * 224 * 0.6), torch.rand(224, 224, generator=g) < 0.3,
                           torch.ones(224, 224, dtype=torch.bool)])
    fast = impute(x, removed)
    ref = impute(x, removed, solver="cg", tol=1e-10)
    assert (fast - ref).abs().max() < 1e-6
    assert torch.equal(fast[~removed[:, None].expand_as(x)], x[~removed[:, None].expand_as(x)])
    assert torch.equal(fast[2], torch.zeros(3, 224, 224))  # nothing to impute from
