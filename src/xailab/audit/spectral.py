"""Spectral signatures (Tran, Li & Madry 2018, "Spectral signatures in backdoor attacks", NeurIPS,
arXiv:1811.00636): poisoned items leave a trace along the top singular direction of a class's
centred representations.

Per class, with ``R [n, d]`` the penultimate activations of its items:
``M = R - mean(R)``, ``v`` = the top right singular vector of ``M``, and each item's **outlier
score** ``tau_i = (M_i . v)^2``. Tran et al. remove the ``1.5 eps n`` items of highest score
(``eps`` an upper bound on the poisoned share) and retrain; we report them as the suspected
items of a flagged class.

The paper gives no per-class test. The **class score** here asks whether the items' projections
``p_i = M_i . v`` on that direction form two groups: the share of their variance between the two
clusters of a 1-D 2-means split, ``B = 1 - W / T`` (``W``: within-cluster sum of squares, ``T``:
total). For a single Gaussian group ``B = 2 / pi = 0.64`` whatever its spread; a class holding a
separate poisoned group scores near 1. A class is flagged when ``B`` reaches ``threshold``
(default 0.85, chosen on the calibration split of bench/bench_backdoor.py, where clean classes of
Fashion-MNIST models reached 0.80); no p-value (``nan``). The suspected items of a flagged
class are the smaller cluster of the split (sharper than Tran et al.'s ``1.5 eps n`` highest
scores, which is reported as ``extra["tran"]``).

    scores = outlier_scores(activations)          # tau_i, one per item
    result = run_detector("spectral", AuditData(model, train_set))
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from xailab.audit.detectors import AuditData, ClassFinding, DetectorResult, register_detector


def outlier_scores(activations: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tau [n], v [d], sigma)``: Tran et al.'s outlier scores, the top right singular vector of
    the centred activations and all their singular values (descending)."""
    r = np.asarray(activations, dtype=np.float64)
    m = r - r.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    v = vt[0]
    return (m @ v) ** 2, v, s


def split_1d(p: np.ndarray) -> tuple[float, np.ndarray]:
    """``(B, smaller)``: the best 2-means split of the 1-D values ``p`` (exact: the best of the
    ``n - 1`` cuts of the sorted values), its between-cluster share of the variance, and the
    bool mask of its smaller side."""
    x = np.asarray(p, dtype=np.float64)
    n = len(x)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    total = float(((xs - xs.mean()) ** 2).sum())
    if n < 2 or total <= 0:
        return 0.0, np.zeros(n, dtype=bool)
    c1, c2 = np.cumsum(xs), np.cumsum(xs**2)
    k = np.arange(1, n)  # the left part holds k items
    left = c2[:-1] - c1[:-1] ** 2 / k
    right = (c2[-1] - c2[:-1]) - (c1[-1] - c1[:-1]) ** 2 / (n - k)
    best = int(np.argmin(left + right))
    within = float(left[best] + right[best])
    side = np.zeros(n, dtype=bool)
    side[order[: best + 1]] = True
    if side.sum() > n / 2:
        side = ~side
    return 1.0 - within / total, side


@register_detector("spectral", needs_data=True,
                   summary="spectral signatures (Tran et al. 2018): two groups along the top singular direction")
def spectral_signatures(data: AuditData, *, threshold: float = 0.85, eps: float = 0.1, **_: Any) -> DetectorResult:
    """Spectral signatures on every class of ``data`` (see the module docstring).

    ``threshold``: the bimodality ``B`` at which a class is flagged; ``eps``: the largest
    poisoned share expected in a class, for Tran et al.'s removal rule (``extra["tran"]``: the
    ``1.5 eps n`` highest outlier scores).
    """
    t0 = time.perf_counter()
    findings = []
    for c in data.labels:
        idx = data.indices[c]
        if len(idx) < 4:
            continue
        acts = data.activations(c)
        tau, v, _sigma = outlier_scores(acts)
        b, smaller = split_1d((acts - acts.mean(axis=0)) @ v)
        flagged = bool(b >= threshold)
        k = min(len(tau), max(1, round(1.5 * eps * len(tau))))
        tran = np.zeros(len(tau), dtype=bool)
        tran[np.argsort(-tau, kind="stable")[:k]] = True
        findings.append(ClassFinding(c, data.names[c], b, threshold, flagged, math.nan, idx,
                                     smaller if flagged else np.zeros(len(idx), dtype=bool),
                                     extra={"tau": tau, "tran": tran, "small_share": float(smaller.mean())}))
    return DetectorResult("spectral", tuple(findings),
                          "bimodality of penultimate activations along their top singular direction "
                          "(0.64 = one Gaussian group, 1 = two separate groups)",
                          params={"threshold": threshold, "eps": eps}, seconds=time.perf_counter() - t0)
