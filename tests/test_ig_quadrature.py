"""Integrated Gradients' adaptive rule on float64 models where the answer is known.

The exact IG of a one-hidden-layer ReLU network is computed by hand (each hidden unit's kink on
the path is a root of a linear function), the adaptive rule must converge to it; completeness
within ``tol`` on a ReLU / max-pool CNN; the budget; parity across batch sizes and across how
images are grouped; with no refinement it is the fixed trapezoid rule (nothing rescaled).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import InputError
from xailab.methods.gradient.adaptive_quadrature import interval_errors, marked, trapezoid_weights

from .conftest import TinyBNCNN, _randomise_bn


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)).double().eval()


def exact_ig(net: nn.Sequential, x: torch.Tensor, b: torch.Tensor, t: int) -> torch.Tensor:
    """IG of ``w2 . relu(W1 z + b1)`` on the path ``z = b + a d``: unit ``j`` is active on the
    part of [0, 1] where ``c_j + a s_j > 0``, so ``IG = d * sum_j w2_j W1_j |active_j|``."""
    w1, b1, w2 = net[1].weight.detach(), net[1].bias.detach(), net[3].weight[t].detach()
    d = (x - b).reshape(-1)
    c, s = w1 @ b.reshape(-1) + b1, w1 @ d
    frac = torch.empty_like(c)
    for j in range(len(c)):
        if s[j] == 0:
            frac[j] = float(c[j] > 0)
        else:
            root = float((-c[j] / s[j]).clamp(0, 1))
            frac[j] = 1 - root if s[j] > 0 else root
    return (d * ((w2 * frac) @ w1)).reshape(x.shape)


@pytest.fixture
def relu_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval().double()


@pytest.fixture
def x64(images: torch.Tensor) -> torch.Tensor:
    return images[:4].double()


def test_converges_to_the_exact_integral_of_a_piecewise_linear_net() -> None:
    net = mlp()
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = xailab.create("integrated_gradients", net, rule="adaptive", n_steps=400, tol=1e-10,
                        baseline="zeros").explain(x, target="top1")
    for i in range(len(x)):
        want = exact_ig(net, x[i], torch.zeros_like(x[i]), int(res.targets[i, 0]))
        assert torch.allclose(res.maps[i, 0], want, atol=1e-7 * float(want.abs().max())), i
    # the fixed rules at the same number of steps are far off on the same net
    fixed = xailab.create("integrated_gradients", net, rule="riemann_left", n_steps=400,
                          baseline="zeros").explain(x, target="top1")
    want0 = exact_ig(net, x[0], torch.zeros_like(x[0]), int(res.targets[0, 0]))
    assert (fixed.maps[0, 0] - want0).abs().max() > 1e3 * (res.maps[0, 0] - want0).abs().max()


@pytest.mark.parametrize("tol", [0.01, 1e-4])
def test_completeness_within_tol_on_a_relu_maxpool_cnn(tol: float, relu_cnn: nn.Module, x64: torch.Tensor) -> None:
    res = xailab.create("integrated_gradients", relu_cnn, rule="adaptive", n_steps=2000, tol=tol,
                        baseline="white").explain(x64, target=[0, 2])
    white = torch.ones_like(x64)
    with torch.no_grad():
        df = relu_cnn(x64)[:, [0, 2]] - relu_cnn(white)[:, [0, 2]]
    assert (res.extras["steps"] < 2000).all()  # stopped by tol, not by the budget
    assert (res.extras["delta"].abs() <= tol * df.abs() + 1e-12).all()
    # the delta is the map's own completeness error against an independent f(b)
    total = res.maps.flatten(2).sum(-1)
    assert torch.allclose(res.extras["delta"], total - df, atol=1e-12)


def test_budget_is_respected_and_counted(relu_cnn: nn.Module, x64: torch.Tensor) -> None:
    ig = xailab.create("integrated_gradients", relu_cnn, rule="adaptive", n_steps=7, tol=0.0, init_steps=3)
    res = ig.explain(x64, target="top1")
    assert (res.extras["steps"] == 7).all()
    assert res.evaluations == len(x64) * (1 + 7)  # the scoring pass + the nodes, no baseline pass


def test_without_refinement_it_is_the_fixed_trapezoid_rule(relu_cnn: nn.Module, x64: torch.Tensor) -> None:
    kw = {"baseline": "uniform", "seed": 3}
    adaptive = xailab.create("integrated_gradients", relu_cnn, rule="adaptive", n_steps=64, init_steps=6,
                             tol=float("inf"), **kw).explain(x64, target="top1")
    fixed = xailab.create("integrated_gradients", relu_cnn, rule="riemann_trapezoid", n_steps=6,
                          **kw).explain(x64, target="top1")
    assert (adaptive.extras["steps"] == 6).all()
    assert torch.allclose(adaptive.maps, fixed.maps, atol=1e-12)
    assert torch.allclose(adaptive.extras["delta"], fixed.extras["delta"], atol=1e-12)


def test_linear_model_needs_no_refinement() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 3)).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    res = xailab.create("integrated_gradients", model, rule="adaptive", tol=1e-9, baseline="zeros").explain(x, target=1)
    assert (res.extras["steps"] == 5).all()
    assert torch.allclose(res.maps[:, 0], x * model[1].weight[1].reshape(3, 4, 4), atol=1e-12)


def test_independent_of_batch_size_and_of_how_images_are_grouped(relu_cnn: nn.Module, x64: torch.Tensor) -> None:
    def run(bs: int, x: torch.Tensor) -> xailab.Explanation:
        return xailab.create("integrated_gradients", relu_cnn, rule="adaptive", n_steps=300, tol=1e-3,
                             batch_size=bs).explain(x, target=["top1", "least"])

    ref = run(512, x64)
    for bs in (1, 7):
        other = run(bs, x64)
        assert torch.allclose(other.maps, ref.maps, atol=1e-12)
        assert torch.equal(other.extras["steps"], ref.extras["steps"])
    for i in range(len(x64)):
        alone = run(64, x64[i : i + 1])
        assert torch.allclose(alone.maps[0], ref.maps[i], atol=1e-12)
        assert torch.equal(alone.extras["steps"][0], ref.extras["steps"][i])
    assert ref.extras["steps"].max() > ref.extras["steps"].min()  # rows do refine differently


def test_smoothgrad_refuses_the_adaptive_rule(relu_cnn: nn.Module, x64: torch.Tensor) -> None:
    sg = xailab.create("smoothgrad", relu_cnn, method="integrated_gradients", rule="adaptive", n_samples=2)
    with pytest.raises(InputError, match="fixed rule"):
        sg.explain(x64)


@pytest.mark.parametrize("kw", [{"n_steps": 1}, {"init_steps": 1}, {"tol": -1.0}])
def test_bad_settings_are_refused(kw: dict[str, float], relu_cnn: nn.Module) -> None:
    with pytest.raises(InputError):
        xailab.create("integrated_gradients", relu_cnn, rule="adaptive", **kw)


def test_marking_and_weights() -> None:
    a = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(trapezoid_weights(a), torch.tensor([0.125, 0.25, 0.375, 0.25], dtype=torch.float64))
    # f = max(0, a - 0.3): gradient 0 then 1; only the interval holding the kink has an error
    f, p = (a - 0.3).clamp(min=0), (a > 0.3).double()
    e = interval_errors(a, p, f)
    assert abs(float(e[0])) < 1e-15 and abs(float(e[2])) < 1e-15 and abs(float(e[1])) > 0.01
    assert marked(e, a[1:] - a[:-1], room=10).tolist() == [1]
    assert marked(e, a[1:] - a[:-1], room=0).tolist() == []
    e2 = torch.tensor([0.1, -0.6, 0.3], dtype=torch.float64)
    assert marked(e2, torch.ones(3, dtype=torch.float64), room=10).tolist() == [1]  # holds half
    assert marked(torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64), torch.ones(3, dtype=torch.float64),
                  room=10).tolist() == [0, 1]
