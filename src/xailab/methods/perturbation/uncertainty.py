"""How far a surrogate's superpixel weights would move with other samples: what ``"auto"`` stops on.

LIME and KernelSHAP fit a linear surrogate to the scores of random coalitions; another seed draws
other coalitions and gives other weights. With ``num_samples="auto"`` they sample in rounds and,
after each round, estimate that seed-to-seed spread from the samples they already have:

1. **The covariance of the weights**, by the cluster-robust sandwich of the weighted least
   squares fit (White 1980; Liang & Zeger 1986): with ``M = X' W X (+ alpha I)`` and the
   residuals ``r``, ``Cov(c) = M^-1 (sum_k g_k g_k') M^-1`` where ``g_k = sum_{i in k} x_i w_i r_i``
   over the clusters ``k`` of the design, scaled by ``K / (K - 1) * (n - 1) / (n - p)`` (CR1).
   Clusters are the complement pairs ``(z, 1 - z)`` the samplers draw (a pair drawn again
   joins its first draw's cluster): the part of the score that a pair cancels in the fit (its
   even part) cancels in ``g_k`` too, so the estimate measures the noise the paired design
   actually leaves; for KernelSHAP, whose pairs cancel it exactly, the degrees of freedom are
   ``K - p`` (pairs) rather than ``n - p`` (rows). What the linear surrogate cannot
   express is the noise; the estimate needs no model of it.
2. **The rank error**: ``1 - E[rho(c_1, c_2)]`` with ``c_1, c_2 ~ N(c, Cov)`` two independent
   re-estimates and ``rho`` Spearman's rank correlation of the weights (Monte Carlo, drawn from
   the image's generator, so a seed fixes it too); with ``top_k`` it is ``1 -`` the expected
   share of the top-``k`` superpixels (largest weights) that two re-estimates have in common.

    coef, intercept, cov = ridge_with_covariance(z, y, w, alpha=1.0, clusters=pairs)
    rank_error(coef, cov, torch.Generator().manual_seed(0))   # [T], e.g. 0.03: rho ~ 0.97

The sandwich treats the samples as independent draws; the orthogonal arrays of LIME's paired
sampler are more balanced than that, so for LIME the estimate errs on the safe side (it
overstates the spread a little and stops a little late).
"""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.methods.perturbation.regression import constrained_wls, weighted_ridge

_F64 = torch.float64


def cluster_sandwich(x: Tensor, w: Tensor, r: Tensor, bread: Tensor, clusters: Tensor, p: int,
                     *, per_cluster: bool = False) -> Tensor:
    """``[T, S, S]``: the CR1 cluster-robust covariance for design ``x [n, S]``, weights ``w [n]``,
    residuals ``r [n, T]``, ``bread = M^-1 [S, S]``, cluster ids ``clusters [n]`` and ``p``
    parameters. ``per_cluster``: the degrees of freedom are ``K - p`` (clusters), not ``n - p``
    (rows): right where only a difference within each pair carries information (KernelSHAP's
    complement pairs, whose even part cancels exactly)."""
    n, s = x.shape
    if n == 0 or s == 0:
        return torch.zeros(r.shape[1], s, s, dtype=_F64)
    clusters = torch.unique(clusters, return_inverse=True)[1]
    k = int(clusters.max()) + 1
    per_row = (x * w.reshape(-1, 1))[:, :, None] * r[:, None, :]  # [n, S, T]
    g = torch.zeros(k, s, r.shape[1], dtype=_F64).index_add_(0, clusters, per_row)
    meat = torch.einsum("kst,kut->tsu", g, g)
    n_eff = k if per_cluster else n
    scale = (k / max(k - 1, 1)) * ((n_eff - 1) / max(n_eff - p, 1))
    return scale * bread @ meat @ bread


def jackknife_sandwich(x: Tensor, w: Tensor, r: Tensor, bread: Tensor, clusters: Tensor,
                       fixed: Tensor) -> Tensor:
    """``[T, S, S]``: the CR3 (cluster jackknife) covariance over the drawn rows only.

    A design with an enumerated part (``fixed [n]``: rows every seed has) varies between seeds
    only through its drawn rows, so only their clusters enter the meat; each cluster's residuals
    are taken as if the fit had left it out, ``(I - H_kk)^-1 r_k`` with ``H = X M^-1 X' W``,
    scaled by ``(K - 1) / K``. With few drawn clusters (fewer than parameters) the CR1 estimate
    understates the spread (1.4x in standard error at 16 pairs for 16 superpixels, measured over
    200 seeds); the jackknife overstates it (0.81x at 16 pairs, 0.93x at 48, 0.96x at 128), the
    safe side for a stopping rule.
    """
    keep = ~fixed
    x, w, r, clusters = x[keep], w[keep], r[keep], clusters[keep]
    n, s = x.shape
    if n == 0 or s == 0:
        return torch.zeros(r.shape[1], s, s, dtype=_F64)
    ids = torch.unique(clusters, return_inverse=True)[1]
    k = int(ids.max()) + 1
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=k)
    sorted_ids = ids[order]
    within = torch.arange(n) - (torch.cumsum(counts, 0) - counts)[sorted_ids]
    m = int(counts.max())
    xs = torch.zeros(k, m, s, dtype=_F64).index_put_((sorted_ids, within), x[order])
    ws = torch.zeros(k, m, dtype=_F64).index_put_((sorted_ids, within), w[order])
    rs = torch.zeros(k, m, r.shape[1], dtype=_F64).index_put_((sorted_ids, within), r[order])
    hat = xs @ bread @ xs.transpose(1, 2) * ws[:, None, :]  # padding rows: zero, identity below
    left_out = torch.linalg.solve(torch.eye(m, dtype=_F64) - hat, rs)
    g = torch.einsum("kms,km,kmt->kst", xs, ws, left_out)
    meat = torch.einsum("kst,kut->tsu", g, g)
    return ((k - 1) / max(k, 1)) * bread @ meat @ bread


