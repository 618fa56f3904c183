"""Properties of the gradient family on tiny float64 models, where the answers are known by hand.

Integrated Gradients: completeness for every rule, exactness on linear models, the delta
extra. Baselines (black/white/blur/tensor/adversarial 50-50). SmoothGrad against its own
definition. GradientSHAP against its definition from its own draws. Streaming: parity across
batch sizes, seeds, evaluation counts. DeepLIFT has its own file (test_gradient_deeplift.py).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import InputError
from xailab.methods.gradient.baselines import Baseline, PixelSpace, gaussian_blur
from xailab.methods.gradient.integrated_gradients import RULES, quadrature

from .conftest import TinyBNCNN, _randomise_bn

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)




class Linear(nn.Module):
    """``f(x) = W flatten(x) + c``: every gradient method's answer is known in closed form."""

    def __init__(self, shape: tuple[int, int, int] = (3, 4, 4), classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(shape[0] * shape[1] * shape[2], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class IgnoresBlue(nn.Module):
    """A ReLU CNN that never looks at channel 2."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x[:, :2]))).flatten(1))


@pytest.fixture
def bn_model() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval().double()


@pytest.fixture
def x64(images: torch.Tensor) -> torch.Tensor:
    return images[:4].double()


def _scores(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).gather(1, targets)


# -- quadrature and Integrated Gradients ----------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_quadrature_weights_sum_to_one(rule: str) -> None:
    a, w = quadrature(rule, 7)
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(w.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_gauss_legendre_is_exact_for_polynomials_of_degree_2n_minus_1() -> None:
    a, w = quadrature("gausslegendre", 4)
    for k in range(8):  # integral_0^1 a^k da = 1 / (k + 1)
        assert abs(float((w * a**k).sum()) - 1 / (k + 1)) < 1e-14
    a, w = quadrature("riemann_left", 4)
    assert abs(float((w * a**2).sum()) - 1 / 3) > 1e-2  # the Riemann rule is not


@pytest.mark.parametrize("rule", RULES)
def test_ig_is_exact_on_a_linear_model(rule: str) -> None:
    model = Linear().double().eval()
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = xailab.create("integrated_gradients", model, n_steps=3, rule=rule, baseline="white").explain(x, target=1)
    w = model.fc.weight[1].reshape(3, 4, 4)
    torch.testing.assert_close(res.maps[:, 0], (x - 1) * w, rtol=1e-12, atol=1e-12)
    assert res.extras["delta"].abs().max() < 1e-12


@pytest.mark.parametrize("rule", RULES)
def test_ig_completeness_within_one_percent_for_every_rule(rule: str, bn_model: nn.Module, x64: torch.Tensor) -> None:
    n = {"gausslegendre": 32, "riemann_middle": 32}.get(rule, 256)
    res = xailab.create("integrated_gradients", bn_model, n_steps=n, rule=rule, batch_size=512).explain(
        x64, target=["top1", "least"]
    )
    df = _scores(bn_model, x64, res.targets) - _scores(bn_model, torch.zeros_like(x64), res.targets)
    assert df.abs().min() > 1e-3  # the check below is meaningful
    total = res.maps.sum(dim=(2, 3, 4))
    torch.testing.assert_close(res.extras["delta"], total - df, rtol=1e-9, atol=1e-12)
    assert (res.extras["delta"].abs() <= 0.01 * df.abs()).all(), (rule, res.extras["delta"] / df)


def test_gauss_legendre_needs_far_fewer_steps_on_a_smooth_network(x64: torch.Tensor) -> None:
    torch.manual_seed(0)
    smooth = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.AvgPool2d(2), nn.Conv2d(8, 8, 3),
                           nn.Tanh(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).double().eval()

    def err(rule: str, n: int) -> float:
        r = xailab.create("integrated_gradients", smooth, n_steps=n, rule=rule).explain(x64, target="top1")
        with torch.no_grad():
            df = smooth(x64).gather(1, r.targets) - smooth(torch.zeros_like(x64)).gather(1, r.targets)
        return float((r.extras["delta"] / df).abs().max())

    assert err("gausslegendre", 4) < 1e-6  # 3x fewer steps than the 12 where left Riemann is still > 1 %
    assert err("riemann_left", 12) > 0.01


def test_ig_delta_with_normalised_black_baseline(bn_model: nn.Module, x64: torch.Tensor) -> None:
    res = xailab.create("integrated_gradients", bn_model, n_steps=16, mean=MEAN, std=STD).explain(x64, target=2)
    black = (0 - torch.tensor(MEAN, dtype=torch.float64)) / torch.tensor(STD, dtype=torch.float64)
    b = black.reshape(1, 3, 1, 1).expand_as(x64)
    t = res.targets
    expected = res.maps.sum(dim=(2, 3, 4)) - (_scores(bn_model, x64, t) - _scores(bn_model, b, t))
    torch.testing.assert_close(res.extras["delta"], expected, rtol=1e-9, atol=1e-12)
    assert res.params["mean"] == list(MEAN) and res.params["baseline"] == "black"


def test_ig_counts_every_evaluation(bn_model: nn.Module, x64: torch.Tensor) -> None:
    for bs in (1, 5, 1000):  # passes never hold more than batch_size samples; the count is exact
        ig = xailab.create("integrated_gradients", bn_model, n_steps=6, batch_size=bs)
        res = ig.explain(x64, target=["top1", "top2"])
        chunks = -(-4 // ig.images_per_chunk(2))
        # the black baseline is the same image for all: scored once a chunk of images
        assert res.evaluations == 4 + 4 * 2 * 6 + chunks  # scores, steps, baselines
        uniform = xailab.create("integrated_gradients", bn_model, n_steps=6, batch_size=bs,
                                baseline="uniform").explain(x64, target=["top1", "top2"])
        assert uniform.evaluations == 4 + 4 * 2 * 6 + 4  # a baseline per image: each scored


# -- a feature the model ignores --------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("saliency", {}),
        ("input_x_gradient", {}),
        ("integrated_gradients", {"n_steps": 5, "baseline": "uniform"}),
        ("smoothgrad", {"n_samples": 4, "variant": "vargrad"}),
        ("smoothgrad", {"n_samples": 3, "method": "integrated_gradients", "n_steps": 3}),
        ("gradient_shap", {"n_samples": 6, "noise_level": 0.1}),
        ("deeplift", {"baseline": "blur"}),
    ],
)
def test_an_ignored_channel_gets_zero(name: str, kw: dict[str, object], x64: torch.Tensor) -> None:
    model = IgnoresBlue().double().eval()
    res = xailab.create(name, model, **kw).explain(x64, target=["top1", "least"])
    assert res.maps[:, :, 2].abs().max() == 0
    assert res.maps[:, :, :2].abs().max() > 0


# -- baselines -----------------------------------------------------------------------------
def test_black_and_white_follow_the_normalisation() -> None:
    x = torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    lo, hi = PixelSpace.of(MEAN, STD).bounds(x)
    m, s = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    torch.testing.assert_close(lo.flatten(), -m / s)
    torch.testing.assert_close(hi.flatten(), (1 - m) / s)
    lo, hi = PixelSpace.of(pixel_range=(-1, 1)).bounds(x)
    assert float(lo) == -1 and float(hi) == 1
    lo, hi = PixelSpace().bounds(x)  # raw [0, 1] pixels by default: black is zero (Captum's default)
    assert float(lo) == 0 and float(hi) == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"mean": MEAN}, "both mean and std"), ({"mean": MEAN, "std": STD, "pixel_range": (0, 1)}, "not both"),
     ({"pixel_range": (1, 0)}, "lo < hi"), ({"mean": 0.5, "std": 0}, "positive")],
)
def test_pixel_space_errors(kw: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        PixelSpace.of(**kw)  # type: ignore[arg-type]


def test_baseline_parsing() -> None:
    assert Baseline.parse("blur:3").sigma == 3
    assert Baseline.parse("gaussian:0.3").describe() == "gaussian:0.3"
    assert Baseline.parse("adversarial:noise").start == "noise"
    assert Baseline.parse("Black").kind == "black"
    for bad, match in [("purple", "unknown baseline"), ("black:2", "takes no"), ("blur:x", "not a number"),
                       ("adversarial:sky", "start must be")]:
        with pytest.raises(InputError, match=match):
            Baseline.parse(bad)


def test_blur_keeps_constants_and_smooths() -> None:
    const = torch.full((1, 3, 9, 9), 0.7, dtype=torch.float64)
    torch.testing.assert_close(gaussian_blur(const, 2.0), const)
    spike = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    spike[0, 0, 4, 4] = 1
    out = gaussian_blur(spike, 1.0)
    assert abs(float(out.sum()) - 1) < 1e-3 and out[0, 0, 4, 4] < 0.2 and out[0, 0, 4, 5] > 0


def _baselines_of(kind: str | torch.Tensor, model: nn.Module, x: torch.Tensor, **kw: object) -> torch.Tensor:
    """The baseline IG used, recovered from a linear model: maps = (x - b) * w."""
    res = xailab.create("integrated_gradients", model, baseline=kind, n_steps=2, **kw).explain(x, target=0)
    w = model.fc.weight[0].reshape(x.shape[1:])  # type: ignore[index]
    return x - res.maps[:, 0] / w


def test_random_and_tensor_baselines() -> None:
    model = Linear().double().eval()
    x = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = _baselines_of("uniform", model, x, pixel_range=(-1, 1))
    assert u.min() >= -1 and u.max() <= 1 and u.std() > 0.3
    g = _baselines_of("gaussian:0.1", model, x, pixel_range=(0, 1))
    assert g.min() >= 0 and g.max() <= 1 and 0 < (g - x).abs().max() < 0.5
    one = torch.rand(3, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(_baselines_of(one, model, x), one.expand_as(x), rtol=1e-9, atol=1e-9)
    each = torch.rand(3, 3, 4, 4, dtype=torch.float64)  # one per image, followed across chunks
    torch.testing.assert_close(_baselines_of(each, model, x, batch_size=1), each, rtol=1e-9, atol=1e-9)
    with pytest.raises(InputError, match="does not fit"):
        _baselines_of(torch.zeros(3, 5, 5, dtype=torch.float64), model, x)


@pytest.mark.parametrize("start", ["input", "noise"])
def test_adversarial_baseline_makes_the_top_two_classes_equally_likely(start: str, bn_model: nn.Module) -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ig = xailab.create("integrated_gradients", bn_model, baseline=f"adversarial:{start}", n_steps=4)
    res = ig.explain(x, target="top1")
    probs, classes = res.extras["baseline_probs"], res.extras["baseline_classes"]
    assert probs.shape == (3, 2) and classes.shape == (3, 2)
    assert ((probs[:, 0] - probs[:, 1]).abs() < 1e-3).all(), probs
    # the two are the top two classes of the baseline itself
    w = res.maps[:, 0]
    assert torch.isfinite(w).all()
    b = _recover_adversarial(bn_model, x, start)
    p = torch.softmax(bn_model(b), dim=1)
    assert torch.equal(p.topk(2).indices.sort(1).values, classes.sort(1).values)
    torch.testing.assert_close(p.gather(1, classes), probs)


def _recover_adversarial(model: nn.Module, x: torch.Tensor, start: str) -> torch.Tensor:
    from xailab.methods.gradient.baselines import make_baselines

    ig = xailab.create("integrated_gradients", model, baseline=f"adversarial:{start}")
    with torch.no_grad():
        b, _ = make_baselines(ig.baseline, x, ig.space, ig, first=0)
    return b


# -- parity and seeds for the random methods ------------------------------------------------
@pytest.mark.parametrize(
    ("name", "kw"),
    [
        ("integrated_gradients", {"n_steps": 5, "baseline": "uniform"}),
        ("gradient_shap", {"n_samples": 7, "noise_level": 0.2, "background": "gaussian"}),
        ("smoothgrad", {"n_samples": 3, "method": "integrated_gradients", "n_steps": 3, "baseline": "uniform"}),
    ],
)
def test_random_methods_batch_parity_and_seed(name: str, kw: dict[str, object], bn_model: nn.Module,
                                               x64: torch.Tensor) -> None:
    runs = {bs: xailab.create(name, bn_model, batch_size=bs, seed=5, **kw).explain(x64, target=["top1", "least"])
            for bs in (1, 4, 1000)}
    for bs in (1, 4):
        torch.testing.assert_close(runs[bs].maps, runs[1000].maps, rtol=1e-9, atol=1e-12)
    other = xailab.create(name, bn_model, batch_size=1000, seed=6, **kw).explain(x64, target=["top1", "least"])
    assert not torch.allclose(other.maps, runs[1000].maps)


# -- SmoothGrad ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "kw"),
    [("saliency", {"absolute": False}), ("input_x_gradient", {}), ("integrated_gradients", {"n_steps": 4})],
)
def test_smoothgrad_without_noise_is_the_method(method: str, kw: dict[str, object], bn_model: nn.Module,
                                                 x64: torch.Tensor) -> None:
    plain = xailab.create(method, bn_model, **kw).explain(x64, target=["top1", "least"]).maps
    sg = xailab.create("smoothgrad", bn_model, method=method, n_samples=3, noise_level=0.0, **kw)
    torch.testing.assert_close(sg.explain(x64, target=["top1", "least"]).maps, plain, rtol=1e-12, atol=1e-14)
    var = xailab.create("smoothgrad", bn_model, method=method, n_samples=3, noise_level=0.0, variant="vargrad",
                        method_params=kw)
    assert var.explain(x64, target=["top1", "least"]).maps.abs().max() < 1e-12


@pytest.mark.parametrize("variant", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_is_the_statistic_of_the_method_on_its_noise(variant: str, bn_model: nn.Module,
                                                                 x64: torch.Tensor) -> None:
    sg = xailab.create("smoothgrad", bn_model, method="integrated_gradients", n_steps=3, n_samples=4,
                       noise_level=0.2, variant=variant, batch_size=5)
    res = sg.explain(x64, target=1)
    noise = sg.noise(x64)  # [N, K, C, H, W]
    ig = xailab.create("integrated_gradients", bn_model, n_steps=3)
    per = torch.stack([ig.explain(x64 + noise[:, k], target=1).maps[:, 0] for k in range(4)], dim=1)
    expected = {"smoothgrad": per.mean(1), "smoothgrad_sq": (per**2).mean(1),
                "vargrad": (per**2).mean(1) - per.mean(1) ** 2}[variant]
    torch.testing.assert_close(res.maps[:, 0], expected, rtol=1e-9, atol=1e-12)
    assert noise.std() > 0.1 * 0.2 * 0.9 * float(x64.amax() - x64.amin())  # noise ~ 0.2 x range
    assert res.evaluations == 4 + 4 * 4 * 3 + 0  # scores + samples x steps (IG's delta is not run)


def test_smoothgrad_refuses_what_it_cannot_wrap(bn_model: nn.Module) -> None:
    for bad in ("deeplift", "smoothgrad"):
        with pytest.raises(InputError, match="cannot wrap"):
            xailab.create("smoothgrad", bn_model, method=bad)
    with pytest.raises(InputError, match="variant"):
        xailab.create("smoothgrad", bn_model, variant="median")


# -- GradientSHAP ----------------------------------------------------------------------------
def test_gradient_shap_on_a_linear_model(x64: torch.Tensor) -> None:
    model = Linear((3, 16, 16)).double().eval()
    b = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    res = xailab.create("gradient_shap", model, background=b, n_samples=5, delta=True).explain(x64, target=2)
    w = model.fc.weight[2].reshape(3, 16, 16)
    torch.testing.assert_close(res.maps[:, 0], (x64 - b) * w, rtol=1e-10, atol=1e-12)
    assert res.extras["delta"].abs().max() < 1e-10


def test_gradient_shap_is_its_definition_on_its_draws(bn_model: nn.Module, x64: torch.Tensor) -> None:
    background = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    gs = xailab.create("gradient_shap", bn_model, background=background, n_samples=6, noise_level=0.1, batch_size=4)
    res = gs.explain(x64, target=0)
    d = gs.draws(x64)
    b = background[d["index"]]  # [N, S, C, H, W]
    torch.testing.assert_close(d["baselines"], b)
    xn = x64[:, None] + d["noise"]
    z = (b + d["alpha"][..., None, None, None] * (xn - b)).reshape(-1, 3, 16, 16).requires_grad_(True)
    (g,) = torch.autograd.grad(bn_model(z)[:, 0].sum(), z)
    expected = ((xn - b) * g.reshape(4, 6, 3, 16, 16)).mean(1)
    torch.testing.assert_close(res.maps[:, 0], expected, rtol=1e-9, atol=1e-12)


def test_gradient_shap_checks_its_background(bn_model: nn.Module, x64: torch.Tensor) -> None:
    with pytest.raises(InputError, match="do not match"):
        xailab.create("gradient_shap", bn_model, background=torch.zeros(2, 3, 8, 8)).explain(x64)
    with pytest.raises(InputError, match="n_samples"):
        xailab.create("gradient_shap", bn_model, n_samples=0)


def test_saliency_signed_and_absolute(bn_model: nn.Module, x64: torch.Tensor) -> None:
    signed = xailab.create("saliency", bn_model, absolute=False).explain(x64, target=1).maps
    absolute = xailab.create("saliency", bn_model).explain(x64, target=1).maps
    torch.testing.assert_close(absolute, signed.abs())
    assert (signed < 0).any()
    ixg = xailab.create("input_x_gradient", bn_model).explain(x64, target=1).maps
    torch.testing.assert_close(ixg, signed * x64[:, None])
