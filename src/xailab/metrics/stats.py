"""Error bars for metric scores: bootstrap confidence intervals and a paired test over images.

A scoreboard figure is a mean over a handful of images; without an interval a reader cannot
tell a real difference from the luck of the draw. Two tools, both over images:

* :func:`bootstrap_ci`: the percentile bootstrap (Efron & Tibshirani 1993, ch. 13) of the mean:
  resample the ``N`` per-image scores with replacement ``resamples`` times, take the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled means.
* :func:`paired_test`: do two methods differ on the *same* images? The per-image differences
  ``d_i = a_i - b_i`` are tested with a sign-flip permutation test (Fisher's randomisation test):
  under "no difference" each ``d_i`` is as likely to be ``-d_i``, so the p-value is the share of
  random sign flips whose ``|mean|`` reaches the observed ``|mean(d)|``, counting the observed one
  (``(1 + hits) / (1 + resamples)``, never 0). Pairing removes the image-to-image spread that
  two unpaired intervals carry, so it finds differences that overlapping intervals hide.

:func:`significance_ranks` turns per-image scores of several methods into ranks that say when
two methods tie: a method's rank is one plus the number of methods that beat it significantly
(Holm-corrected paired tests), so methods that cannot be told apart share a rank.

    ci = bootstrap_ci(faith["deletion_auc"])            # CI(mean, low, high, n)
    p = paired_test(ins["gradcam"], ins["saliency"])    # p-value of "no difference"
    ranks = significance_ranks({"a": a, "b": b, "c": c}, higher_is_better=True)

NaN scores (e.g. a faithfulness correlation of a constant score) are left out; in
:func:`paired_test` an image counts only when both methods have a score for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from xailab.core.errors import InputError


@dataclass(frozen=True)
class CI:
    """Mean of ``n`` finite values and its bootstrap interval ``[low, high]`` at ``level``."""

    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95

    def overlaps(self, other: CI) -> bool:
        return not (self.high < other.low or other.high < self.low)

    def __str__(self) -> str:
        return f"{self.mean:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _finite(values: object) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def _check(level: float, resamples: int) -> None:
    if not 0.0 < level < 1.0:
        raise InputError(f"level must be in (0, 1), got {level}")
    if resamples < 1:
        raise InputError(f"resamples must be >= 1, got {resamples}")


def bootstrap_ci(values: object, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> CI:
    """Percentile-bootstrap interval of the mean of ``values`` (NaNs left out).

    One finite value gives the interval ``[v, v]``; none gives NaNs and ``n = 0``.
    """
    _check(level, resamples)
    v = _finite(values)
    n = len(v)
    if n == 0:
        return CI(float("nan"), float("nan"), float("nan"), 0, level)
    if n == 1:
        return CI(float(v[0]), float(v[0]), float(v[0]), 1, level)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return CI(float(v.mean()), float(lo), float(hi), n, level)


def paired_test(a: object, b: object, *, resamples: int = 4000, seed: int = 0) -> float:
    """Two-sided p-value that the per-image scores ``a`` and ``b`` (same images, same order)
    have the same mean, by the sign-flip permutation test (module docstring).

    With at most 12 pairs every one of the ``2^N`` sign patterns is enumerated (exact test).
    """
    _check(0.5, resamples)
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise InputError(f"paired scores must cover the same images, got {len(x)} and {len(y)}")
    d = (x - y)[np.isfinite(x) & np.isfinite(y)]
    n = len(d)
    if n == 0:
        return float("nan")
    observed = abs(d.mean())
    if observed == 0.0:
        return 1.0
    if n <= 12:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        flipped = np.abs((signs * d).mean(axis=1))
        return float(np.mean(flipped >= observed * (1 - 1e-12)))
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(resamples, n)) * 2 - 1
    hits = int(np.sum(np.abs((signs * d).mean(axis=1)) >= observed * (1 - 1e-12)))
    return (1 + hits) / (1 + resamples)


def holm(pvalues: Mapping[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    """Holm-Bonferroni adjusted p-values (step-down; NaNs stay NaN and are not counted)."""
    keys = [k for k, p in pvalues.items() if np.isfinite(p)]
    order = sorted(keys, key=lambda k: pvalues[k])
    m = len(order)
    out = {k: float("nan") for k in pvalues}
    running = 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * pvalues[k]))
        out[k] = running
    return out


def significance_ranks(
    scores: Mapping[str, object], *, higher_is_better: bool, alpha: float = 0.05,
    resamples: int = 4000, seed: int = 0,
) -> tuple[dict[str, int], dict[tuple[str, str], float]]:
    """Ranks of methods by per-image ``scores`` (same images for all) that tie when the
    difference is not significant, and the Holm-adjusted p-value of every pair.

    Rank of ``m`` = 1 + the number of methods whose mean is better than ``m``'s with an adjusted
    paired p-value below ``alpha``.
    """
    names = list(scores)
    means = {m: float(np.nanmean(np.asarray(scores[m], dtype=np.float64))) if len(_finite(scores[m]))
             else float("nan") for m in names}
    raw = {(a, b): paired_test(scores[a], scores[b], resamples=resamples, seed=seed)
           for i, a in enumerate(names) for b in names[i + 1:]}
    adj = holm(raw)
    sign = 1.0 if higher_is_better else -1.0
    ranks = {}
    for m in names:
        beaten_by = 0
        for o in names:
            if o == m:
                continue
            p = adj.get((m, o), adj.get((o, m), float("nan")))
            if np.isfinite(p) and p < alpha and sign * (means[o] - means[m]) > 0:
                beaten_by += 1
        ranks[m] = 1 + beaten_by
    return ranks, adj
