"""``num_samples="auto"``: LIME and KernelSHAP stop when the superpixel ranking is stable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import InputError
from xailab.methods.perturbation.adaptive import Schedule
from xailab.methods.perturbation.sampling import is_edge, shapley_stream, shapley_stream_weights
from xailab.methods.perturbation.segmentation import superpixel_fill
from xailab.methods.perturbation.uncertainty import (
    rank_error,
    ridge_with_covariance,
    shapley_with_covariance,
)

from .conftest import TinyCNN
from .test_perturbation import Linear, blocks, contributions

SUPERPIXEL = ["lime", "kernel_shap"]


class Noisy(nn.Module):
    """Scores that are pseudo-random in the input: no linear surrogate explains them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.sin(1e4 * x.flatten(1).cumsum(1)[:, -1:] * torch.arange(1, 4, dtype=x.dtype))
        return h * 10.0


@pytest.fixture
def x64() -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


@pytest.mark.parametrize("name", SUPERPIXEL)
def test_auto_stops_after_one_round_on_a_linear_model(name: str, x64: torch.Tensor) -> None:
    model = Linear((3, 16, 16)).double().eval()
    seg = blocks(16, 16, 4)  # 16 superpixels
    res = xailab.create(name, model, num_samples="auto", max_samples=2000, segmentation=seg).explain(
        x64, target=torch.tensor([[0, 2], [1, 2]]))
    first = Schedule(0.05, 2000).next_round(0, 16)
    assert res.extras["samples"].tolist() == [first, first]
    # KernelSHAP fits a linear model exactly; LIME's ridge penalty leaves a small misfit
    assert float(res.extras["rank_error"].max()) < (1e-6 if name == "kernel_shap" else 0.05)
    assert res.evaluations <= len(x64) * (1 + first)
    if name == "kernel_shap":  # the linear model's superpixel effects are its Shapley values
        for i in range(2):
            fill = superpixel_fill(x64[i], seg, 16, None)
            for j, t in enumerate(res.targets[i].tolist()):
                torch.testing.assert_close(res.extras["weights"][i, j], contributions(model, x64[i], fill, seg, t),
                                           rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", SUPERPIXEL)
def test_auto_runs_to_max_samples_on_a_noisy_model(name: str, x64: torch.Tensor) -> None:
    res = xailab.create(name, Noisy(), num_samples="auto", max_samples=150, segmentation=blocks(16, 16, 4),
                        hide_color=0.0).explain(x64)
    assert res.extras["samples"].tolist() == [150, 150]
    assert float(res.extras["rank_error"].min()) > 0.05
    assert bool((res.extras["sample_evaluations"] <= 150).all())
    assert res.evaluations == len(x64) + int(res.extras["sample_evaluations"].sum())


@pytest.mark.parametrize("name", SUPERPIXEL)
def test_auto_is_reproducible_whatever_the_batch_size(name: str, x64: torch.Tensor) -> None:
    model = TinyCNN().double().eval()
    kw = {"num_samples": "auto", "tol": 0.02, "max_samples": 300, "seed": 3}
    big = xailab.create(name, model, batch_size=4096, **kw).explain(x64, target=["top1", "top2"])
    small = xailab.create(name, model, batch_size=1, **kw).explain(x64, target=["top1", "top2"])
    again = xailab.create(name, model, batch_size=4096, **kw).explain(x64, target=["top1", "top2"])
    torch.testing.assert_close(small.maps, big.maps, rtol=1e-6, atol=1e-9)
    assert torch.equal(small.extras["samples"], big.extras["samples"])
    torch.testing.assert_close(again.maps, big.maps, rtol=0, atol=0)
    # one image alone draws what it draws in the batch
    alone = xailab.create(name, model, **kw).explain(x64[:1], target=["top1", "top2"])
    torch.testing.assert_close(alone.maps[0], big.maps[0], rtol=1e-6, atol=1e-9)
    assert big.params["num_samples"] == "auto" and big.params["tol"] == 0.02


def test_the_sandwich_is_the_spread_over_repeated_samples() -> None:
    """On y = z . c + heteroscedastic noise, the estimated covariance matches the coefficients'
    spread over 400 independent data sets (within Monte Carlo error)."""
    g = torch.Generator().manual_seed(0)
    s, n, reps = 6, 120, 400
    c = torch.linspace(-1, 1, s, dtype=torch.float64)
    coefs, ses = [], []
    for _ in range(reps):
        z = torch.rand(n, s, generator=g) < 0.5
        noise = torch.randn(n, generator=g, dtype=torch.float64) * (0.5 + z[:, 0].double())
        y = (z.double() @ c + noise).reshape(-1, 1)
        w = torch.rand(n, generator=g, dtype=torch.float64) + 0.5
        coef, _, cov = ridge_with_covariance(z, y, w, 0.0, torch.arange(n))
        coefs.append(coef[0])
        ses.append(cov[0].diagonal().sqrt())
    ratio = torch.stack(coefs).std(0) / torch.stack(ses).mean(0)
    assert bool(((ratio > 0.85) & (ratio < 1.15)).all()), ratio


def test_shapley_covariance_counts_pairs_not_rows() -> None:
    """With complement pairs the even part of the score cancels: a purely even score gives
    exact values (zero covariance), and the estimated spread matches the real one."""
    g = torch.Generator().manual_seed(1)
    s = 8
    stream = shapley_stream(s, g, pairs=64)
    z = torch.cat([next(stream) for _ in range(2)])
    zf = z.double()
    c = torch.arange(s, dtype=torch.float64)
    even = ((zf.sum(1) - s / 2) ** 2).reshape(-1, 1)  # the same for z and 1 - z
    y = zf @ c.reshape(-1, 1) + even + s**2 / 4
    phi, cov = shapley_with_covariance(z, y, torch.ones(len(z), dtype=torch.float64), torch.tensor([s**2 / 4]),
                                       torch.tensor([float(c.sum()) + s**2 / 4]), torch.arange(len(z)) // 2)
    torch.testing.assert_close(phi[0], c, rtol=0, atol=1e-9)
    assert float(cov.abs().max()) < 1e-18


def test_rank_error_is_zero_without_noise_and_large_with_much() -> None:
    coef = torch.linspace(0, 1, 10, dtype=torch.float64).reshape(1, -1)
    g = torch.Generator().manual_seed(0)
    assert float(rank_error(coef, torch.zeros(1, 10, 10, dtype=torch.float64), g)[0]) == 0.0
    big = torch.eye(10, dtype=torch.float64).reshape(1, 10, 10) * 100.0
    assert float(rank_error(coef, big, g)[0]) > 0.7  # two re-estimates barely correlated
    assert float(rank_error(coef, big, g, top_k=3)[0]) > 0.4


@pytest.mark.parametrize("kw", [{"num_samples": "many"}, {"num_samples": "auto", "tol": 0.0},
                                {"num_samples": "auto", "max_samples": 4}, {"num_samples": "auto", "top_k": 0}])
def test_auto_refuses_bad_settings(kw: dict[str, object]) -> None:
    with pytest.raises(InputError):
        xailab.create("lime", TinyCNN(), **kw)


def test_first_round_leaves_degrees_of_freedom() -> None:
    schedule = Schedule(0.05, 10_000)
    for s in (4, 25, 80):
        first = schedule.next_round(0, s)
        assert (first - 1) // 2 >= s + 16 and first % 2 == 1
        assert schedule.next_round(first, s) == 2 * max(16, first // 8)  # a quarter more


def test_the_docs_example_runs() -> None:
    """The ``num_samples="auto"`` example of docs/methods/perturbation.md, as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "perturbation.md").read_text()
    blocks_ = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    example = next(b for b in blocks_ if 'num_samples="auto"' in b)
    exec(compile(example, "perturbation.md", "exec"), {})


def test_shapley_stream_enumerates_the_edges_first_and_weighs_them_by_their_mass() -> None:
    """KernelSHAP's rounds start with every coalition of one superpixel and of all but one
    (exactly once each, as complement pairs), then draw the other sizes only; the weights give
    the edge sizes exactly their share of the Shapley kernel's mass."""
    s = 10
    stream = shapley_stream(s, torch.Generator().manual_seed(0), pairs=64)
    edges = next(stream)
    drawn = next(stream)
    k = edges.sum(1)
    assert len(edges) == 2 * s and bool(((k == 1) | (k == s - 1)).all())
    assert len(torch.unique(edges, dim=0)) == 2 * s
    assert bool((edges[0::2] == ~edges[1::2]).all())
    assert bool(((drawn.sum(1) > 1) & (drawn.sum(1) < s - 1)).all())
    z = torch.cat([edges, drawn])
    w = shapley_stream_weights(z)
    sizes = torch.arange(1, s, dtype=torch.float64)
    mass = (s - 1) / (sizes * (s - sizes))
    assert abs(float(w.sum()) - 1.0) < 1e-12
    assert abs(float(w[: 2 * s].sum()) - float((mass[0] + mass[-1]) / mass.sum())) < 1e-12


def test_the_jackknife_errs_on_the_safe_side_with_few_drawn_pairs() -> None:
    """With the edges enumerated and few drawn pairs, the estimated spread of the Shapley values
    is at least the real one over seeds (a stopping rule must not stop early)."""
    s = 12
    torch.manual_seed(0)
    c = torch.randn(s, dtype=torch.float64)
    a = torch.randn(s, s, dtype=torch.float64) * 0.3
    b = torch.randn(s, s, s, dtype=torch.float64) * 0.05

    def f(z: torch.Tensor) -> torch.Tensor:
        zf = z.double()
        odd = zf @ c + torch.einsum("ni,ij,nj->n", zf, a, zf) + torch.einsum("ni,ijk,nj,nk->n", zf, b, zf, zf)
        return odd.reshape(-1, 1)

    f0, f1 = f(torch.zeros(1, s, dtype=torch.bool))[0], f(torch.ones(1, s, dtype=torch.bool))[0]
    phis, ses = [], []
    for seed in range(120):
        stream = shapley_stream(s, torch.Generator().manual_seed(seed), pairs=16)
        z = torch.cat([next(stream), next(stream)])
        phi, cov = shapley_with_covariance(z, f(z), shapley_stream_weights(z), f0, f1, torch.arange(len(z)) // 2,
                                           fixed=is_edge(z))
        phis.append(phi[0])
        ses.append(cov[0].diagonal().clamp_min(0).sqrt())
    ratio = torch.stack(phis).std(0) / torch.stack(ses).mean(0)
    assert float(ratio.median()) < 1.0, ratio
    assert float(ratio.median()) > 0.6, ratio  # and not uselessly loose
