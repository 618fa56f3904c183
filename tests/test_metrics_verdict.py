"""Bootstrap intervals, paired tests, significance ranks and the verdict (on the patch model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

import xailab
from xailab.jobs.compare import compare_run
from xailab.metrics import deletion, edge_maps, insertion, random_maps, randomisation_test
from xailab.metrics.calibration_maps import edge_explain
from xailab.metrics.scoreboard import CompareSettings
from xailab.metrics.stats import bootstrap_ci, holm, paired_test, significance_ranks
from xailab.metrics.verdict import VerdictRule, sanity_reason, verdict

from .test_metrics_support import PatchNet, as_explanation, patch_images, save_run


def test_bootstrap_matches_scipy_percentile_interval() -> None:
    v = np.random.default_rng(3).normal(2.0, 1.0, size=40)
    ours = bootstrap_ci(v, resamples=20000, seed=1)
    ref = scipy.stats.bootstrap((v,), np.mean, n_resamples=20000, method="percentile", random_state=1)
    assert ours.mean == pytest.approx(v.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.03)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.03)
    assert ours.low < ours.mean < ours.high
    assert bootstrap_ci([np.nan, 1.5]).n == 1 and bootstrap_ci([np.nan]).n == 0


def test_exact_paired_test_equals_scipy_permutation_test() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=10)
    b = a + rng.normal(0.4, 0.5, size=10)
    ref = scipy.stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                       n_resamples=np.inf)
    assert paired_test(a, b) == pytest.approx(ref.pvalue)
    assert paired_test(a, a) == 1.0
    big = rng.normal(size=200)
    assert paired_test(big + 1.0, big) < 0.01  # a shift on every image: significant
    assert paired_test(big, big[::-1]) > 0.05  # same values, no shift on average


def test_holm_and_ranks_tie_methods_that_cannot_be_told_apart() -> None:
    assert holm({("a", "b"): 0.01, ("a", "c"): 0.04, ("b", "c"): 0.5}) == pytest.approx(
        {("a", "b"): 0.03, ("a", "c"): 0.08, ("b", "c"): 0.5})
    rng = np.random.default_rng(1)
    base = rng.normal(size=60)
    scores = {"good": base + 1.0, "twin": base + 1.0 + rng.normal(0, 0.01, 60), "bad": base}
    ranks, p = significance_ranks(scores, higher_is_better=True)
    assert ranks == {"good": 1, "twin": 1, "bad": 3}
    assert p[("good", "twin")] > 0.05 > p[("good", "bad")]


def _faith(model: torch.nn.Module, x: torch.Tensor, maps: dict[str, torch.Tensor]) -> pd.DataFrame:
    rows = []
    for m, a in maps.items():
        d = deletion(model, x, a, 0, steps=16)
        i = insertion(model, x, a, 0, steps=16)
        rows.append(pd.DataFrame({"image": np.arange(len(x)), "method": m,
                                  "deletion_auc": d.auc.numpy(), "insertion_auc": i.auc.numpy()}))
    return pd.concat(rows, ignore_index=True)


def test_verdict_ranks_the_patch_finder_above_random_and_edges_without_overlap() -> None:
    model, x = PatchNet().eval(), patch_images(24)
    maps = {"random": random_maps(x), "edges": edge_maps(x),
            "saliency": xailab.create("saliency", model).explain(x, target=0).pixel_maps()[:, 0]}
    table = verdict(_faith(model, x, maps)).set_index("method")
    assert table.loc["saliency", "position"] == 1 and table.loc["saliency", "rank"] == 1
    for other in ("random", "edges"):
        assert table.loc[other, "rank"] > 1
        assert table.loc["saliency", "faithfulness_low"] > table.loc[other, "faithfulness_high"]
        assert table.loc["saliency", "deletion_auc_high"] < table.loc[other, "deletion_auc_low"]
    assert table.attrs["recommendation"].startswith("use saliency")
    assert "tie" not in table.attrs["recommendation"]


def test_sanity_gate_and_reasons() -> None:
    model, x = PatchNet().eval(), patch_images(6)
    r = randomisation_test(model, x, lambda m, xb, t: xb.abs().sum(1), 0)  # the input itself
    assert r.flagged and r.final_input_spearman == pytest.approx(1.0)
    verdict_, reason = sanity_reason(r.table().assign(verdict=r.verdict), 0.5)
    assert verdict_ == "flagged" and reason.startswith("input-dominated")
    e = randomisation_test(model, x, edge_explain, 0)
    verdict_, reason = sanity_reason(e.table().assign(verdict=e.verdict), 0.5)
    assert verdict_ == "flagged" and reason.startswith("model-independent")
    assert sanity_reason(None, 0.5)[0] == "n/a"
    # a flagged method ranks after one that passed, even with a better faithfulness score
    faith = pd.DataFrame({"image": [0, 1, 2] * 2, "method": ["a"] * 3 + ["b"] * 3,
                          "deletion_auc": [0.1] * 3 + [0.5] * 3, "insertion_auc": [0.9] * 3 + [0.5] * 3})
    sanity = pd.DataFrame({"method": ["a", "b"], "spearman": [0.9, 0.1], "verdict": ["flagged", "passed"],
                           "input_spearman": [0.8, 0.1]})
    table = verdict(faith, sanity=sanity)
    assert list(table["method"]) == ["b", "a"]
    assert list(verdict(faith, sanity=sanity, rule=VerdictRule(sanity_gate=False))["method"]) == ["a", "b"]
    assert "only 3 images" in table.loc[0, "caveats"]


def test_compare_writes_intervals_and_the_verdict(tmp_path: Path) -> None:
    model, x = PatchNet().eval(), patch_images(6)
    sal = xailab.create("saliency", model).explain(x, target=0)
    rnd = as_explanation(random_maps(x), model, x, "random", seconds=0.5)
    run = save_run(tmp_path / "run", x, {"saliency": sal, "random": rnd})
    board = compare_run(run, model, settings=CompareSettings(steps=8, faithfulness_runs=8, sanity_images=2,
                                                             sanity_steps=2), log=lambda s: None)
    for col in ("deletion_auc", "insertion_auc", "agreement_iou", "avg_iou"):
        assert (board[f"{col}_low"] <= board[col] + 1e-12).all() and (board[col] <= board[f"{col}_high"] + 1e-12).all()
    ranked = run.read_table("verdict")
    assert ranked["method"].iloc[0] == "saliency"
    info = run.manifest["compare"]["verdict"]
    assert info["recommendation"].startswith("use saliency") and {"name": "alpha", "value": 0.05} in [
        {k: r[k] for k in ("name", "value")} for r in info["rule"]]
