"""Neural Cleanse against clean reference models, with each class's null spread taken from them.

The MAD test of :mod:`xailab.audit.cleanse` asks whether a class's trigger is small *among the
classes of one model*. Classes differ in how much their trigger size varies from model to model,
so a class that happens to come out small in one clean model is flagged (on Fashion-MNIST, 2 of 5
clean small_cnns were flagged by the log-ratio MAD test at ``z > 2``). Given ``R >= 3`` clean
reference models of the same task (same images and settings), each class gets its own null:

* every model's statistic is its masks' log L1 norms *centred on the model's other classes*,
  ``d_k = log l1_k - median_{j != k} log l1_j`` (a model whose triggers are all larger or smaller
  is no outlier, and a shrunk class does not pull its own centre);
* class ``k``'s null is the references' ``d_k``: mean ``mu_k`` and standard deviation ``s_k``
  (``ddof=1``). For a new model from the same population, ``t_k = (mu_k - d_k) / (s_k sqrt(1 + 1/R))``
  follows Student's t with ``R - 1`` degrees of freedom when the ``d_k`` are normal (the
  prediction interval of one new draw); ``p_k = P(T >= t_k)`` is one-sided (only a *smaller*
  trigger is a shortcut);
* a class is **flagged** when its Bonferroni-corrected ``min(1, K p_k) < alpha`` (``alpha`` 0.05:
  the chance that a clean model has any class flagged is at most 5 % when the null holds), its
  optimisation reached the target success, and there are at least :data:`MIN_CLASSES` classes.

:func:`leave_one_out` tests each reference against the others: the false flags the rule makes on
clean models that played no part in their own null (the check of the rule on clean data).

    null = reference_null([l1 of clean model 1, l1 of clean model 2, l1 of clean model 3, ...])
    flagged, t, p, p_adjusted = null_test(l1, null, alpha=0.05, reached=reached)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from xailab.core.errors import InputError

#: the fewest reference models a per-class spread is estimated from
MIN_REFERENCES = 3
#: the fewest classes the test flags among (the same floor as the MAD test's)
MIN_CLASSES = 5


@dataclass(frozen=True)
class ReferenceNull:
    """Per class, the clean references' centred log norm: ``mean [K]``, ``scale [K]`` (the standard
    deviation times ``sqrt(1 + 1/R)``), ``n`` references, and ``l1 [K]`` their geometric median
    norms (what a person compares a mask with)."""

    mean: np.ndarray
    scale: np.ndarray
    n: int
    l1: np.ndarray

    @property
    def dof(self) -> int:
        return self.n - 1


def centred_logs(norms: np.ndarray) -> np.ndarray:
    """``log l_k - median_{j != k} log l_j`` along the last axis (one row per model): each class
    against the median of the *other* classes, so a shrunk target does not move its own centre
    and no class is the centre itself (with an odd number of classes the median class would be
    0 in every model)."""
    logs = np.log(np.maximum(np.asarray(norms, dtype=np.float64), 1e-12))
    k = logs.shape[-1]
    others = np.stack([np.median(np.delete(logs, c, axis=-1), axis=-1) for c in range(k)], axis=-1)
    return logs - others


def reference_null(norms_per_model: Sequence[Sequence[float]] | np.ndarray) -> ReferenceNull:
    """The per-class null from ``R >= 3`` clean models' mask norms (one row of ``K`` per model)."""
    arr = np.asarray(norms_per_model, dtype=np.float64)
    if arr.ndim != 2 or (arr <= 0).any() or not np.isfinite(arr).all():
        raise InputError("reference norms: one row of positive, finite mask norms per reference model")
    r = len(arr)
    if r < MIN_REFERENCES:
        raise InputError(f"a per-class null needs at least {MIN_REFERENCES} clean reference models, got {r}")
    d = centred_logs(arr)
    sd = d.std(axis=0, ddof=1)
    if (sd <= 0).any():
        raise InputError("the reference models' mask norms do not vary for some class: were they the same model?")
    return ReferenceNull(d.mean(axis=0), sd * np.sqrt(1 + 1 / r), r, np.exp(np.median(np.log(arr), axis=0)))


def null_test(norms: np.ndarray, null: ReferenceNull, alpha: float = 0.05,
              reached: np.ndarray | None = None) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """``(flagged, t, p, p_adjusted)`` for one model's mask ``norms [K]`` (see the module docstring)."""
    from scipy.stats import t as student_t

    n = np.asarray(norms, dtype=np.float64)
    if len(n) != len(null.mean):
        raise InputError(f"{len(null.mean)} reference classes for {len(n)} classes")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must be in (0, 1), got {alpha}")
    t = (null.mean - centred_logs(n)) / null.scale
    p = student_t.sf(t, null.dof)
    p_adj = np.minimum(1.0, len(n) * p)
    if len(n) < MIN_CLASSES:
        return [], t, p, p_adj
    ok = np.ones(len(n), dtype=bool) if reached is None else np.asarray(reached, dtype=bool)
    return [int(k) for k in np.flatnonzero((p_adj < alpha) & ok)], t, p, p_adj


def critical_t(null: ReferenceNull, alpha: float, classes: int) -> float:
    """The ``t`` a class must exceed to be flagged: the ``1 - alpha / classes`` quantile of Student's t."""
    from scipy.stats import t as student_t

    return float(student_t.isf(alpha / classes, null.dof))


def leave_one_out(norms_per_model: Sequence[Sequence[float]], alpha: float = 0.05) -> list[tuple[list[int], float]]:
    """For each reference, ``(flagged, smallest p_adjusted)`` when it is tested against the others."""
    arr = np.asarray(norms_per_model, dtype=np.float64)
    out = []
    for i in range(len(arr)):
        null = reference_null(np.delete(arr, i, axis=0))
        flagged, _t, _p, p_adj = null_test(arr[i], null, alpha)
        out.append((flagged, float(p_adj.min())))
    return out
