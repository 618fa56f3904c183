"""``compare_run`` / ``xailab compare``: tables, scoreboard, figures, resume and bad runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import xailab
from xailab.cli import main
from xailab.core.errors import InputError
from xailab.jobs.compare import compare_run
from xailab.metrics import calibration_maps
from xailab.metrics.scoreboard import CompareSettings, format_board
from xailab.runs import Run, RunError

from .test_metrics_support import PatchNet, as_explanation, patch_images, save_run

QUICK = CompareSettings(steps=8, faithfulness_runs=8, sanity_images=2, sanity_steps=2)
MODEL_SPEC = "tests.test_metrics_support:PatchNet"


@pytest.fixture
def patch_run(tmp_path: Path) -> tuple[Run, torch.nn.Module]:
    model = PatchNet().eval()
    x = patch_images(5)
    sal = xailab.create("saliency", model).explain(x, target=0)
    ixg = xailab.create("input_x_gradient", model).explain(x, target=0)
    edge = as_explanation(calibration_maps.edge_maps(x), model, x, "edges", seconds=0.5)
    run = save_run(tmp_path / "run", x, {"saliency": sal, "input_x_gradient": ixg, "edges": edge},
                   config={"model": MODEL_SPEC, "weights": None})
    return run, model


def test_compare_writes_tables_figures_and_scoreboard(patch_run: tuple[Run, torch.nn.Module]) -> None:
    run, model = patch_run
    logs: list[str] = []
    board = compare_run(run, model, reference="saliency", settings=QUICK, log=logs.append)
    assert list(board["method"]) == ["edges", "input_x_gradient", "saliency"]
    assert {"avg_iou", "avg_time", "deletion_auc", "insertion_auc", "sanity", "seconds"} <= set(board.columns)
    row = board.set_index("method")
    assert row.loc["saliency", "avg_iou"] == 1.0
    # on the patch model, saliency and input x gradient share their top region; edges do not
    assert row.loc["input_x_gradient", "avg_iou"] > 0.3 > row.loc["edges", "avg_iou"]
    assert row.loc["edges", "avg_time"] == pytest.approx(0.1)  # 0.5 s for 5 images
    assert row.loc["saliency", "deletion_auc"] < row.loc["edges", "deletion_auc"]
    assert row.loc["saliency", "sanity"] == "passed"
    assert row.loc["edges", "sanity"] == "n/a"  # not a registered method: cannot be re-explained
    for name in ("agreement", "agreement_images", "faithfulness", "faithfulness_curves", "sanity", "scoreboard"):
        assert len(run.read_table(name)) > 0, name
    assert len(run.read_table("agreement")) == 3 * 5
    stored = run.read_table("scoreboard")
    assert list(stored["method"]) == list(board["method"])
    pngs = sorted(p.name for p in (run.path / "files" / "metrics").iterdir())
    assert {"agreement_iou.png", "deletion.png", "insertion.png", "histograms.png", "sanity.png"} <= set(pngs)
    assert (run.path / "files" / "metrics" / "agreement_iou.png").read_bytes()[:4] == b"\x89PNG"
    assert run.manifest["compare"]["reference"] == "saliency"
    assert "avg_iou" in format_board(board, "saliency")
    # every numeric column says which way is better, as data in the run (an interval's bounds
    # belong to the column they bound)
    numeric = {c.removesuffix("_low").removesuffix("_high") for c in board.columns if board[c].dtype.kind == "f"}
    declared = run.manifest["metrics"]
    assert numeric <= set(declared)
    assert declared["deletion_auc"]["direction"] == "lower" and declared["insertion_auc"]["direction"] == "higher"
    assert "lower is better: seconds, avg_time, evaluations_per_image, deletion_auc" in format_board(board, "saliency")

    logs.clear()
    again = compare_run(run, model, reference="saliency", settings=QUICK, log=logs.append, figures_on=False)
    # faithfulness x3, ROAD and infidelity x3, the metric checks, sanity x2
    assert sum("already in the run" in m for m in logs) == 3 + 3 + 1 + 2
    np.testing.assert_allclose(again["deletion_auc"], board["deletion_auc"])
    logs.clear()
    compare_run(run, model, reference="saliency", settings=CompareSettings(**{**QUICK.__dict__, "steps": 4}),
                log=logs.append, figures_on=False)
    assert not any("faithfulness already" in m for m in logs)  # changed settings: recomputed
    sal = xailab.create("saliency", model).explain(torch.from_numpy(run.read_array("images")), target=1)
    sal.save(run.path / "explanations" / "saliency")  # re-explained: its parts are stale
    logs.clear()
    compare_run(run, model, reference="saliency", settings=CompareSettings(**{**QUICK.__dict__, "steps": 4}),
                log=logs.append, figures_on=False)
    assert [m for m in logs if "already" in m and m.startswith("saliency")] == []
    assert (run.read_table("faithfulness", filters=[("method", "==", "saliency")])["target"] == 1).all()


def test_bad_runs_say_what_is_missing(tmp_path: Path) -> None:
    model = PatchNet().eval()
    x = patch_images(3)
    empty = save_run(tmp_path / "empty", x, {})
    with pytest.raises(RunError, match=r"has no explanations.*xailab explain"):
        compare_run(empty, model)
    sal = xailab.create("saliency", model).explain(x, target=0)
    run = save_run(tmp_path / "one", x, {"saliency": sal})
    with pytest.raises(RunError, match="no explanations of gradcam; it has: saliency"):
        compare_run(run, model, methods=["gradcam"])
    with pytest.raises(RunError, match="reference method 'lime' is not in the run"):
        compare_run(run, model, reference="lime")
    short = save_run(tmp_path / "short", x, {"saliency": sal.select(slice(0, 2))})
    with pytest.raises(InputError, match=r"saliency cover 2 images but run .* has 3 images"):
        compare_run(short, model)
    with pytest.raises(InputError, match="not explained for target 'true'"):
        compare_run(run, model, settings=CompareSettings(target="true"))
    with pytest.raises(RunError, match="no run at"):
        compare_run(tmp_path / "nowhere", model)


def test_cli_compare_prints_the_scoreboard(patch_run: tuple[Run, torch.nn.Module],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run, _ = patch_run
    code = main(["compare", str(run.path), "--methods", "saliency,ixg", "--top", "25", "--steps", "4",
                 "--runs", "4", "--no-sanity", "--no-figures"])
    out = capsys.readouterr().out
    assert code == 0
    assert "avg_iou" in out and "avg_time" in out and "input_x_gradient" in out
    board = run.read_table("scoreboard")
    assert list(board["method"]) == ["saliency", "input_x_gradient"]
    assert (board["sanity"] == "n/a").all()
    assert run.manifest["compare"]["settings"]["top"] == 0.25


def test_cli_compare_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path / "missing")]) == 2
    assert "no run at" in capsys.readouterr().err
    x = patch_images(2)
    Run.create(tmp_path / "nomodel", kind="explain")
    save_run(tmp_path / "nomodel", x, {})
    assert main(["compare", str(tmp_path / "nomodel")]) == 2
    assert "does not record its model; pass --model" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "nomodel"), "--model", MODEL_SPEC]) == 2
    assert "has no explanations" in capsys.readouterr().err


def test_evaluate_on_an_explain_run_gives_the_scoreboard(tmp_path, capsys) -> None:
    import torch

    from tests.conftest import TinyCNN
    from xailab.cli import main
    from xailab.jobs.explain_images import explain_images
    from xailab.runs import Run

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    explain_images(model, x, out=tmp_path / "run", methods=["saliency", "input_x_gradient"],
                   targets="top1", png=False,
                   config={"model": "tests.conftest:TinyCNN", "weights": str(tmp_path / "w.pt")})
    assert main(["evaluate", "--run", str(tmp_path / "run"), "--device", "cpu"]) == 0
    assert "scoring its methods" in capsys.readouterr().out
    assert set(Run.open(tmp_path / "run").read_table("scoreboard")["method"]) == {"saliency", "input_x_gradient"}


def test_compare_loads_a_pretrained_run_with_its_published_weights(tmp_path, monkeypatch) -> None:
    """An explain run made with ``--pretrained`` records it; compare then builds the model with
    its published weights, not the bare (randomly initialised) architecture."""
    import xailab.models
    from xailab.cli import main
    from xailab.runs import Run

    Run.create(tmp_path / "r", kind="explain", config={"model": "efficientnet_lite0", "weights": None,
                                                      "pretrained": True, "num_classes": None})
    calls: list[tuple[str, bool]] = []

    class Stop(Exception):
        pass

    def create_model(spec, pretrained=False, **kw):
        calls.append((spec, pretrained))
        raise Stop

    def load_model(spec, weights=None, **kw):
        calls.append((spec, False))
        raise Stop

    monkeypatch.setattr(xailab.models, "create_model", create_model)
    monkeypatch.setattr(xailab.models, "load_model", load_model)
    with pytest.raises(Stop):
        main(["compare", str(tmp_path / "r")])
    # another model named without weights is refused (#16: no random weights by default) ...
    assert main(["compare", str(tmp_path / "r"), "--model", "efficientnet_lite0"]) == 2
    # ... unless asked for: then the bare architecture, not the run's pretrained weights
    with pytest.raises(Stop):
        main(["compare", str(tmp_path / "r"), "--model", "efficientnet_lite0", "--random-weights"])
    assert calls == [("efficientnet_lite0", True), ("efficientnet_lite0", False)]


def test_sampling_methods_get_the_cheap_sanity_schedule(patch_run: tuple[Run, torch.nn.Module]) -> None:
    run, model = patch_run
    from dataclasses import replace

    logs: list[str] = []
    # saliency costs 1 evaluation per image: above 0 it counts as "sampling" here
    cheap = replace(QUICK, sanity_images=4, sanity_steps=4, sanity_sampling_above=0,
                    sanity_sampling_images=1, sanity_sampling_steps=1)
    compare_run(run, model, methods=["saliency"], settings=cheap, log=logs.append)
    table = run.read_table("sanity")
    assert len(table) == 1 and table["schedule"].iloc[0] == "cheap: 1 images, 1 of 2 steps"  # PatchNet: 2 layers
    assert any("cheap schedule" in line for line in logs)
    compare_run(run, model, methods=["saliency"], settings=replace(cheap, sanity_sampling_above=100), log=logs.append)
    table = run.read_table("sanity")
    assert len(table) == 2 and table["schedule"].iloc[0] == "full: 4 images, 2 of 2 steps"
