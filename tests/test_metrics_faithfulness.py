"""Deletion / insertion, faithfulness correlation and max-sensitivity, on models with known answers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import InputError
from xailab.metrics import calibration_maps
from xailab.metrics.faithfulness import _step_counts, deletion, faithfulness_correlation, insertion
from xailab.metrics.perturb import fill_images, gaussian_blur, pixel_ranks
from xailab.metrics.sensitivity import max_sensitivity, uniform_noise

from .test_metrics_support import PatchNet, patch_images, patch_mask


def linear_model(seed: int = 0, c: int = 2, size: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, 3)).double().eval()


def test_step_counts_cover_all_pixels() -> None:
    assert _step_counts(16, 4).tolist() == [0, 4, 8, 12, 16]
    assert _step_counts(10, 3).tolist() == [0, 3, 7, 10]
    with pytest.raises(InputError):
        _step_counts(10, 0)


def test_deletion_curve_by_hand_on_a_linear_model() -> None:
    model = linear_model()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 2, 4, 4, generator=g, dtype=torch.float64)
    maps = torch.rand(2, 4, 4, generator=g, dtype=torch.float64)
    w, b = model[1].weight, model[1].bias
    res = deletion(model, x, maps, 1, steps=4, fill=0.0, output="logit")
    for i in range(2):
        order = torch.argsort(maps[i].flatten(), descending=True)
        for k, n_removed in enumerate([0, 4, 8, 12, 16]):
            xi = x[i].clone().reshape(2, 16)
            xi[:, order[:n_removed]] = 0.0
            expected = (w[1] @ xi.flatten() + b[1]).item()
            assert res.scores[i, k].item() == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(res.auc, torch.trapezoid(res.scores, dx=0.25, dim=1))
    assert res.targets.tolist() == [1, 1] and res.fractions.tolist() == [0, 0.25, 0.5, 0.75, 1.0]


def test_deletion_plus_insertion_is_constant_on_a_linear_model() -> None:
    # f(x) = w.x + b with fill 0: deleting the top-k set and revealing it add up to f(x) + b
    model = linear_model(2)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(3, 2, 4, 4, generator=g, dtype=torch.float64)
    maps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)  # per-channel maps are summed
    d = deletion(model, x, maps, "top1", steps=5, output="logit")
    i = insertion(model, x, maps, "top1", steps=5, fill=0.0, output="logit")
    total = d.scores + i.scores
    torch.testing.assert_close(total, total[:, :1].expand_as(total))


def test_batch_size_does_not_change_the_curves() -> None:
    model = PatchNet().eval()
    x = patch_images(3)
    maps = calibration_maps.random_maps(x)
    big = insertion(model, x, maps, 0, steps=8, batch_size=1000)
    small = insertion(model, x, maps, 0, steps=8, batch_size=1)
    torch.testing.assert_close(big.scores, small.scores)


def test_good_map_beats_random_map_on_the_patch_model() -> None:
    model = PatchNet().eval()
    x = patch_images(6)
    sal = xailab.create("saliency", model).explain(x, target=0)
    rnd = calibration_maps.random_maps(x)
    d_sal = deletion(model, x, sal, steps=16, output="logit")
    d_rnd = deletion(model, x, rnd, 0, steps=16, output="logit")
    assert d_sal.targets.tolist() == [0] * 6  # taken from the explanation
    assert (d_sal.auc < 0.2 * d_rnd.auc).all()  # the patch is gone after 16 of 256 pixels
    i_sal = insertion(model, x, sal, steps=16, fill=0.0, output="logit")
    i_rnd = insertion(model, x, rnd, 0, steps=16, fill=0.0, output="logit")
    assert (i_sal.auc > i_rnd.auc).all()
    fc_sal = faithfulness_correlation(model, x, sal, runs=32, subset=0.2, output="logit")
    fc_rnd = faithfulness_correlation(model, x, rnd, 0, runs=32, subset=0.2, output="logit")
    assert fc_sal.mean() > 0.8 and fc_rnd.abs().mean() < 0.5


def test_faithfulness_correlation_is_one_for_input_x_gradient_of_a_linear_model() -> None:
    model = linear_model(3)
    x = torch.rand(4, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ixg = xailab.create("input_x_gradient", model).explain(x, target="top1")
    r = faithfulness_correlation(model, x, ixg, runs=20, subset=5, output="logit", fill=0.0)
    torch.testing.assert_close(r, torch.ones(4, dtype=torch.float64))
    again = faithfulness_correlation(model, x, ixg, runs=20, subset=5, output="logit", batch_size=3)
    torch.testing.assert_close(again, r)


def test_fills_and_ranks() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    assert torch.equal(fill_images(x, 0.5), torch.full_like(x, 0.5))
    torch.testing.assert_close(fill_images(x, "mean")[:, :, 0, 0], x.mean(dim=(2, 3)))
    const = torch.ones(1, 1, 9, 9)
    torch.testing.assert_close(gaussian_blur(const), const)  # a blur keeps a constant image
    assert gaussian_blur(x).std() < x.std()
    assert pixel_ranks(torch.tensor([[[0.5, 2.0], [1.0, 1.0]]])).tolist() == [[[3, 0], [1, 2]]]
    with pytest.raises(InputError, match="fill must be"):
        fill_images(x, "noise")  # type: ignore[arg-type]


def test_bad_input_names_what_is_wrong() -> None:
    model = PatchNet().eval()
    x = patch_images(4)
    with pytest.raises(InputError, match="3 maps for 4 images"):
        deletion(model, x, torch.rand(3, 16, 16))
    with pytest.raises(InputError, match=r"\[N, C, H, W\]"):
        deletion(model, x[0], torch.rand(1, 16, 16))
    with pytest.raises(InputError, match="NaN"):
        insertion(model, x, torch.full((4, 16, 16), float("nan")))
    with pytest.raises(InputError, match="got 2 targets for 4 images"):
        deletion(model, x, torch.rand(4, 16, 16), torch.tensor([0, 1]))
    # a coarse map (e.g. a 4x4 CAM) is resized to the images
    assert deletion(model, x, torch.rand(4, 4, 4), 0, steps=4).scores.shape == (4, 5)


def test_max_sensitivity_by_hand() -> None:
    # PatchNet is linear on non-negative images: saliency does not move; input x gradient moves
    # by exactly the noise inside the patch
    model = PatchNet().double().eval()
    x = patch_images(3, dtype=torch.float64) + 0.5
    noise = uniform_noise(tuple(x.shape), 4, 0.1, seed=1, dtype=torch.float64)
    s = max_sensitivity(model, x, "saliency", 0, noise=noise)
    torch.testing.assert_close(s, torch.zeros(3, dtype=torch.float64))
    ixg = max_sensitivity(model, x, "input_x_gradient", 0, noise=noise)
    m = patch_mask(3).double()
    w = 1 / 48
    base = (x.sum(1) * w * m).flatten(1).norm(dim=1)
    moved = torch.stack([(noise[k].sum(1) * w * m).flatten(1).norm(dim=1) for k in range(4)]).amax(0)
    torch.testing.assert_close(ixg, moved / base)
    absolute = max_sensitivity(model, x, "input_x_gradient", 0, noise=noise, relative=False)
    torch.testing.assert_close(absolute, moved)


def test_uniform_noise_is_per_image() -> None:
    a = uniform_noise((3, 1, 4, 4), 2, 0.2, seed=5)
    b = uniform_noise((1, 1, 4, 4), 2, 0.2, seed=5)
    assert torch.equal(a[:, :1], b) and a.abs().max() <= 0.2
