"""Non-negative matrix factorisation in torch, online (mini-batch) and streaming.

``V ≈ S P`` with ``V [n, c] >= 0`` (rows: image positions, columns: channels), feature scores
``S [n, k] >= 0`` and concept directions ``P [k, c] >= 0``, minimising ``||V - S P||_F^2``.

* :func:`nnls`: ``S = argmin_{S >= 0} ||V - S P||^2`` for fixed ``P`` by HALS (exact cyclic
  coordinate descent on the columns of ``S``; Cichocki & Phan 2009).
* :class:`OnlineNMF`: the online dictionary learning of Mairal et al. 2010 (JMLR 11, alg. 1-2)
  with non-negativity: each mini-batch ``V_t`` gets its scores ``S_t = nnls(V_t, P)``, the
  sufficient statistics ``A = ρ A + S_tᵀ V_t``, ``B = ρ B + S_tᵀ S_t`` are updated, and each row
  of ``P`` takes a projected block-coordinate step
  ``P_j ← max(0, P_j + (A_j - B_j P) / B_jj)``, then ``P_j ← P_j / max(1, ||P_j||)``.
  ``ρ = forget ** (rows_t / rows_per_epoch)`` discounts the statistics gathered with an early,
  poor ``P`` (as sklearn's ``MiniBatchNMF``). Memory: ``O(k c + batch rows x c)``.

Deterministic for a given seed, batch order and device (the seed draws the initial rows).

    nmf = OnlineNMF(10, seed=0)
    for v in batches:                      # [rows, channels], non-negative
        nmf.partial_fit(v, rows_per_epoch=total_rows)
    P = nmf.directions()                   # [10, channels], unit-norm rows
"""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.core.errors import InputError

EPS = 1e-12


def nnls(
    V: Tensor, P: Tensor, *, max_iter: int = 100, tol: float = 1e-4, init: Tensor | None = None
) -> Tensor:
    """Non-negative scores ``S [n, k]`` minimising ``||V - S P||_F`` for fixed ``P [k, c]``.

    HALS: for each column ``j``, ``S_j ← max(0, S_j + ((V Pᵀ)_j - S (P Pᵀ)_j) / (P Pᵀ)_jj)``,
    sweeps until the largest change is below ``tol`` times the largest score (or ``max_iter``).
    """
    G = P @ P.T  # [k, k]
    Rt = (V @ P.T).T.contiguous()  # [k, n]: one contiguous row per concept
    k = P.shape[0]
    diag = G.diagonal().clamp_min(EPS)
    if init is not None:
        St = init.T.contiguous().clone()
    else:  # least squares, clamped, then rescaled: S * <R,S> / <S G, S>
        St = torch.linalg.lstsq(G, Rt).solution.clamp_min(0) if k > 1 else (Rt / diag[:, None]).clamp_min(0)
        num = (Rt * St).sum()
        den = ((G @ St) * St).sum().clamp_min(EPS)
        St = St * (num / den)
    if St.numel() == 0:
        return St.T
    for it in range(max_iter):
        change = St.new_zeros(())
        for j in range(k):
            step = (Rt[j] - G[j] @ St) / diag[j]
            new = (St[j] + step).clamp_min(0)
            change = torch.maximum(change, (new - St[j]).abs().max())
            St[j] = new
        if it % 5 == 4 and float(change) <= tol * max(float(St.max()), EPS):
            break
    return St.T


