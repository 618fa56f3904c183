"""The detector contract, spectral signatures and SCAn on hand-made activations and a toy backdoor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xailab.audit.detectors import (
    AuditData,
    ClassFinding,
    DetectorResult,
    available_detectors,
    run_detector,
)
from xailab.audit.scan import scan
from xailab.audit.spectral import outlier_scores, spectral_signatures, split_1d
from xailab.core.errors import InputError


class Fixed(AuditData):
    """AuditData whose activations are given (no model, no images)."""

    def __init__(self, acts: dict[int, np.ndarray], seed: int = 0) -> None:
        self.model, self.dataset, self.seed = nn.Identity(), object(), seed
        self.names = [f"c{c}" for c in sorted(acts)]
        self.labels = sorted(acts)
        offsets = np.cumsum([0] + [len(acts[c]) for c in self.labels])
        self.indices = {c: np.arange(offsets[i], offsets[i + 1]) for i, c in enumerate(self.labels)}
        self._acts = {c: np.asarray(a, dtype=np.float64) for c, a in acts.items()}


def blobs(poisoned: int | None, n: int = 200, d: int = 16, share: float = 0.15, seed: int = 0) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Ten classes of Gaussian activations; class ``poisoned`` holds a shifted group (returned as a mask)."""
    rng = np.random.default_rng(seed)
    acts, truth = {}, np.zeros(0, dtype=bool)
    for c in range(10):
        a = rng.normal(size=(n, d)) + 3 * rng.normal(size=d)
        t = np.zeros(n, dtype=bool)
        if c == poisoned:
            t[: int(share * n)] = True
            a[t] += 9 * np.eye(d)[0]  # poisoned items lie far apart, as in real backdoored models
        acts[c] = a
        truth = np.concatenate([truth, t])
    return acts, truth


def test_finding_and_result_contract() -> None:
    f = ClassFinding(3, "cat", 4.0, 2.0, True, 0.01, np.array([5, 6, 7]), np.array([False, True, True]))
    assert f.suspected_items.tolist() == [6, 7]
    r = DetectorResult("x", (f, ClassFinding(4, "dog", 1.0, 2.0, False)), "what it measures")
    assert r.flagged == [3] and r.model_score == 2.0 and r.finding(4).name == "dog"
    assert list(r.table()["suspected_n"]) == [2, 0]
    with pytest.raises(ValueError, match="suspected"):
        ClassFinding(1, "a", 0.0, 1.0, False, math.nan, np.arange(3), np.zeros(2, dtype=bool))
    with pytest.raises(InputError, match="did not analyse"):
        r.finding(9)
    assert {"spectral", "scan"} <= set(available_detectors())


def test_outlier_scores_by_hand() -> None:
    a = np.array([[0.0, 0], [2, 0], [0, 1], [2, 1]])
    tau, v, s = outlier_scores(a)
    assert np.allclose(np.abs(v), [1, 0]) and np.allclose(tau, 1.0) and np.allclose(s, [2, 1])
    b, small = split_1d(np.array([0.0, 1, 10, 11, 0.5]))
    assert small.tolist() == [False, False, True, True, False]
    within = (0.25 + 0.25 + 0) + 0.5   # (0, 1, 0.5) around 0.5 and (10, 11) around 10.5
    total = float(((np.array([0.0, 1, 10, 11, 0.5]) - 4.5) ** 2).sum())
    assert np.isclose(b, 1 - within / total)
    rng = np.random.default_rng(0)  # one Gaussian group: 2 / pi
    assert abs(split_1d(rng.normal(size=20000))[0] - 2 / np.pi) < 0.01


@pytest.mark.parametrize("detector", [spectral_signatures, scan])
def test_detectors_find_the_shifted_group(detector) -> None:
    acts, truth = blobs(poisoned=7)
    res = detector(Fixed(acts))
    assert res.flagged == [7]
    f = res.finding(7)
    hit = truth[f.suspected_items]
    assert hit.mean() > 0.6 and hit.sum() >= 0.9 * truth.sum()
    clean = detector(Fixed(blobs(poisoned=None, seed=1)[0]))
    assert clean.flagged == [] and clean.model_score < 1


def test_scan_p_values_follow_its_score() -> None:
    from scipy.stats import norm

    res = scan(Fixed(blobs(poisoned=7)[0]))
    p = {f.label: f.p_value for f in res.findings}
    assert p[7] == min(p.values()) < norm.sf(math.e**2) * 10 and all(0 <= v <= 1 for v in p.values())
    for f in res.findings:  # above the median the p-value is the normal tail of the score
        if f.score > 0:
            assert f.p_value == pytest.approx(norm.sf(f.score), rel=1e-6)
        else:
            assert f.p_value >= 0.5 - 1e-12
    assert all(math.isnan(f.p_value) for f in spectral_signatures(Fixed(blobs(poisoned=7)[0])).findings)


def test_needs_data_is_refused_without_data() -> None:
    data = AuditData(nn.Identity(), None, class_names=["a", "b"])
    with pytest.raises(InputError, match="needs the training data"):
        run_detector("spectral", data)
    with pytest.raises(InputError, match="unknown detector"):
        run_detector("nope", data)
    assert torch.is_tensor(torch.zeros(1))
