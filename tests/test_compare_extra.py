"""``compare`` with ROAD, infidelity and the checks of the metrics (tables, board, CLI, report)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import xailab
from xailab.cli import main
from xailab.core.errors import InputError
from xailab.jobs.compare import compare_run
from xailab.metrics import calibration_maps, infidelity, road
from xailab.metrics.compare_extra import infidelity_patch, road_percentages
from xailab.metrics.scoreboard import CompareSettings
from xailab.runs import Run

from .test_metrics_support import PatchNet, as_explanation, patch_images, save_run

QUICK = CompareSettings(steps=8, faithfulness_runs=8, sanity=False, road_steps=5, check_images=6)
MODEL_SPEC = "tests.test_metrics_support:PatchNet"


def make_run(path: Path) -> tuple[Run, torch.nn.Module]:
    model = PatchNet().eval()
    x = patch_images(8)
    sal = xailab.create("saliency", model).explain(x, target=0)
    edge = as_explanation(calibration_maps.edge_maps(x), model, x, "edges", seconds=0.5)
    run = save_run(path / "run", x, {"saliency": sal, "edges": edge},
                   config={"model": MODEL_SPEC, "weights": None})
    return run, model


@pytest.fixture
def patch_run(tmp_path: Path) -> tuple[Run, torch.nn.Module]:
    return make_run(tmp_path)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, torch.nn.Module]:
    """A run compared once with ROAD, infidelity and the metric checks (read by several tests)."""
    run, model = make_run(tmp_path_factory.mktemp("compared"))
    compare_run(run, model, reference="saliency", settings=QUICK, log=lambda s: None)
    return run, model


def test_road_and_infidelity_reach_the_board_with_intervals(compared: tuple[Run, torch.nn.Module]) -> None:
    run, model = compared
    board = run.read_table("scoreboard").set_index("method")
    x = torch.from_numpy(np.array(run.read_array("images"))).float()
    sal = xailab.Explanation.load(run.path / "explanations" / "saliency")
    # the board's numbers are the metric functions' on the same maps and settings
    want_road = road(model, x, sal, percentages=road_percentages(5), noise=0.01, seed=0).auc.mean()
    want_inf = infidelity(model, x, sal, patch=infidelity_patch(QUICK, x), normalise=True).mean()
    assert board.loc["saliency", "road_auc"] == pytest.approx(float(want_road), rel=1e-6)
    assert board.loc["saliency", "infidelity"] == pytest.approx(float(want_inf), rel=1e-6)
    for col in ("road_auc", "infidelity"):
        assert (board[f"{col}_low"] <= board[col] + 1e-12).all() and (board[col] <= board[f"{col}_high"] + 1e-12).all()
    # on the patch model, removing saliency's top pixels hurts more than removing edges
    assert board.loc["saliency", "road_auc"] < board.loc["edges", "road_auc"]
    declared = run.manifest["metrics"]
    assert declared["road_auc"]["direction"] == "lower" and declared["infidelity"]["direction"] == "lower"
    assert len(run.read_table("faithfulness_extra")) == 2 * 8


def test_metric_checks_are_written_for_every_per_image_metric(compared: tuple[Run, torch.nn.Module]) -> None:
    run, _ = compared
    checks = run.read_table("metric_checks").set_index("metric")
    assert set(checks.index) == {"deletion_auc", "insertion_auc", "road_auc", "infidelity"}
    assert (checks["method"] == "saliency").all() and (checks["images"] == 6).all()
    assert {"noise_spearman", "shuffle_effect", "shuffle_p", "model_effect", "model_p", "verdict"} <= set(checks.columns)
    # deletion on the patch model: shuffling saliency's pixels makes the score worse
    assert checks.loc["deletion_auc", "shuffle_effect"] > 0


def test_extra_metrics_can_be_chosen_or_left_out(patch_run: tuple[Run, torch.nn.Module],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = patch_run
    assert main(["compare", str(run.path), "--steps", "4", "--runs", "4", "--no-sanity", "--no-figures",
                 "--metrics", "road", "--road-steps", "3", "--no-metric-checks"]) == 0
    board = run.read_table("scoreboard")
    assert "road_auc" in board and "infidelity" not in board
    assert "metric_checks" not in run.tables() and "faithfulness_extra" in capsys.readouterr().out
    assert main(["compare", str(run.path), "--metrics", "none", "--no-sanity", "--no-figures",
                 "--no-metric-checks", "--steps", "4", "--runs", "4"]) == 0
    assert "road_auc" not in run.read_table("scoreboard")
    assert main(["compare", str(run.path), "--metrics", "irof2"]) == 2
    assert "unknown metric irof2; choose from road, infidelity, irof" in capsys.readouterr().err
    assert main(["compare", str(run.path), "--metrics", "irof", "--no-sanity", "--no-figures",
                 "--no-metric-checks", "--steps", "4", "--runs", "4"]) == 0
    board = run.read_table("scoreboard").set_index("method")
    assert board.loc["saliency", "irof"] > board.loc["edges", "irof"]  # higher is better: the patch first


def test_helpers_refuse_and_size() -> None:
    assert road_percentages(10) == [5.0, 15.0, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 85.0, 95.0]
    with pytest.raises(InputError):
        road_percentages(0)
    assert infidelity_patch(CompareSettings(), torch.zeros(1, 3, 224, 224)) == 28
    assert infidelity_patch(CompareSettings(infidelity_patch=3), torch.zeros(1, 3, 32, 32)) == 3


def test_report_shows_road_infidelity_and_the_metric_checks(compared: tuple[Run, torch.nn.Module],
                                                            tmp_path: Path) -> None:
    from xailab.report.site import build_site

    run, _ = compared
    site = build_site([run.path], tmp_path / "site")
    html = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.html"))
    assert "ROAD ↓" in html and "infidelity ↓" in html and 'title="ROAD AUC"' in html
    assert "Checks of the metrics themselves" in html and "randomised model: effect" in html


def test_normalised_infidelity_ignores_the_maps_scale_and_is_at_most_the_raw_one() -> None:
    model, x = PatchNet().eval(), patch_images(4)
    sal = xailab.create("saliency", model).explain(x, target=0).pixel_maps()[:, 0]
    a = infidelity(model, x, sal, 0, patch=4, normalise=True)
    b = infidelity(model, x, 1000 * sal, 0, patch=4, normalise=True)
    torch.testing.assert_close(a, b)
    assert (a <= infidelity(model, x, sal, 0, patch=4) + 1e-12).all()  # the raw map is one of the scales tried
