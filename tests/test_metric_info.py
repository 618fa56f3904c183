"""Metrics declare their direction and category as data; the declared direction is the true one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xailab import metrics
from xailab.metrics.columns import COLUMNS, direction_legend
from xailab.metrics.info import METRICS, MetricInfo, info_of, metric

SCORES = ["deletion", "insertion", "faithfulness_correlation", "iou", "pearson", "spearman", "kendall", "ssim",
          "pointing_game", "relevance_mass", "relevance_rank", "randomisation_test", "max_sensitivity",
          "road", "infidelity"]


@pytest.mark.parametrize("name", SCORES)
def test_every_metric_declares_its_direction_and_category(name: str) -> None:
    info = info_of(getattr(metrics, name))
    assert info is METRICS[name] and info.name == name
    assert info.direction in ("higher", "lower", "neither") and info.category and info.summary
    if info.low is not None and info.high is not None:
        assert info.low < info.high


def test_a_wrong_direction_or_a_second_declaration_is_refused() -> None:
    with pytest.raises(ValueError, match="direction"):
        MetricInfo("x", "up", "cost", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="twice"):
        metric(direction="lower", category="faithfulness", summary="again")(metrics.deletion)
    with pytest.raises(KeyError, match="no metric info"):
        info_of(metrics.top_region)


def better(name: str, a: float, b: float) -> bool:
    """Whether score ``a`` is better than ``b`` by the metric's own declaration."""
    d = METRICS[name].direction
    return a < b if d == "lower" else a > b


def test_the_declared_faithfulness_directions_are_the_true_ones() -> None:
    # a linear model: the exact attribution is w * x; its negation points at the wrong pixels
    torch.manual_seed(0)
    w = torch.randn(1, 3, 8, 8)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.cat([w.reshape(1, -1), -w.reshape(1, -1)]))
        model[1].bias.zero_()
    x = torch.rand(6, 3, 8, 8)
    t = torch.zeros(6, dtype=torch.long)
    good = (w * x).sum(1)
    bad = -good
    for name in ("deletion", "insertion"):
        fn = getattr(metrics, name)
        a = float(fn(model, x, good, t, steps=16).auc.mean())
        b = float(fn(model, x, bad, t, steps=16).auc.mean())
        assert better(name, a, b), (name, a, b)
    a = float(metrics.faithfulness_correlation(model, x, good, t, runs=32).mean())
    b = float(metrics.faithfulness_correlation(model, x, bad, t, runs=32).mean())
    assert better("faithfulness_correlation", a, b)


def test_the_declared_localisation_directions_are_the_true_ones() -> None:
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[:, 2:5, 2:5] = True
    on, off = masks.float() + 0.01 * torch.rand(4, 8, 8), (~masks).float()
    for name in ("pointing_game", "relevance_mass", "relevance_rank"):
        fn = getattr(metrics, name)
        assert better(name, float(fn(on, masks).mean()), float(fn(off, masks).mean())), name


def test_scoreboard_columns_name_their_metric_and_the_legend_follows_the_data() -> None:
    assert COLUMNS["deletion_auc"] is metrics.deletion.info
    assert COLUMNS["avg_iou"].direction == "neither"
    flipped = {"a": MetricInfo("a", "higher", "cost", "x"), "b": MetricInfo("b", "lower", "cost", "y")}
    assert direction_legend(flipped) == "lower is better: b; higher is better: a"
