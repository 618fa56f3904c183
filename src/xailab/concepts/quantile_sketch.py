"""A per-unit streaming histogram for upper quantiles with bounded memory (network dissection's
unit thresholds ``T_k``, see :mod:`.dissection`)."""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.core.errors import InputError


class QuantileSketch:
    """Per-unit streaming histogram for upper quantiles with bounded memory (``units x bins``).

    Each unit has ``bins`` equal bins over ``[lo, hi)``; ``lo``/``hi`` come from the first
    batch, and whenever a value reaches ``hi`` the range doubles (``hi = lo + 2 (hi - lo)``)
    and neighbouring bins are merged pairwise, which is exact. Values below ``lo`` fall in the
    first bin, so only quantiles above the first batch's minimum are resolved, which is what
    dissection asks for (the top 0.5 %). :meth:`upper` interpolates linearly inside the bin
    where the count from the top reaches ``q * total``: the error is at most one bin width,
    ``(hi - lo) / bins <= 2 (max - lo) / bins`` (0.1 % of the range with 2048 bins).

    A fixed range (``lo``/``hi``, both ``[units]``, e.g. :meth:`spanning` the global min and max
    from a pre-pass) makes the bins independent of the order of the values: sketches of parts
    of a set then :meth:`merge` (``a + b``) into exactly the sketch of the whole set (counts add),
    and the error bound becomes one bin of the true range, ``(max - min) / bins``.

        sk = QuantileSketch(64); sk.update(acts.transpose(0, 1).flatten(1)); sk.upper(0.005)
        whole = QuantileSketch.spanning(vmin, vmax); part_a + part_b   # a mergeable pair
    """

    def __init__(self, units: int, bins: int = 2048, device: torch.device | str = "cpu", *,
                 lo: Tensor | None = None, hi: Tensor | None = None) -> None:
        if bins < 2 or bins % 2:
            raise InputError(f"bins must be an even number >= 2, got {bins}")
        if (lo is None) != (hi is None) or (lo is not None and hi is not None and (
                lo.shape != (units,) or hi.shape != (units,) or not bool((hi > lo).all()))):
            raise InputError(f"a fixed range needs lo and hi of shape [{units}] with hi > lo")
        self.units, self.bins = units, bins
        self.counts = torch.zeros(units, bins, dtype=torch.float64, device=device)
        self.lo = None if lo is None else lo.to(device, torch.float64)
        self.hi = None if hi is None else hi.to(device, torch.float64)
        self.total = 0
        self.max = torch.full((units,), -float("inf"), dtype=torch.float64, device=device)

    def update(self, values: Tensor) -> None:
        """Add ``values [units, n]``."""
        v = values.detach().to(torch.float64)
        if v.shape[0] != self.units:
            raise InputError(f"expected {self.units} units, got {v.shape[0]}")
        if v.shape[1] == 0:
            return
        vmax = v.max(1).values
        if self.lo is None or self.hi is None:
            self.lo, self.hi = span(v.min(1).values, vmax)
        while True:
            grow = vmax >= self.hi
            if not bool(grow.any()):
                break
            c = self.counts[grow]
            merged = torch.zeros_like(c)
            merged[:, : self.bins // 2] = c.view(-1, self.bins // 2, 2).sum(2)
            self.counts[grow] = merged
            self.hi = torch.where(grow, self.lo + 2 * (self.hi - self.lo), self.hi)
        width = (self.hi - self.lo) / self.bins
        idx = ((v - self.lo[:, None]) / width[:, None]).floor().clamp(0, self.bins - 1).long()
        self.counts.scatter_add_(1, idx, torch.ones_like(v))
        self.total += v.shape[1]
        self.max = torch.maximum(self.max, vmax)

    @classmethod
    def spanning(cls, vmin: Tensor, vmax: Tensor, bins: int = 2048) -> QuantileSketch:
        """A sketch whose fixed range just covers ``[vmin, vmax]`` per unit (the range the
        default sketch takes from a first batch holding every value: the same bins)."""
        lo, hi = span(vmin.double(), vmax.double())
        return cls(len(lo), bins, lo.device, lo=lo, hi=hi)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """The sketch of both value sets: counts and totals add, maxima take the larger. Exact,
        and refused unless both have the same bins over the same range (e.g. one :meth:`spanning`)."""
        if self.total == 0 and self.lo is None:
            return other.copy()
        if other.total == 0 and other.lo is None:
            return self.copy()
        if (self.units, self.bins) != (other.units, other.bins) or self.lo is None or other.lo is None \
                or self.hi is None or other.hi is None or not (torch.equal(self.lo, other.lo.to(self.lo.device))
                                                           and torch.equal(self.hi, other.hi.to(self.hi.device))):
            raise InputError("only sketches with the same units, bins and range merge: give both the "
                             "same fixed range (QuantileSketch.spanning of the global min and max)")
        out = self.copy()
        out.counts += other.counts.to(out.counts.device)
        out.total += other.total
        out.max = torch.maximum(out.max, other.max.to(out.max.device))
        return out

    __add__ = merge

    def copy(self) -> QuantileSketch:
        out = QuantileSketch(self.units, self.bins, self.counts.device)
        out.counts, out.total, out.max = self.counts.clone(), self.total, self.max.clone()
        out.lo = None if self.lo is None else self.lo.clone()
        out.hi = None if self.hi is None else self.hi.clone()
        return out

    def upper(self, q: float) -> Tensor:
        """Per unit the value exceeded by a fraction ``q`` of the values seen (``[units]``)."""
        if self.lo is None or self.hi is None or self.total == 0:
            raise InputError("the quantile sketch has seen no values")
        if not 0.0 < q < 1.0:
            raise InputError(f"quantile must be in (0, 1), got {q}")
        rank = q * self.total
        top = self.counts.flip(1)  # bin 0 = highest
        cum = top.cumsum(1)
        j = torch.searchsorted(cum, torch.full((self.units, 1), rank, dtype=cum.dtype, device=cum.device))
        j = j.clamp(max=self.bins - 1)
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(j, dtype=cum.dtype))
        inbin = top.gather(1, j).clamp_min(1e-12)
        width = (self.hi - self.lo) / self.bins
        upper_edge = self.hi[:, None] - j * width[:, None]
        value = upper_edge - ((rank - before) / inbin).clamp(0, 1) * width[:, None]
        return torch.minimum(value.squeeze(1), self.max)


def span(vmin: Tensor, vmax: Tensor) -> tuple[Tensor, Tensor]:
    """Bin range ``[lo, hi)`` over values from ``vmin`` to ``vmax`` (``vmax`` falls inside)."""
    span = (vmax - vmin).clamp_min(1e-6 * vmin.abs().clamp_min(1.0))
    return vmin, vmin + span * (1 + 1e-9)
