"""SCAn, statistical contamination analysis (Tang, Wang, Tang & Zhang 2021, "Demon in the variant",
USENIX Security, arXiv:1908.00686): does a class's representation hold two groups?

Representations are modelled as ``r = mu_class + e`` with a class-mean term of covariance
``S_u`` and an identity term ``e`` of covariance ``S_e`` shared by all classes. A global model
(``S_u``, ``S_e``) is fitted by EM over all classes analysed (Tang et al. fit it on a clean
reserve when one exists; we fit it on the data examined, the poison being a minority of it).
Then, per class, two subgroups with means ``mu_1``, ``mu_2`` are found by EM under ``S_e``
(each item goes to the group it is closer to in the ``S_e^{-1}`` metric), and the
log-likelihood ratio ``J`` of the two-group model against one group is computed. A class's
**score** is the anomaly index of its normalised ``J`` over the classes analysed,
``|J - median| / (1.4826 MAD)``, counted only above the median; a class is flagged when it
reaches ``threshold`` = ``e^2`` (7.39), Tang et al.'s choice. Its **p-value** is the one-sided
normal tail of the robust z, ``P(Z >= (J - median) / (1.4826 MAD))``: the null is that the
classes' ``J`` are draws of one normal distribution, which the median and MAD estimate robustly
(``e^2`` is then ``p = 7e-14``; not corrected for the number of classes). The **suspected
items** of a flagged class are its smaller subgroup.

The statistic follows the authors' reference code (also in backdoor-toolbox's ``SCAn``), with
the loops over items written as matrix products.

    result = run_detector("scan", AuditData(model, train_set))
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from xailab.audit.cleanse import below_median_z, normal_tail
from xailab.audit.detectors import AuditData, ClassFinding, DetectorResult, register_detector

EPS = 1e-5


def global_model(x: np.ndarray, labels: np.ndarray, n_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(S_u, S_e)`` by EM: ``x [N, M]`` centred representations, ``labels [N]`` in ``0..L-1``."""
    classes = np.unique(labels)
    inv = np.searchsorted(classes, labels)
    counts = np.bincount(inv).astype(np.float64)
    means = np.stack([x[inv == k].mean(axis=0) for k in range(len(classes))])
    u = means[inv]
    su, se = np.cov(u.T), np.cov((x - u).T)
    for _ in range(n_iter):
        f = np.linalg.pinv(se)
        suf = su @ f
        um = np.zeros_like(means)
        for k in range(len(classes)):
            g = -np.linalg.pinv(counts[k] * su + se) @ suf
            um[k] = -(se @ g @ x[inv == k].sum(axis=0))
        u = um[inv]
        su_new, se_new = np.cov(u.T), np.cov((x - u).T)
        done = np.linalg.norm(su_new - su) + np.linalg.norm(se_new - se) < EPS
        su, se = su_new, se_new
        if done:
            break
    return su, se


def find_split(x: np.ndarray, f: np.ndarray, rng: np.random.Generator, n_iter: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(in_group_1 [n] bool, mu_1, mu_2)``: two subgroups of ``x`` by EM under the metric ``f``."""
    n = len(x)
    z = rng.random(n) >= 0.5
    if z.all() or not z.any():
        z[0] = not z[0]
    mu1, mu2 = x[z].mean(axis=0), x[~z].mean(axis=0)
    for _ in range(n_iter):
        if z.all() or not z.any():
            break
        mu1, mu2 = x[z].mean(axis=0), x[~z].mean(axis=0)
        bias = mu1 @ f @ mu1 - mu2 @ f @ mu2
        new = bias - 2 * (x @ f @ (mu1 - mu2)) < 0
        if np.array_equal(new, z):
            break
        z = new
    return z, mu1, mu2


def split_statistic(x: np.ndarray, su: np.ndarray, se: np.ndarray, f: np.ndarray, z: np.ndarray,
                    mu1: np.ndarray, mu2: np.ndarray, shrink: bool = False) -> float:
    """Tang et al.'s log-likelihood ratio ``J / n`` of two subgroups ``z`` against one class mean.

    The one-group mean is the class's sample mean; ``shrink=True`` uses the reference code's
    posterior mean under ``S_u`` instead, which is biased when ``S_u`` is singular (fewer classes
    than dimensions: 10 classes, 128 units) and then swamps the statistic."""
    n = len(x)
    mu = x.mean(axis=0) if not shrink else -(se @ -np.linalg.pinv(n * su + se) @ su @ f @ x.sum(axis=0))
    b1 = mu @ f @ mu - mu1 @ f @ mu1
    b2 = mu @ f @ mu - mu2 @ f @ mu2
    n1 = int(z.sum())
    sc = n1 * b1 + (n - n1) * b2
    e2 = np.where(z[:, None], mu - mu1, mu - mu2)
    sc -= 2 * float(np.einsum("ij,jk,ik->", x, f, e2))
    return float(sc / n)


def anomaly_above_median(values: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)`` above the median, 0 below it."""
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    return np.maximum(values - med, 0) / mad if mad > 0 else np.zeros_like(values)


@register_detector("scan", needs_data=True,
                   summary="SCAn (Tang et al. 2021): likelihood ratio of two subgroups under a global class model")
def scan(data: AuditData, *, threshold: float = math.e**2, **_: Any) -> DetectorResult:
    """SCAn on the classes of ``data`` (at least 3 classes of at least 4 items; see the module docstring)."""
    t0 = time.perf_counter()
    labels = [c for c in data.labels if len(data.indices[c]) >= 4]
    acts = [data.activations(c) for c in labels]
    x = np.concatenate(acts) if acts else np.zeros((0, 1))
    y = np.concatenate([np.full(len(a), c) for a, c in zip(acts, labels, strict=True)]) if acts else np.zeros(0)
    x = x - x.mean(axis=0) if len(x) else x
    keep = x.std(axis=0) > 0  # dead units carry nothing and make S_e singular
    x = x[:, keep]
    stats, splits = [], []
    if len(labels) >= 3:
        su, se = global_model(x, y)
        f = np.linalg.pinv(se)
        rng = np.random.default_rng(data.seed)
        for c in labels:
            xc = x[y == c]
            z, mu1, mu2 = find_split(xc, f, rng)
            stats.append(split_statistic(xc, su, se, f, z, mu1, mu2))
            splits.append(z if z.sum() <= len(z) / 2 else ~z)
    j = np.array(stats)
    index = anomaly_above_median(j / max(float(j.max()), 1e-300)) if len(j) else np.zeros(len(labels))
    p_values = normal_tail(-below_median_z(j)) if len(j) else np.full(len(labels), math.nan)
    findings = []
    for i, c in enumerate(labels):
        score = float(index[i]) if len(j) else math.nan
        flagged = bool(len(j) and score >= threshold)
        sus = splits[i] if flagged else np.zeros(len(data.indices[c]), dtype=bool)
        findings.append(ClassFinding(c, data.names[c], score, threshold, flagged, float(p_values[i]),
                                     data.indices[c], sus,
                                     extra={"J": float(j[i]) if len(j) else math.nan,
                                            "small_share": float(splits[i].mean()) if len(j) else math.nan}))
    return DetectorResult("scan", tuple(findings),
                          "anomaly index (over classes) of the likelihood ratio of two subgroups against one in "
                          "penultimate activations", params={"threshold": threshold}, seconds=time.perf_counter() - t0)
