"""KernelSHAP ``shrinkage="edges"``: the sampled Shapley values pulled toward a screening estimate.

KernelSHAP's ``"auto"`` rounds enumerate the ``2 S`` edge coalitions first (one superpixel kept,
one hidden); every seed has them, so they give each superpixel a seed-free *screening*
estimate, the mean of its first and last marginal contributions::

    m_i = ((f({i}) - f(0)) + (f(1) - f(1 - {i}))) / 2 + ((f(1) - f(0)) - sum_j m_j) / S

(exact for a game with no interactions beyond pairs; the last term makes them sum to the total).
The sampled estimate ``phi`` (the constrained regression, covariance ``Sigma`` from the
jackknife sandwich) is then combined with it by empirical Bayes (James & Stein 1961; Efron &
Morris 1973): with the prior ``phi_i ~ N(m_i, tau^2)``, ``tau^2`` matched to the moments
``E (phi_i - m_i)^2 = tau^2 + Sigma_ii`` (never below the standard error of that match, so a
screen the noise cannot tell from exact is not taken as exact), the posterior mean is::

    phi'_i = m_i + k_i (phi_i - m_i)        k_i = tau^2 / (tau^2 + Sigma_ii)

and the efficiency constraint is restored by spreading ``f(1) - f(0) - sum phi'`` in proportion
to the posterior variances ``k_i Sigma_ii``. Its spread over seeds is ``J Sigma J'``, ``J`` the
Jacobian of ``phi'`` in ``phi`` (through ``k`` and the fitted ``tau``, and the projection ``P``
that restores the sum; delta method). The pull also moves the values away from the truth, by
``(1 - k_i)(phi_i - m_i)``, of expected square ``(1 - k_i)^2 tau^2`` under the prior. The
covariance returned (the stopping rule's, and ``weights_se``) is the sum
``J Sigma J' + P diag((1 - k)^2 tau^2) P'``, the expected squared error against the exact values
(at the fitted ``tau``, ``k^2 Sigma + (1 - k)^2 tau^2 = k Sigma``, the posterior variance), not only
the spread between seeds: counting only the spread, the rule stopped ResNet-20 images after the
first round at a seed-to-seed rho of 0.965 but 0.91 against the reference. With every coalition
evaluated (``Sigma = 0``) nothing moves and the values are exact; as samples grow ``k -> 1``.

Checked over 120 seeds on a 12-player game with third-order interactions (exact values by
enumeration): the root mean squared error against the exact values is 0.93x the claimed
standard error (median over players; 1.3-1.7x for the worst player). A prior scale per superpixel
(``tau_i^2 ~ m_i^2``, trusting the screen more where it finds little) gave more seed stability
but missed the truth by 2x for its worst player, so one scale is used. On the trained CIFAR
ResNet-20 (8 images, 3 seed pairs, 250 evaluations each, a fixed budget), the seed-to-seed rank
correlation rose from 0.92 to 0.96 and the agreement with an 8,000-sample reference from 0.954
to 0.960; at 450 evaluations both agree with the reference alike.

    phi, cov = shrink_to_edges(phi, cov, prior)      # [T, S], [T, S, S]
"""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.methods.perturbation.sampling import is_edge

_F64 = torch.float64


def edge_prior(z: Tensor, y: Tensor, f_empty: Tensor, f_full: Tensor) -> Tensor | None:
    """``[T, S]`` screening estimates ``m`` from the edge rows of ``z [n, S]`` (scores ``y [n, T]``),
    or None when some of the ``2 S`` edge coalitions are missing."""
    s = z.shape[1]
    edge = is_edge(z)
    if s < 4:
        return None
    zs, ys = z[edge], y[edge].to(_F64)
    single, rest = zs.sum(1) == 1, zs.sum(1) == s - 1
    if len(torch.unique(zs, dim=0)) < 2 * s:
        return None
    f0, f1 = f_empty.to(_F64).reshape(-1), f_full.to(_F64).reshape(-1)
    up = torch.zeros(s, len(f0), dtype=_F64)
    down = torch.zeros(s, len(f0), dtype=_F64)
    up[zs[single].to(torch.long).argmax(1)] = ys[single] - f0
    down[(~zs[rest]).to(torch.long).argmax(1)] = f1 - ys[rest]
    m = ((up + down) / 2).T  # [T, S]
    return m + ((f1 - f0) - m.sum(1)).reshape(-1, 1) / s


def shrink_to_edges(phi: Tensor, cov: Tensor, prior: Tensor) -> tuple[Tensor, Tensor]:
    """``(phi' [T, S], cov' [T, S, S])``: the empirical-Bayes combination of the module docstring."""
    phi, cov, prior = phi.to(_F64), cov.to(_F64), prior.to(_F64)
    out, covs = [], []
    for p, c, m in zip(phi, cov, prior, strict=True):
        shrunk, jac, bias = _shrink_one(p, c, m)
        covs.append(jac @ c @ jac.T + bias)
        out.append(shrunk)
    return torch.stack(out), torch.stack(covs)


def _shrink_one(p: Tensor, c: Tensor, m: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One target: ``phi'``, its Jacobian in ``phi`` (through ``k`` and the fitted ``a``) and the
    expected square of its bias under the prior, ``P diag((1 - k)^2 tau) P'``."""
    sig = torch.diagonal(c).clamp_min(0)
    d = p - m
    shape = torch.ones_like(m)  # one prior scale (see the module docstring)
    excess = float((d**2 - sig).sum())
    # the moment estimate's standard error (d_i ~ N(., sig_i)): a is never taken below it, so a
    # screen the noise cannot tell from exact is not claimed exact (no collapse onto m at a = 0)
    floor = float((2 * sig**2 + 4 * d**2 * sig).sum().sqrt())
    a = max(excess, floor) / float(shape.sum().clamp_min(1e-300))
    tau = a * shape
    total = (tau + sig).clamp_min(1e-300)
    k = torch.where(sig > 0, tau / total, torch.ones_like(sig))
    jac = torch.diag(k)
    if excess > floor:  # d a / d d_j = 2 d_j / sum(shape); d k_i / d a = shape_i sig_i / (tau_i + sig_i)^2
        jac = jac + torch.outer(d * shape * sig / total**2, 2 * d / shape.sum())
    post = k * sig
    shrunk = m + k * d
    bias = torch.diag((1 - k) ** 2 * tau)
    if float(post.sum()) > 0:
        share = post / post.sum()
        shrunk = shrunk + share * (p.sum() - shrunk.sum())
        proj = torch.eye(len(p), dtype=_F64) - share[:, None]
        jac, bias = proj @ jac, proj @ bias @ proj.T
    return shrunk, jac, bias
