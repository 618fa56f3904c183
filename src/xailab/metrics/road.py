"""ROAD: RemOve And Debias (Rong, Leemann et al. 2022, "A consistent and efficient evaluation
strategy for attribution methods", ICML, arXiv:2202.00449), with no retraining.

Deletion curves fill removed pixels with a constant, which leaks the removal's shape to the
model (the class can be read off the mask). ROAD fills them by *noisy linear imputation*: every
removed pixel takes the weighted mean of its 8 neighbours (orthogonal weight 1/6, diagonal 1/12,
weights of neighbours outside the image dropped), known neighbours fixed, removed ones solved
jointly, plus Gaussian noise of standard deviation ``noise``::

    for a removed pixel i:   sum_j w_ij (u_i - u_j) = 0,   u_j = x_j for a kept neighbour j

The linear system is symmetric positive definite and its matrix depends on the mask only: it is
factored once per image and level by a sparse direct solver (SuperLU, minimum-degree ordering,
no pivoting) and the factor serves every channel, as Quantus and the authors' code solve it.
``impute(..., solver="cg")`` solves it instead by conjugate gradients on all rows of a batch at
once (shifted sums apply the matrix; on the model's device): the same numbers to ``tol``, but
hundreds of iterations on large images (~650 at 224 px).

For each percentage ``p`` the top ``p`` % pixels of the map (most relevant first, "MoRF";
``order="lerf"``: least relevant first) are removed and the model scores the imputed image.
Lower area under the MoRF curve is better. ``output="accuracy"`` scores 1 when the top class
is still the explained one (Quantus's ROAD), ``"probability"`` the class probability.

    c = road(model, images, saliency, percentages=range(1, 100, 2))
    c.auc        # [N] area under the score curve (lower is better for MoRF)
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.metrics.faithfulness import Curves
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, check_images, maps_for_images, resolve_target
from xailab.metrics.perturb import Output, class_scores, pixel_ranks, scores_of_rows


def _neighbours(v: Tensor) -> Tensor:
    """The weighted sum of each pixel's 8 neighbours of ``v [R, H, W]`` (orthogonal 1/6, diagonal
    1/12, zero outside the image), separably: ``([1, 2, 1] x [1, 2, 1]) / 12`` minus the centre."""
    h, w = v.shape[-2:]
    p = F.pad(v, (1, 1, 1, 1))
    t = p[..., :, :w] + p[..., :, 2:] + 2 * p[..., :, 1:w + 1]
    return (t[..., :h, :] + t[..., 2:, :] + 2 * t[..., 1:h + 1, :]) / 12 - v / 3


#: the 8 neighbours' offsets (row, column) and weights
OFFSETS = [(-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6),
           (0, 1, 1 / 6), (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12)]


def impute(images: Tensor, removed: Tensor, *, solver: Literal["direct", "cg"] = "direct",
           tol: float = 1e-8, max_iter: int = 10_000) -> Tensor:
    """Linear imputation (module docstring, without the noise) of ``images [B, C, H, W]`` where
    ``removed [B, H, W]`` is True, in float64: by one sparse factorisation per image shared by
    its channels (``solver="direct"``), or by conjugate gradients to relative residual ``tol``
    (``"cg"``). A row with every pixel removed has nothing to impute from: it becomes 0."""
    if solver == "direct":
        return _impute_direct(images, removed)
    if solver != "cg":
        raise InputError(f"solver must be 'direct' or 'cg', not {solver!r}")
    return _impute_cg(images, removed, tol, max_iter)


def _system(order: np.ndarray, h: int, w: int) -> Any:
    """The SPD matrix (CSC) of the equations of the removed pixels ``order`` (flat indices, the
    unknowns numbered in this order): the valid neighbours' weight sum on the diagonal, minus the
    weight of each removed neighbour."""
    import scipy.sparse as sp

    n = len(order)
    var = np.full(h * w, -1)
    var[order] = np.arange(n)
    r, c = np.divmod(order, w)
    diag = np.zeros(n)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [diag]
    for dr, dc, wt in OFFSETS:
        rr, cc = r + dr, c + dc
        ok = np.flatnonzero((rr >= 0) & (rr < h) & (cc >= 0) & (cc < w))
        diag[ok] += wt
        j = var[rr[ok] * w + cc[ok]]
        both = j >= 0
        rows.append(ok[both])
        cols.append(j[both])
        vals.append(np.full(int(both.sum()), -wt))
    return sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))


@functools.lru_cache(maxsize=8)
def _dissection(h: int, w: int, leaf: int = 64) -> np.ndarray:
    """A nested-dissection order of the ``h x w`` grid's flat pixel indices: split the longer side
    at its middle line, order each half so, then the line (no 8-neighbour crosses it), so that the
    factor fills little (a grid's optimal order, up to a constant). Restricted to the removed
    pixels it stays one (the lines still separate), so one order per image size serves every mask."""
    def split(r0: int, r1: int, c0: int, c1: int) -> list[np.ndarray]:
        if (r1 - r0) * (c1 - c0) <= leaf or min(r1 - r0, c1 - c0) < 1:
            rr, cc = np.meshgrid(np.arange(r0, r1), np.arange(c0, c1), indexing="ij")
            return [(rr * w + cc).ravel()]
        if r1 - r0 >= c1 - c0:
            mid = (r0 + r1) // 2
            return split(r0, mid, c0, c1) + split(mid + 1, r1, c0, c1) + [mid * w + np.arange(c0, c1)]
        mid = (c0 + c1) // 2
        return split(r0, r1, c0, mid) + split(r0, r1, mid + 1, c1) + [np.arange(r0, r1) * w + mid]
    return np.concatenate(split(0, h, 0, w))


def _impute_direct(images: Tensor, removed: Tensor) -> Tensor:
    """:func:`impute` by SuperLU: one factorisation per image (row), all channels solved with it."""
    from scipy.sparse.linalg import splu

    x = images.detach().double().cpu()
    b, c, h, w = x.shape
    m = removed.cpu().reshape(b, 1, h, w).to(x.dtype)
    rhs = _neighbours((x * (1 - m)).reshape(b * c, h, w)).reshape(b, c, h * w).numpy()
    out = (x * (1 - m)).reshape(b, c, h * w).numpy().copy()
    masks = removed.cpu().reshape(b, h * w).numpy()
    grid = _dissection(h, w)
    for k in range(b):
        if not masks[k].any() or masks[k].all():
            continue  # nothing to solve; all removed: nothing to impute from, 0 (as the CG solver)
        order = grid[masks[k][grid]]  # the removed pixels in elimination order
        lu = splu(_system(order, h, w), permc_spec="NATURAL", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
        out[k][:, order] = lu.solve(np.ascontiguousarray(rhs[k][:, order].T)).T
    return torch.from_numpy(out).view(b, c, h, w).to(device=images.device, dtype=images.dtype)


def _impute_cg(images: Tensor, removed: Tensor, tol: float, max_iter: int) -> Tensor:
    """:func:`impute` by conjugate gradients, one system per image and channel, all at once.
    Systems that have converged leave the iteration (the batch is compacted), so easy rows (few
    pixels removed) do not pay for hard ones."""
    x = images.double()
    b, c, h, w = x.shape
    m = removed[:, None].to(x.dtype).expand_as(x).reshape(b * c, h, w)
    xf = x.reshape(b * c, h, w)
    diag = _neighbours(torch.ones(1, h, w, dtype=x.dtype, device=x.device))  # sum of valid neighbours' weights
    u_all = torch.zeros_like(xf)
    idx = torch.arange(b * c, device=x.device)
    r = _neighbours(xf * (1 - m)) * m  # the right-hand side; u starts at 0
    mm, u, p = m, torch.zeros_like(xf), r.clone()
    rr = (r * r).sum((1, 2))
    stop = (tol**2) * rr.clamp_min(1e-300)
    for _ in range(max_iter):
        conv = rr <= stop
        if bool(conv.any()):
            u_all[idx[conv]] = u[conv]
            if bool(conv.all()):
                break
            if int(conv.sum()) * 8 >= len(idx):  # compact: iterate on the rows still open only
                keep = ~conv
                idx, mm, u, r, p, rr, stop = idx[keep], mm[keep], u[keep], r[keep], p[keep], rr[keep], stop[keep]
                conv = conv[keep]
        ap = (diag * p - _neighbours(p)) * mm
        alpha = torch.where(conv, 0.0, rr / (p * ap).sum((1, 2)).clamp_min(1e-300)).view(-1, 1, 1)
        u.add_(alpha * p)
        r.sub_(alpha * ap)
        rr_new = (r * r).sum((1, 2))
        p = r + (rr_new / rr.clamp_min(1e-300)).view(-1, 1, 1) * p
        rr = rr_new
    else:
        u_all[idx] = u
    out = xf * (1 - m) + u_all * m
    return out.view(b, c, h, w).to(images.dtype)


@metric(direction="lower", category="faithfulness",
        summary="area under the ROAD curve (top pixels removed and imputed from their neighbours)",
        low=0.0, high=1.0)
def road(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    percentages: Iterable[float] = range(1, 100, 2),
    noise: float = 0.01,
    order: Literal["morf", "lerf"] = "morf",
    mode: Mode = "signed",
    output: Output | Literal["accuracy"] = "probability",
    seed: int = 0,
    batch_size: int = 64,
    column: int = 0,
) -> Curves:
    """ROAD curves ``[N, len(percentages)]`` (module docstring); ``fractions`` are ``p / 100``.

    The number of pixels removed at ``p`` is ``int(H * W * p / 100)`` (as Quantus). Noise of
    row ``(image i, level k)`` comes from generator ``seed * 1_000_003 + i * 1_009 + k``, so it
    does not depend on the batch.
    """
    from xailab.core.hooks import model_device

    pcts = [float(p) for p in percentages]
    if not pcts or any(not 0 <= p <= 100 for p in pcts):
        raise InputError(f"percentages must be in [0, 100], got {pcts}")
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', not {order!r}")
    x = check_images(images).to(model_device(model))
    a = maps_for_images(maps, x, mode=mode, target=column)
    t = resolve_target(model, x, target, maps, column)
    n, _, h, w = x.shape
    ranks = pixel_ranks(a if order == "morf" else -a)
    counts = torch.tensor([int(h * w * p / 100) for p in pcts], device=x.device)
    s = len(pcts)

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(x.device)
        i, k = rows // s, rows % s
        removed = ranks[i] < counts[k].view(-1, 1, 1)
        out = impute(x[i], removed)
        if noise > 0:
            eps = torch.empty(len(rows), *x.shape[1:], dtype=torch.float64)
            for j, (ii, kk) in enumerate(zip(i.tolist(), k.tolist(), strict=True)):
                g = torch.Generator().manual_seed(seed * 1_000_003 + ii * 1_009 + kk)
                eps[j] = torch.randn(x.shape[1:], generator=g, dtype=torch.float64)
            out = out + (noise * eps.to(x.device) * removed[:, None]).to(out.dtype)
        return out, t[i]

    if output == "accuracy":
        scores = _accuracy_rows(model, n * s, make, batch_size).view(n, s)
    else:
        scores = scores_of_rows(model, n * s, make, output=output, batch_size=batch_size).view(n, s)
    return Curves(kind="road", fractions=torch.tensor(pcts, dtype=torch.float64) / 100, scores=scores,
                  targets=t.cpu())


def _accuracy_rows(model: nn.Module, n_rows: int, make: object, batch_size: int) -> Tensor:
    """1.0 where the perturbed image's top class is the target, else 0.0 (Quantus's ROAD)."""
    from xailab.core.hooks import model_device, model_session
    from xailab.metrics.perturb import logits_of

    device = model_device(model)
    out = torch.empty(n_rows, dtype=torch.float64)
    with model_session(model), torch.no_grad():
        for lo in range(0, n_rows, batch_size):
            rows = torch.arange(lo, min(n_rows, lo + batch_size))
            xb, tb = make(rows)  # type: ignore[operator]
            logits = logits_of(model(xb.to(device)), len(xb))
            top = class_scores(logits, logits.argmax(1), "logit")
            out[lo: lo + len(rows)] = (class_scores(logits, tb, "logit") >= top).double().cpu()
    return out