def ridge_with_covariance(z: Tensor, y: Tensor, w: Tensor, alpha: float,
                          clusters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """LIME's ridge fit (:func:`~xailab.methods.perturbation.regression.weighted_ridge`) and the
    covariance of its coefficients: ``(coef [T, S], intercept [T], cov [T, S, S])``."""
    coef, intercept = weighted_ridge(z, y, w, alpha)
    z, y, w = z.to("cpu", _F64), y.to("cpu", _F64), w.to("cpu", _F64)
    zc = z - (w @ z) / w.sum()
    r = y - intercept - z @ coef.T
    bread = torch.linalg.pinv((zc * w.reshape(-1, 1)).T @ zc + alpha * torch.eye(z.shape[1], dtype=_F64))
    return coef, intercept, cluster_sandwich(zc, w, r, bread, clusters, z.shape[1] + 1)


def shapley_with_covariance(z: Tensor, y: Tensor, w: Tensor, f_empty: Tensor, f_full: Tensor,
                            clusters: Tensor, *, fixed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """KernelSHAP's constrained fit (:func:`~xailab.methods.perturbation.regression.constrained_wls`)
    and the covariance of all ``S`` values: ``(phi [T, S], cov [T, S, S])``. The last value is
    the sum's remainder, ``phi_S = total - sum_{j<S} phi_j``, so its row is minus the others'.
    ``fixed [n]``: rows every seed has (the enumerated edges of
    :func:`~xailab.methods.perturbation.sampling.shapley_stream`): :func:`jackknife_sandwich`."""
    phi = constrained_wls(z, y, w, f_empty, f_full)
    s = z.shape[1]
    if s < 2 or len(z) == 0:
        return phi, torch.zeros(phi.shape[0], s, s, dtype=_F64)
    z, y, w = z.to("cpu", _F64), y.to("cpu", _F64), w.to("cpu", _F64)
    last = z[:, -1:]
    x = z[:, :-1] - last
    r = (y - f_empty.to(_F64) - last * (f_full - f_empty).to(_F64)) - x @ phi[:, :-1].T
    bread = torch.linalg.pinv((x * w.reshape(-1, 1)).T @ x)
    if fixed is not None and bool(fixed.any()):
        head = jackknife_sandwich(x, w, r, bread, clusters, fixed)
    else:
        head = cluster_sandwich(x, w, r, bread, clusters, s - 1, per_cluster=True)
    lift = torch.cat([torch.eye(s - 1, dtype=_F64), -torch.ones(1, s - 1, dtype=_F64)])  # phi = lift head + c
    return phi, lift @ head @ lift.T


def ranks(v: Tensor) -> Tensor:
    """Ranks ``0 .. S-1`` along the last dimension (no ties in continuous draws)."""
    return v.argsort(dim=-1).argsort(dim=-1).to(_F64)


def spearman_rows(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho between matching rows of ``a`` and ``b`` ``[m, S]``."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    den = (ra.norm(dim=-1) * rb.norm(dim=-1)).clamp_min(1e-300)
    return (ra * rb).sum(-1) / den


def rank_error(coef: Tensor, cov: Tensor, g: torch.Generator, *, top_k: int | None = None,
               draws: int = 32) -> Tensor:
    """``[T]``: the expected rank disagreement of two independent re-estimates of ``coef [T, S]``
    with covariance ``cov [T, S, S]`` (see the module docstring), ``draws`` pairs each."""
    t, s = coef.shape
    if s < 2:
        return torch.zeros(t, dtype=_F64)
    vals, vecs = torch.linalg.eigh(cov.to(_F64))
    root = vecs * vals.clamp_min(0).sqrt()[:, None, :]  # root @ root' = cov
    noise = torch.randn(t, 2 * draws, s, generator=g, dtype=_F64)
    sample = coef.to(_F64)[:, None, :] + noise @ root.transpose(1, 2)  # [T, 2 draws, S]
    a, b = sample[:, 0::2].reshape(-1, s), sample[:, 1::2].reshape(-1, s)
    if top_k is None:
        agree = spearman_rows(a, b)
    else:
        k = min(top_k, s)
        top_a = torch.zeros_like(a, dtype=torch.bool).scatter_(1, a.topk(k, dim=1).indices, True)
        top_b = torch.zeros_like(b, dtype=torch.bool).scatter_(1, b.topk(k, dim=1).indices, True)
        agree = (top_a & top_b).sum(1).to(_F64) / k
    return 1.0 - agree.reshape(t, draws).mean(1)
