"""KernelSHAP ``shrinkage="edges"``: empirical Bayes toward the edge screen, exact when nothing is
sampled, honest in its error, and agreeing with exact Shapley values on a small case."""

from __future__ import annotations

import math

import pytest
import torch

import xailab
from xailab.core.errors import InputError
from xailab.methods.perturbation.sampling import is_edge, shapley_stream, shapley_stream_weights
from xailab.methods.perturbation.segmentation import superpixel_fill
from xailab.methods.perturbation.shrinkage import edge_prior, shrink_to_edges
from xailab.methods.perturbation.uncertainty import shapley_with_covariance

from .conftest import TinyCNN

F64 = torch.float64


def game(s: int, third: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return (torch.randn(s, dtype=F64), torch.randn(s, s, dtype=F64) * 0.3,
            torch.randn(s, s, s, dtype=F64) * third)


def play(z: torch.Tensor, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    zf = z.to(F64)
    out = zf @ c + torch.einsum("ni,ij,nj->n", zf, a, zf) + torch.einsum("ni,ijk,nj,nk->n", zf, b, zf, zf)
    return out.reshape(-1, 1)


def exact_shapley(v: torch.Tensor, s: int) -> torch.Tensor:
    """Shapley values from the values ``v [2^S]`` of every coalition (bit i of the index: i kept)."""
    phi = torch.zeros(s, dtype=F64)
    for code in range(2**s):
        k = bin(code).count("1")
        for i in range(s):
            if not code >> i & 1:
                phi[i] += math.factorial(k) * math.factorial(s - k - 1) / math.factorial(s) * (v[code | 1 << i] - v[code])
    return phi


def all_rows(s: int) -> torch.Tensor:
    return (torch.arange(2**s).reshape(-1, 1) >> torch.arange(s)) & 1 == 1


def test_the_edge_screen_is_exact_for_pairwise_games() -> None:
    s = 8
    c, a, _ = game(s)
    z = all_rows(s)
    v = play(z, c, a, torch.zeros(s, s, s, dtype=F64))
    stream = shapley_stream(s, torch.Generator().manual_seed(0))
    edges = next(stream)
    prior = edge_prior(edges, play(edges, c, a, torch.zeros(s, s, s, dtype=F64)), v[0], v[-1])
    assert prior is not None
    torch.testing.assert_close(prior[0], exact_shapley(v[:, 0], s), rtol=0, atol=1e-10)
    assert edge_prior(edges[:-2], v[:1].expand(2 * s - 2, 1), v[0], v[-1]) is None  # an edge missing


def test_with_every_coalition_nothing_moves() -> None:
    """All 2^S - 2 coalitions with their kernel weights, every row enumerated (none drawn): the
    regression is exact, its covariance zero, and shrinking leaves the exact Shapley values."""
    s = 8
    c, a, b = game(s)
    z = all_rows(s)
    v = play(z, c, a, b)
    inner = z[1:-1]
    k = inner.sum(1).to(F64)
    w = (s - 1) / (torch.tensor([math.comb(s, int(n)) for n in k], dtype=F64) * k * (s - k))
    phi, cov = shapley_with_covariance(inner, v[1:-1], w, v[0], v[-1], torch.arange(len(inner)),
                                       fixed=torch.ones(len(inner), dtype=torch.bool))
    prior = edge_prior(inner, v[1:-1], v[0], v[-1])
    assert prior is not None
    shrunk, cov2 = shrink_to_edges(phi, cov, prior)
    exact = exact_shapley(v[:, 0], s)
    torch.testing.assert_close(phi[0], exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(shrunk[0], exact, rtol=0, atol=1e-9)
    assert float(cov2.abs().max()) == 0.0


def test_the_claimed_error_covers_the_error_against_exact_values() -> None:
    """Over 120 seeds with few drawn pairs, the claimed standard error of the shrunk values is at
    least their root mean squared error against the exact Shapley values (spread and bias: the
    fitted prior scale moves with the samples, the pull toward the screen is biased)."""
    s = 12
    c, a, b = game(s, third=0.15)
    v = play(all_rows(s), c, a, b)[:, 0]
    exact = exact_shapley(v, s)
    phis, ses = [], []
    for seed in range(120):
        stream = shapley_stream(s, torch.Generator().manual_seed(seed), pairs=16)
        z = torch.cat([next(stream), next(stream)])
        y = play(z, c, a, b)
        phi, cov = shapley_with_covariance(z, y, shapley_stream_weights(z), v[:1], v[-1:], torch.arange(len(z)) // 2,
                                           fixed=is_edge(z))
        prior = edge_prior(z, y, v[:1], v[-1:])
        assert prior is not None
        phi, cov = shrink_to_edges(phi, cov, prior)
        phis.append(phi[0])
        ses.append(cov[0].diagonal().clamp_min(0).sqrt())
    ratio = ((torch.stack(phis) - exact) ** 2).mean(0).sqrt() / torch.stack(ses).mean(0)
    assert float(ratio.median()) < 1.0, ratio
    assert float(ratio.median()) > 0.6, ratio  # and not uselessly loose
    assert float(ratio.max()) < 2.0, ratio  # the worst player: 1.7x (the prior is one scale for all)


def test_auto_with_shrinkage_agrees_with_exact_shapley_values() -> None:
    """A tiny CNN on 10 superpixels: every coalition enumerated by hand gives the exact values."""
    model = TinyCNN().double().eval()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    r, col = torch.arange(16) // 8, (torch.arange(16) // 3).clamp(max=4)
    seg = r[:, None] * 5 + col[None, :]
    s = 10
    fill = superpixel_fill(x[0], seg, s, None)
    with torch.no_grad():
        target = int(model(x).argmax())
        keep = all_rows(s)[:, seg.reshape(-1)].reshape(2**s, 1, 16, 16)
        v = model(torch.where(keep, x[0], fill))[:, target]
    exact = exact_shapley(v.to(F64), s)
    res = xailab.create("kernel_shap", model, num_samples="auto", shrinkage="edges", tol=0.002, max_samples=900,
                        segmentation=seg, seed=0).explain(x, target=target)
    phi = res.extras["weights"][0, 0]
    torch.testing.assert_close(phi.sum(), exact.sum(), rtol=0, atol=1e-9)  # efficiency stays exact
    assert float((phi - exact).abs().max()) < 0.1 * float(exact.abs().max()), (phi, exact)
    assert res.params["shrinkage"] == "edges"


def test_shrinkage_needs_auto_and_a_known_name() -> None:
    with pytest.raises(InputError, match="num_samples='auto'"):
        xailab.create("kernel_shap", TinyCNN(), num_samples=100, shrinkage="edges")
    with pytest.raises(InputError, match="shrinkage"):
        xailab.create("kernel_shap", TinyCNN(), num_samples="auto", shrinkage="james")


