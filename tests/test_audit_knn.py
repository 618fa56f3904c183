"""The k-NN label-consistency detector: its statistics by hand and a toy all-to-one poisoning."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from xailab.audit.detectors import AuditData, run_detector
from xailab.audit.knn import excess_outflow, first_downsampling, leave_one_out_z


class Given(AuditData):
    """AuditData with given inputs (no dataset object)."""

    def __init__(self, model: nn.Module, x: dict[int, torch.Tensor]) -> None:
        self.model, self.dataset, self.seed = model, object(), 0
        self.labels = sorted(x)
        self.names = [f"c{c}" for c in self.labels]
        offsets = np.cumsum([0] + [len(x[c]) for c in self.labels])
        self.indices = {c: np.arange(offsets[i], offsets[i + 1]) for i, c in enumerate(self.labels)}
        self._inputs, self._acts = dict(x), {}


def model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 4 * 4, 6))


def classes(poison: int | None, n: int = 60, share: float = 0.3, seed: int = 0) -> tuple[dict[int, torch.Tensor], np.ndarray]:
    """Six classes of 8x8 images around their own pattern; ``poison`` also holds ``share`` of images
    of the other classes (relabelled, as an all-to-one backdoor does). Returns the inputs and the truth mask."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(6, 1, 8, 8, generator=g)
    x, truth = {}, []
    for c in range(6):
        src = torch.full((n,), c)
        if c == poison:
            k = int(share * n)
            src[:k] = torch.tensor([s for s in range(6) if s != c]).repeat(k)[:k]
        x[c] = means[src] + 0.15 * torch.randn(n, 1, 8, 8, generator=g)
        truth.append((src != c).numpy())
    return x, np.concatenate(truth)


def test_statistics_by_hand() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    votes = np.array([0, 1, 2, 2, 0, 1, 2, 2])  # class 0 loses 1 to class 1 (gets 1 back) and 2 to class 2
    assert np.allclose(excess_outflow(labels, votes, [0, 1, 2]), [2 / 4, 0, 0])
    assert np.allclose(excess_outflow(labels, votes, [0, 1, 2], skip=1), [2 / 4, 0, 0])  # skips 1 (tie: first)
    assert np.allclose(excess_outflow(labels, votes, [0, 1, 2], skip=2), 0)
    assert math.isclose(leave_one_out_z(np.array([0.0, 0, 0, 0.05]), mad_floor=0.01)[3], 5.0)
    z = leave_one_out_z(np.array([1.0, 2, 3, 10]))
    assert math.isclose(z[3], (10 - 2) / (1.4826 * 1))  # the others: median 2, MAD 1
    assert math.isclose(z[0], (1 - 3) / (1.4826 * 1))  # the others 2, 3, 10: median 3, MAD 1
    assert leave_one_out_z(np.array([0.0, 0, 0, 1]))[3] == math.inf
    assert first_downsampling(model(), torch.zeros(1, 1, 8, 8)) == "1"


def test_flags_the_class_that_receives_other_classes_items() -> None:
    torch.manual_seed(0)
    x, truth = classes(poison=2)
    res = run_detector("knn", Given(model(), x))
    assert res.flagged == [2] and res.finding(2).p_value < 1e-3
    f = res.finding(2)
    sus, t = f.suspected, truth[f.indices]
    assert (sus & t).sum() / sus.sum() > 0.9 and (sus & t).sum() / t.sum() > 0.9
    assert all(not r.suspected.any() for r in res.findings if r.label != 2)


def test_clean_classes_are_not_flagged() -> None:
    torch.manual_seed(0)
    x, _ = classes(poison=None)
    res = run_detector("knn", Given(model(), x))
    assert res.flagged == [] and res.params["layer"] == "1"
