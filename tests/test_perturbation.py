"""Occlusion, LIME, KernelSHAP and RISE: properties on tiny models whose answers are known."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import InputError
from xailab.methods.perturbation.lime import lime_kernel
from xailab.methods.perturbation.occlusion import window_positions
from xailab.methods.perturbation.regression import constrained_wls, weighted_ridge
from xailab.methods.perturbation.rise import rise_masks
from xailab.methods.perturbation.sampling import lime_coalitions, shapley_kernel_coalitions
from xailab.methods.perturbation.segmentation import (
    segment,
    segmentation_params,
    superpixel_fill,
    target_segments,
)

from .conftest import Constant, TinyCNN

SUPERPIXEL = ["lime", "kernel_shap"]
ALL = ["occlusion", "lime", "kernel_shap", "rise"]


def blocks(h: int, w: int, size: int) -> torch.Tensor:
    """A user mask of ``size x size`` square superpixels, labelled row by row."""
    r = torch.arange(h) // size
    c = torch.arange(w) // size
    return r[:, None] * math.ceil(w / size) + c[None, :]


class Linear(nn.Module):
    """Logits linear in the pixels: ``W x + b`` (so superpixel contributions are known)."""

    def __init__(self, shape: tuple[int, int, int], classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(math.prod(shape), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Ignoring(nn.Module):
    """TinyCNN on the image with one region zeroed: that region cannot change the output."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = TinyCNN()
        self.register_buffer("keep", (~region).to(torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * self.keep)


@pytest.fixture
def x64() -> torch.Tensor:
    return torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def contributions(model: Linear, x: torch.Tensor, fill: torch.Tensor, seg: torch.Tensor, t: int) -> torch.Tensor:
    """Exact per-superpixel effect ``sum_{p in s} W_tp (x - fill)_p`` of a linear model."""
    w = model.fc.weight[t].detach().reshape(x.shape)
    per_pixel = (w * (x - fill)).sum(0)
    return torch.zeros(int(seg.max()) + 1, dtype=x.dtype).index_add_(0, seg.reshape(-1), per_pixel.reshape(-1))


# -- KernelSHAP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["paired", "plain"])
def test_kernel_shap_efficiency_is_exact(sampler: str, x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    res = xailab.create("kernel_shap", model, num_samples=40, sampler=sampler, segmentation="slic").explain(
        x64, target=["top1", "least"])
    w, s = res.extras["weights"], res.extras["n_segments"]
    assert int(s.min()) >= 8  # a real segmentation, more superpixels than samples can enumerate
    hidden = torch.stack([superpixel_fill(x64[i], res.extras["segments"][i], int(s[i]), None) for i in range(2)])
    base = model(hidden).gather(1, res.targets)
    torch.testing.assert_close(res.extras["base_value"], base, rtol=0, atol=1e-12)
    full = res.logits.gather(1, res.targets)
    torch.testing.assert_close(w.sum(-1), full - base, rtol=0, atol=1e-10)
    # the map is the superpixel weights painted on their pixels
    torch.testing.assert_close(res.maps[0, 1], w[0, 1][res.extras["segments"][0]], rtol=0, atol=0)


@pytest.mark.parametrize("sampler", ["paired", "plain"])
@pytest.mark.parametrize("hide", [None, 0.25])
def test_kernel_shap_recovers_a_linear_model(sampler: str, hide: float | None, x64: torch.Tensor) -> None:
    model = Linear((3, 12, 12)).double().eval()
    seg = blocks(12, 12, 4)  # 9 superpixels; 30 samples < 2^9 - 2, so this is the sampled estimate
    res = xailab.create("kernel_shap", model, num_samples=30, sampler=sampler, segmentation=seg,
                        hide_color=hide).explain(x64, target=torch.tensor([[0, 2], [0, 2]]))
    for i in range(2):
        fill = superpixel_fill(x64[i], seg, 9, hide)
        for j, t in enumerate((0, 2)):
            torch.testing.assert_close(res.extras["weights"][i, j], contributions(model, x64[i], fill, seg, t),
                                       rtol=0, atol=1e-9)


def brute_force_shapley(value: dict[tuple[int, ...], float], n: int) -> torch.Tensor:
    """Shapley values from their definition: weighted marginal contributions over all subsets."""
    phi = torch.zeros(n, dtype=torch.float64)
    for i in range(n):
        others = [j for j in range(n) if j != i]
        for k in range(n):
            for sub in itertools.combinations(others, k):
                weight = math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n)
                phi[i] += weight * (value[tuple(sorted((*sub, i)))] - value[sub])
    return phi


def test_kernel_shap_is_the_exact_shapley_value_when_the_budget_covers_all(x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    seg = blocks(12, 12, 6)  # 4 superpixels: 14 coalitions besides the empty and the full one
    res = xailab.create("kernel_shap", model, num_samples=16, segmentation=seg, hide_color=0.0).explain(
        x64[:1], target="top1")
    assert res.evaluations == 1 + 15
    t = int(res.targets[0, 0])
    value = {}
    for k in range(5):
        for sub in itertools.combinations(range(4), k):
            keep = torch.isin(seg, torch.tensor(sub, dtype=torch.long))
            value[sub] = float(model(x64[:1] * keep).detach().squeeze(0)[t])
    torch.testing.assert_close(res.extras["weights"][0, 0], brute_force_shapley(value, 4), rtol=0, atol=1e-10)


def test_constrained_wls_keeps_the_sum_even_when_underdetermined() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.rand(3, 6, generator=g) < 0.5
    phi = constrained_wls(z, torch.rand(3, 2, generator=g, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                          torch.tensor([0.5, 1.0]), torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(phi.sum(1), torch.tensor([1.5, -2.0], dtype=torch.float64))


# -- LIME ------------------------------------------------------------------------------------------
def test_weighted_ridge_is_sklearns_ridge() -> None:
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    z = (torch.rand(60, 7, generator=g) < 0.5).double()
    y = torch.randn(60, 2, generator=g, dtype=torch.float64)
    w = torch.rand(60, generator=g, dtype=torch.float64)
    coef, intercept = weighted_ridge(z, y, w, alpha=1.0)
    for t in range(2):
        ref = Ridge(alpha=1.0).fit(z.numpy(), y[:, t].numpy(), sample_weight=w.numpy())
        torch.testing.assert_close(coef[t], torch.from_numpy(ref.coef_), rtol=1e-9, atol=1e-10)
        assert abs(float(intercept[t]) - ref.intercept_) < 1e-9


def test_lime_kernel_is_limes() -> None:
    from sklearn.metrics import pairwise_distances

    z = lime_coalitions(50, 9, torch.Generator().manual_seed(0), "plain")
    z[3] = False
    d = pairwise_distances(z.int().numpy(), z[:1].int().numpy(), metric="cosine").ravel()
    expected = torch.from_numpy((torch.exp(-torch.from_numpy(d) ** 2 / 0.25**2)).sqrt().numpy())
    torch.testing.assert_close(lime_kernel(z, 0.25), expected, rtol=1e-12, atol=1e-12)


def test_lime_without_penalty_recovers_a_linear_model(x64: torch.Tensor) -> None:
    model = Linear((3, 12, 12)).double().eval()
    seg = blocks(12, 12, 4)
    res = xailab.create("lime", model, num_samples=40, segmentation=seg, alpha=0.0).explain(x64, target=1)
    for i in range(2):
        fill = superpixel_fill(x64[i], seg, 9, None)
        exact = contributions(model, x64[i], fill, seg, 1)
        torch.testing.assert_close(res.extras["weights"][i, 0], exact, rtol=0, atol=1e-9)
        # the intercept is the score with everything hidden
        assert abs(float(res.extras["intercept"][i, 0] - model(fill[None]).detach()[0, 1])) < 1e-9


@pytest.mark.parametrize("name", SUPERPIXEL)
def test_an_ignored_superpixel_gets_about_zero_weight(name: str) -> None:
    seg = blocks(12, 12, 4)
    model = Ignoring(seg == 4).double().eval()
    x = torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = xailab.create(name, model, num_samples=400, segmentation=seg, hide_color=0.0).explain(x)
    w = res.extras["weights"][:, 0]
    assert (w[:, 4].abs() <= 0.05 * w.abs().amax(1)).all(), w
    assert (w.abs().amax(1) > 0).all()


def test_kernel_shap_gives_an_ignored_superpixel_exactly_zero_when_enumerating() -> None:
    seg = blocks(12, 12, 4)
    model = Ignoring(seg == 4).double().eval()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    res = xailab.create("kernel_shap", model, num_samples=600, segmentation=seg).explain(x)
    assert res.extras["weights"][:, 0, 4].abs().max() < 1e-10


# -- samplers ------------------------------------------------------------------------------------------
def test_lime_paired_sampler_is_a_randomised_orthogonal_array_in_complement_pairs() -> None:
    z = lime_coalitions(1 + 64 * 3 + 10, 20, torch.Generator().manual_seed(0), "paired")
    assert z[0].all()
    assert torch.equal(z[1::2], ~z[2::2])
    for b in range(3):  # blocks of 64 rows for 20 superpixels: every column and pair balanced
        s = 2 * z[1 + 64 * b : 1 + 64 * (b + 1)].double() - 1
        assert torch.equal(s.T @ s, 64 * torch.eye(20, dtype=torch.float64))
    # each row is uniform on {0,1}^S: over many seeds every bit is a fair coin
    many = torch.stack([lime_coalitions(9, 20, torch.Generator().manual_seed(i), "paired")[1] for i in range(400)])
    assert (many.double().mean(0) - 0.5).abs().max() < 0.1


def test_shapley_sampler_enumerates_small_problems_and_respects_the_budget() -> None:
    g = torch.Generator().manual_seed(0)
    z, w = shapley_kernel_coalitions(10_000, 5, g)
    assert len(z) == 30 and len(torch.unique(z, dim=0)) == 30
    for budget in (20, 77, 500):
        z, w = shapley_kernel_coalitions(budget, 12, g)
        assert len(z) <= budget and len(torch.unique(z, dim=0)) == len(z)
        assert abs(float(w.sum()) - 1) < 1e-12
        assert not z.all(1).any() and z.any(1).all()


# -- occlusion and RISE ----------------------------------------------------------------------------------
def test_window_positions_cover_every_pixel_like_captum() -> None:
    assert window_positions(10, 4, 3) == [(0, 4), (3, 7), (6, 10)]
    assert window_positions(11, 4, 3) == [(0, 4), (3, 7), (6, 10), (9, 11)]  # the last one is cut


def test_occlusion_of_single_pixels_on_a_linear_model(x64: torch.Tensor) -> None:
    model = Linear((3, 12, 12)).double().eval()
    res = xailab.create("occlusion", model, window=1, stride=1, fill=0.5).explain(
        x64, target=torch.tensor([[0, 2], [0, 2]]))
    w = model.fc.weight.detach().reshape(3, 3, 12, 12)
    expected = torch.stack([(w[[0, 2]] * (x64[i] - 0.5)).sum(1) for i in range(2)])
    torch.testing.assert_close(res.maps, expected, rtol=0, atol=1e-12)
    assert res.evaluations == 2 + 2 * 144


def test_rise_masks_are_smooth_grids_of_the_right_size() -> None:
    grid = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]).repeat(3, 1, 1)
    masks = rise_masks(grid, torch.tensor([[0, 0], [2, 1], [3, 3]]), (4, 4), (8, 8))
    assert masks.shape == (3, 8, 8) and masks.min() >= 0 and masks.max() <= 1
    assert masks[0, 0, 0] == 1 and masks[0, 0, 7] < 0.5 and masks[0, 7, 0] < 0.5  # kept, dropped cells
    ones = rise_masks(torch.ones(2, 3, 3), torch.tensor([[1, 2], [0, 3]]), (4, 4), (10, 10))
    assert torch.equal(ones, torch.ones(2, 10, 10))


def test_rise_with_every_cell_kept_is_the_score(x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    res = xailab.create("rise", model, n_masks=5, p=1.0).explain(x64, target=["top1", "least"])
    expected = res.logits.gather(1, res.targets)[:, :, None, None].expand_as(res.maps)
    torch.testing.assert_close(res.maps, expected, rtol=1e-12, atol=1e-12)


def test_rise_of_a_constant_model_is_about_that_constant() -> None:
    res = xailab.create("rise", Constant(), n_masks=800, p=0.3).explain(
        torch.rand(1, 3, 20, 20, dtype=torch.float64), target=0)
    assert abs(float(res.maps.mean()) - 2.0) < 0.1


# -- every method: batching, seeds, targets, extras ------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_images_together_or_apart_give_the_same_maps(name: str) -> None:
    model = TinyCNN().double().eval()
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    params = xailab.core.registry.METHODS.get(name).quick_params
    together = xailab.create(name, model, batch_size=7, seed=2, **params)
    apart = xailab.create(name, model, batch_size=1000, seed=2, **params)
    apart.images_together = 1
    a = together.explain(x, target=["top1", "top2"])
    b = apart.explain(x, target=["top1", "top2"])
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-7, atol=1e-10)
    assert a.evaluations == b.evaluations
    for key in a.extras:
        torch.testing.assert_close(a.extras[key], b.extras[key], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("name", ["lime", "kernel_shap", "rise"])
def test_seeds(name: str, x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    params = xailab.core.registry.METHODS.get(name).quick_params
    a = xailab.create(name, model, seed=1, **params).explain(x64)
    b = xailab.create(name, model, seed=1, **params).explain(x64)
    c = xailab.create(name, model, seed=2, **params).explain(x64)
    assert torch.equal(a.maps, b.maps)
    assert not torch.equal(a.maps, c.maps)


@pytest.mark.parametrize("name", ALL)
def test_one_pass_serves_every_target(name: str, x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    params = xailab.core.registry.METHODS.get(name).quick_params
    one = xailab.create(name, model, **params).explain(x64, target="top1")
    three = xailab.create(name, model, **params).explain(x64, target=["top1", "top2", "least"])
    assert one.evaluations == three.evaluations
    torch.testing.assert_close(three.maps[:, :1], one.maps, rtol=1e-12, atol=1e-15)


def test_lime_extras_and_params(x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    res = xailab.create("lime", model, num_samples=30).explain(x64, target=["top1", "least"])
    seg, w, n = res.extras["segments"], res.extras["weights"], res.extras["n_segments"]
    assert seg.shape == (2, 12, 12) and w.shape == (2, 2, int(n.max()))
    for i in range(2):
        assert int(seg[i].max()) + 1 == int(n[i])
        assert (w[i, :, int(n[i]):] == 0).all()
        torch.testing.assert_close(res.maps[i], w[i][:, seg[i]])
    assert res.params["segmentation"] == "slic"
    assert res.params["segmentation_params"]["n_segments"] == target_segments(12, 12)
    assert res.params["sampler"] == "paired" and res.params["kernel_width"] == 0.25
    assert res.evaluations <= 2 + 2 * 29


# -- segmentation ---------------------------------------------------------------------------------------
def test_segmentation_scale_follows_the_image_size() -> None:
    assert target_segments(32, 32) == 25 and 70 <= target_segments(224, 224) <= 100
    g = torch.Generator().manual_seed(0)
    for side, lo, hi in ((32, 16, 40), (96, 30, 80)):
        img = torch.rand(3, side, side, generator=g)
        for method in ("slic", "quickshift", "felzenszwalb"):
            n = int(segment(img, method, segmentation_params(method, side, side)).max()) + 1
            assert lo // 2 <= n <= 2 * hi, (method, side, n)
    n = int(segment(img[:1], "slic", segmentation_params("slic", 96, 96)).max()) + 1  # one channel
    assert n >= 20


def test_user_masks_and_functions(x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    per_image = torch.stack([blocks(12, 12, 6) * 7, blocks(12, 12, 4) + 100])  # any integer labels
    res = xailab.create("lime", model, num_samples=20, segmentation=per_image).explain(x64)
    assert res.extras["n_segments"].tolist() == [4, 9]
    assert res.params["segmentation"] == "mask"
    res = xailab.create("lime", model, num_samples=20, segmentation=lambda a: (a[..., 0] > 0.5).astype(int)).explain(x64)
    assert res.extras["n_segments"].tolist() == [2, 2]


def test_superpixel_fill_is_the_mean_colour() -> None:
    img = torch.arange(2 * 2 * 3, dtype=torch.float64).reshape(2, 2, 3)
    seg = torch.tensor([[0, 0, 1], [0, 1, 1]])
    fill = superpixel_fill(img, seg, 2, None)
    assert fill[0, 0, 0] == (0 + 1 + 3) / 3 and fill[1, 1, 2] == (8 + 10 + 11) / 3
    assert torch.equal(superpixel_fill(img, seg, 2, [1.0, 2.0])[:, 0, 0], torch.tensor([1.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize(("name", "params", "match"), [
    ("lime", {"sampler": "sobol"}, "sampler"),
    ("lime", {"segmentation": "watershed"}, "unknown segmentation"),
    ("kernel_shap", {"num_samples": 1}, "num_samples"),
    ("lime", {"distance": "cityblock"}, "distance"),
    ("rise", {"p": 0.0}, "p must"),
    ("occlusion", {"window": 0}, "window"),
])
def test_bad_parameters_say_what_to_do(name: str, params: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        xailab.create(name, TinyCNN(), **params)


def test_bad_masks_and_fills_are_refused(x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    with pytest.raises(InputError, match=r"\[H, W\]"):
        xailab.create("lime", model, segmentation=torch.zeros(5, 5, dtype=torch.long)).explain(x64)
    with pytest.raises(InputError, match="integer"):
        xailab.create("lime", model, segmentation=torch.zeros(12, 12)).explain(x64)
    with pytest.raises(InputError, match="one per channel"):
        xailab.create("occlusion", model, fill=[0.0, 1.0]).explain(x64)
    with pytest.raises(InputError, match="has no parameter"):
        xailab.create("lime", model, segmentation_params={"n_segmentz": 3}).explain(x64)
