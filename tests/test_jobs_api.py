"""Every job the CLI runs, Python runs with the same result: the CLI builds a spec and calls the
same ``*_to_run(spec, out)`` (issue 17). One test per job, on tiny settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from xailab.cli import main
from xailab.jobs.model import ModelSpec
from xailab.models import create_model, save_weights
from xailab.runs import Run

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _same(a: Path, b: Path, table: str, drop: tuple[str, ...] = ()) -> None:
    ta, tb = (Run.open(p).read_table(table) for p in (a, b))
    cols = [c for c in ta.columns if c not in drop and "seconds" not in c and "time" not in c]
    pd.testing.assert_frame_equal(ta[cols].reset_index(drop=True), tb[cols].reset_index(drop=True))


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    w = save_weights(create_model("small_cnn"), tmp_path / "w.safetensors")
    x = tmp_path / "x"
    x.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(x / f"{i}.png")
    return {"w": w, "x": x, "root": tmp_path}


def test_explain_and_compare(setup: dict[str, Path]) -> None:
    from xailab.jobs.compare import CompareSpec, compare_to_run
    from xailab.jobs.explain import ExplainSpec, explain_to_run
    from xailab.metrics.scoreboard import CompareSettings

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    assert main(["explain", "--model", "small_cnn", "--weights", str(setup["w"]), "--images", str(setup["x"]),
                 "--methods", "saliency,gradcam", "--targets", "top1,least", "--png", "none", "--out", str(cli)]) == 0
    explain_to_run(ExplainSpec(ModelSpec("small_cnn", weights=str(setup["w"])), images=str(setup["x"]),
                               methods=("saliency", "gradcam"), targets=("top1", "least"), png="none"), api)
    _same(cli, api, "explanations")
    assert main(["compare", str(cli), "--no-sanity", "--no-figures", "--steps", "4", "--runs", "4"]) == 0
    compare_to_run(CompareSpec(settings=CompareSettings(sanity=False, steps=4, faithfulness_runs=4), figures=False), api)
    _same(cli, api, "faithfulness")
    _same(cli, api, "scoreboard")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST is not installed")
def test_train_and_evaluate(setup: dict[str, Path]) -> None:
    from xailab.jobs.evaluate import EvaluateSpec, evaluate_to_run
    from xailab.jobs.train import TrainSpec, train_to_run

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    argv = ["train", "--model", "small_cnn", "--data", "fashion_mnist", "--epochs", "1", "--limit-train", "200",
            "--limit-test", "100", "--batch-size", "50", "--track-limit", "20", "--quiet", "--device", "cpu"]
    assert main([*argv, "--out", str(cli)]) == 0
    train_to_run(TrainSpec(model="small_cnn", data="fashion_mnist", epochs=1, limit_train=200, limit_test=100,
                           batch_size=50, track_limit=20, quiet=True, device="cpu"), api)
    _same(cli, api, "metrics", drop=("seconds",))
    _same(cli, api, "evaluation")
    assert main(["evaluate", "--run", str(cli), "--split", "test", "--limit", "50"]) == 0
    evaluate_to_run(EvaluateSpec(run=str(api), split="test", limit=50))
    _same(cli, api, "evaluation")


def test_dissect(setup: dict[str, Path]) -> None:
    from xailab.jobs.dissect import DissectSpec, dissect_to_run

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    assert main(["dissect", "--model", "small_cnn", "--weights", str(setup["w"]), "--images", str(setup["x"]),
                 "--layers", "features.2", "--concepts", "colour", "--quantile", "0.05", "--no-png",
                 "--out", str(cli)]) == 0
    dissect_to_run(DissectSpec(ModelSpec("small_cnn", weights=str(setup["w"])), layers="features.2",
                               images=str(setup["x"]), concepts="colour", quantile=0.05, png=False), api)
    for t in Run.open(cli).tables():
        _same(cli, api, t)


def test_concepts_ice(setup: dict[str, Path]) -> None:
    from xailab.jobs.concepts import IceSpec, ice_to_run

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    assert main(["concepts", "ice", "--model", "small_cnn", "--weights", str(setup["w"]), "--images",
                 str(setup["x"]), "--concepts", "2", "--curve", "", "--no-png", "--out", str(cli)]) == 0
    ice_to_run(IceSpec(ModelSpec("small_cnn", weights=str(setup["w"])), images=str(setup["x"]), concepts=2,
                       curve=(), png=False), api)
    np.testing.assert_allclose(Run.open(cli).read_array("ice_basis"), Run.open(api).read_array("ice_basis"))
    _same(cli, api, "ice_importance")


def test_audit_adversarial(setup: dict[str, Path]) -> None:
    from xailab.jobs.audit import AdversarialSpec, adversarial_to_run

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    assert main(["audit", "adversarial", "--model", "small_cnn", "--weights", str(setup["w"]), "--images",
                 str(setup["x"]), "--attack", "fgsm", "--eps", "0.05", "--methods", "saliency", "--png", "0",
                 "--out", str(cli)]) == 0
    adversarial_to_run(AdversarialSpec(ModelSpec("small_cnn", weights=str(setup["w"])), images=str(setup["x"]),
                                       attack="fgsm", eps=0.05, methods=("saliency",), png=0), api)
    _same(cli, api, "attack")
    _same(cli, api, "shift")
