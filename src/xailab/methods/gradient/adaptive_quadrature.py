"""Adaptive trapezoid quadrature for Integrated Gradients, steered by the known integral.

Along the path ``z(a) = b + a (x - b)`` the explained score ``f(a) = S_t(z(a))`` is the integral
of the path derivative ``f'(a) = grad S_t(z(a)) . (x - b)``. A gradient evaluation at a node
``a_k`` runs the model forward anyway, so it gives ``f(a_k)`` for free, and with it the *exact*
integral over every interval between two nodes::

    exact_k = f(a_{k+1}) - f(a_k)
    est_k   = (a_{k+1} - a_k) / 2 * (f'(a_k) + f'(a_{k+1}))        (trapezoid)
    e_k     = exact_k - est_k                                       (known, signed)

``sum_k e_k = -delta``, the completeness error of the attribution
``IG = (x - b) * sum_k W_k grad S_t(z(a_k))`` with the trapezoid node weights
``W_k = (a_{k+1} - a_{k-1}) / 2``. The rule starts from a few equal intervals and, round after
round, bisects the intervals with the largest ``|e_k|`` (bulk marking: the fewest intervals
that hold half of ``sum |e_k|``) until ``|delta| <= tol * |f(1) - f(0)|`` or ``max_steps``
gradient evaluations are spent. The attribution stays the quadrature of the gradient: nothing
is rescaled, ``delta`` is the honest error of the nodes chosen.

Why it helps on ReLU / max-pool networks: there the path gradient is piecewise constant, so every
fixed rule's error falls like ``1/n`` (each kink costs ``O(jump * h)``); an interval without a
kink has ``e_k = 0`` and is left alone, and the nodes go to the intervals whose kinks cost the
most. Each row (image, target) refines on its own data only, so the result does not depend on
which rows share a pass; the new nodes of all rows of a chunk are pooled into passes of at
most ``batch_size``.

    rows = AdaptiveRows(n_rows=4, init_steps=5, max_steps=64, tol=0.01)
    while (todo := rows.pending()) is not None:
        row, alpha = todo
        grads, scores = ...                       # gradient and score at each (row, alpha)
        rows.add(row, alpha, grads, proj, scores) # proj = grads . (x - b) per node
"""

from __future__ import annotations

import torch
from torch import Tensor

_F64 = torch.float64
#: narrowest interval that is still bisected (float64 nodes stay distinct and ordered)
MIN_WIDTH = 2.0**-40
#: bulk marking: bisect the fewest intervals holding this share of sum |e_k|
MARK_SHARE = 0.5


def interval_errors(a: Tensor, p: Tensor, f: Tensor) -> Tensor:
    """``e_k = (f_{k+1} - f_k) - (a_{k+1} - a_k) (p_k + p_{k+1}) / 2`` for sorted nodes ``a``."""
    return (f[1:] - f[:-1]) - (a[1:] - a[:-1]) * (p[1:] + p[:-1]) / 2


def trapezoid_weights(a: Tensor) -> Tensor:
    """Node weights of the composite trapezoid rule on sorted nodes ``a`` (they sum to ``a[-1] - a[0]``)."""
    h = a[1:] - a[:-1]
    w = torch.zeros_like(a)
    w[:-1] += h / 2
    w[1:] += h / 2
    return w


def marked(e: Tensor, width: Tensor, room: int) -> Tensor:
    """Indices of the intervals to bisect: largest ``|e|`` first, the fewest holding
    ``MARK_SHARE`` of ``sum |e|``, at most ``room``, none narrower than ``2 * MIN_WIDTH``."""
    mag = torch.where(width >= 2 * MIN_WIDTH, e.abs(), torch.zeros_like(e))
    total = float(mag.sum())
    if total <= 0 or room <= 0:
        return torch.zeros(0, dtype=torch.long)
    order = torch.sort(mag, descending=True, stable=True).indices
    cum = mag[order].cumsum(0)
    m = int((cum < MARK_SHARE * total).sum()) + 1
    m = min(m, room, int((mag > 0).sum()))
    return order[:m]