class OnlineNMF:
    """Mini-batch NMF with sufficient statistics (see the module docstring).

    Args:
        n_components: ``k``, the number of concepts.
        seed: draws the rows of the first batch that start ``P``.
        forget: ``ρ`` per epoch of rows (1 = never forget; sklearn's default is 0.7).
        sweeps: block-coordinate sweeps over the rows of ``P`` per batch.
        max_iter: HALS sweeps for each batch's scores.
        init_iter: rounds of batch NMF on the first batch that start ``P`` (see ``_init``).
    """

    def __init__(
        self,
        n_components: int,
        *,
        seed: int = 0,
        forget: float = 0.7,
        sweeps: int = 3,
        max_iter: int = 100,
        init_iter: int = 20,
    ) -> None:
        if n_components < 1:
            raise InputError(f"the number of concepts must be >= 1, got {n_components}")
        if not 0.0 < forget <= 1.0:
            raise InputError(f"forget must lie in (0, 1], got {forget}")
        self.k = int(n_components)
        self.seed = int(seed)
        self.forget = float(forget)
        self.sweeps = int(sweeps)
        self.max_iter = int(max_iter)
        self.init_iter = int(init_iter)
        self.P: Tensor | None = None
        self.A: Tensor | None = None
        self.B: Tensor | None = None
        self.rows_seen = 0
        self._gen = torch.Generator(device="cpu").manual_seed(self.seed)

    def _init(self, V: Tensor) -> None:
        """Start ``P`` from the first batch: k-means++ seeding on the rows' directions (rows far
        in angle from those already picked are likelier), then ``init_iter`` rounds of batch
        HALS (alternating ``S = nnls(V, P)`` and the dictionary step) on that batch alone."""
        norms = V.norm(dim=1)
        live = torch.nonzero(norms > EPS).flatten()
        if len(live) == 0:
            raise InputError("the activations of the first batch are all zero: NMF has nothing to factorise")
        U = V[live] / norms[live, None]
        first = int(torch.randint(len(live), (1,), generator=self._gen))
        picks = [first]
        dist = (1.0 - U @ U[first]).clamp_min(0)
        for _ in range(1, self.k):
            total = float(dist.sum())
            if total <= EPS:  # fewer distinct directions than concepts: repeat rows
                picks.append(picks[len(picks) % len(picks)])
                continue
            probs = (dist / total).double().cpu()
            nxt = int(torch.multinomial(probs, 1, generator=self._gen))
            picks.append(nxt)
            dist = torch.minimum(dist, (1.0 - U @ U[nxt]).clamp_min(0))
        self.P = U[torch.tensor(picks, device=V.device)].clone()
        c = V.shape[1]
        self.A = torch.zeros(self.k, c, dtype=V.dtype, device=V.device)
        self.B = torch.zeros(self.k, self.k, dtype=V.dtype, device=V.device)
        for _ in range(self.init_iter):
            S = nnls(V, self.P, max_iter=10)
            self.A = S.T @ V
            self.B = S.T @ S
            self._update_dictionary(V, S)
        self.A.zero_()
        self.B.zero_()

    def partial_fit(self, V: Tensor, *, rows_per_epoch: int | None = None) -> Tensor:
        """Update ``P`` with one mini-batch ``V [rows, c] >= 0``; returns the batch's scores."""
        if V.dim() != 2:
            raise InputError(f"NMF expects a matrix [rows, channels], got {tuple(V.shape)}")
        if self.P is None:
            self._init(V)
        assert self.P is not None and self.A is not None and self.B is not None
        if V.shape[1] != self.P.shape[1]:
            raise InputError(f"batch has {V.shape[1]} channels, the factorisation {self.P.shape[1]}")
        S = nnls(V, self.P, max_iter=self.max_iter)
        rho = self.forget ** (len(V) / rows_per_epoch) if rows_per_epoch else 1.0
        self.A.mul_(rho).add_(S.T @ V)
        self.B.mul_(rho).add_(S.T @ S)
        self.rows_seen += len(V)
        self._update_dictionary(V, S)
        return S

    def _update_dictionary(self, V: Tensor, S: Tensor) -> None:
        assert self.P is not None and self.A is not None and self.B is not None
        P, A, B = self.P, self.A, self.B
        scale = float(B.diagonal().max()) if self.k else 0.0
        for _ in range(self.sweeps):
            for j in range(self.k):
                bjj = float(B[j, j])
                if bjj <= 1e-10 * max(scale, EPS):
                    self._revive(j, V, S)
                    continue
                u = (P[j] + (A[j] - B[j] @ P) / bjj).clamp_min(0)
                nrm = float(u.norm())
                if nrm <= EPS:
                    self._revive(j, V, S)
                    continue
                P[j] = u / max(1.0, nrm)

    def _revive(self, j: int, V: Tensor, S: Tensor) -> None:
        """Restart an unused concept at the batch row the current concepts explain worst."""
        assert self.P is not None
        resid = (V - S @ self.P).clamp_min(0).norm(dim=1)
        row = int(resid.argmax())
        v = V[row].clamp_min(0)
        if float(v.norm()) > EPS:
            self.P[j] = v / v.norm()

    def directions(self) -> Tensor:
        """``P`` with unit-norm rows (the scale of each concept is carried by its scores)."""
        if self.P is None:
            raise InputError("the factorisation has seen no data yet")
        return self.P / self.P.norm(dim=1, keepdim=True).clamp_min(EPS)


def relative_error(V: Tensor, S: Tensor, P: Tensor) -> float:
    """``||V - S P||_F / ||V||_F``."""
    return float((V - S @ P).norm() / V.norm().clamp_min(EPS))