class AdaptiveRows:
    """The refinement state of ``n_rows`` (image, target) rows; see the module docstring.

    Per row it keeps the nodes ``a`` (float64), the path derivatives ``p = grad . (x - b)``,
    the scores ``f`` and the gradients themselves (needed for the final weights).
    """

    def __init__(self, n_rows: int, init_steps: int, max_steps: int, tol: float) -> None:
        n0 = max(2, min(init_steps, max_steps))
        self.max_steps = max(2, max_steps)
        self.tol = tol
        self.alpha = [torch.zeros(0, dtype=_F64) for _ in range(n_rows)]
        self.proj = [torch.zeros(0, dtype=_F64) for _ in range(n_rows)]
        self.score = [torch.zeros(0, dtype=_F64) for _ in range(n_rows)]
        self.grads: list[list[Tensor]] = [[] for _ in range(n_rows)]
        self.order: list[Tensor] = [torch.zeros(0, dtype=torch.long) for _ in range(n_rows)]
        self.done = [False] * n_rows
        init = torch.linspace(0.0, 1.0, n0, dtype=_F64)
        self._next: list[Tensor] = [init.clone() for _ in range(n_rows)]

    def pending(self) -> tuple[Tensor, Tensor] | None:
        """``(row [m], alpha [m])``: the nodes to evaluate in this round, rows in order; None when done."""
        rows = [torch.full((len(a),), r, dtype=torch.long) for r, a in enumerate(self._next) if len(a)]
        if not rows:
            return None
        alphas = [a for a in self._next if len(a)]
        return torch.cat(rows), torch.cat(alphas)

    def add(self, row: Tensor, alpha: Tensor, grads: Tensor, proj: Tensor, scores: Tensor) -> None:
        """Record the evaluated nodes of :meth:`pending` and choose the next round's nodes."""
        for r in torch.unique(row).tolist():
            sel = (row == r).nonzero().reshape(-1)
            start = len(self.grads[r])
            self.grads[r].extend(grads[i] for i in sel.tolist())
            a = torch.cat([self.alpha[r], alpha[sel].to(_F64)])
            p = torch.cat([self.proj[r], proj[sel].to("cpu", _F64)])
            f = torch.cat([self.score[r], scores[sel].to("cpu", _F64)])
            idx = torch.cat([self.order[r], torch.arange(start, start + len(sel))])
            srt = torch.sort(a, stable=True).indices
            # kept in path order; ``order`` maps a position on the path to its stored gradient
            self.alpha[r], self.proj[r], self.score[r], self.order[r] = a[srt], p[srt], f[srt], idx[srt]
            self._next[r] = self._refine(r)

    def _refine(self, r: int) -> Tensor:
        a, p, f = self.alpha[r], self.proj[r], self.score[r]
        e = interval_errors(a, p, f)
        delta = -float(e.sum())
        scale = abs(float(f[-1] - f[0]))
        if abs(delta) <= self.tol * scale + 1e-12 * (1.0 + abs(float(f[-1]))):
            self.done[r] = True
            return torch.zeros(0, dtype=_F64)
        k = marked(e, a[1:] - a[:-1], self.max_steps - len(a))
        if len(k) == 0:
            self.done[r] = True
            return torch.zeros(0, dtype=_F64)
        return torch.sort((a[k] + a[k + 1]) / 2).values

    # -- results --------------------------------------------------------------------------------
    def weighted_gradient(self, r: int) -> Tensor:
        """``sum_k W_k grad_k`` of row ``r`` (multiply by ``x - b`` for the attribution)."""
        w = trapezoid_weights(self.alpha[r])
        grads = self.grads[r]
        out = torch.zeros_like(grads[0])
        for pos, i in enumerate(self.order[r].tolist()):
            out += grads[i] * float(w[pos])
        return out

    def steps(self, r: int) -> int:
        return len(self.alpha[r])

    def f_path(self, r: int) -> tuple[float, float]:
        """``(f(0), f(1))``: the baseline's and the input's score of row ``r``."""
        return float(self.score[r][0]), float(self.score[r][-1])
