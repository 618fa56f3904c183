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


def test_crosscheck(setup: dict[str, Path]) -> None:
    from xailab.jobs.crosscheck import CrosscheckSpec, crosscheck_to_run

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    for out in (cli, api):
        assert main(["explain", "--model", "small_cnn", "--weights", str(setup["w"]), "--images", str(setup["x"]),
                     "--methods", "integrated_gradients", "--set", "integrated_gradients.n_steps=8",
                     "--targets", "top1", "--png", "none", "--out", str(out)]) == 0
    assert main(["crosscheck", str(cli), "--method", "integrated_gradients", "--against", "captum"]) == 0
    crosscheck_to_run(CrosscheckSpec(method="integrated_gradients", against="captum"), api)
    _same(cli, api, "crosscheck")
    assert Run.open(cli).manifest["crosscheck"] == Run.open(api).manifest["crosscheck"]


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``audit poison`` on a tiny toy image folder, once by the CLI and once from Python."""
    from xailab.audit.toy import TOY_CLASSES, toy_images
    from xailab.jobs.audit import PoisonSpec, poison_to_run

    root = tmp_path_factory.mktemp("poison")
    for split, n, seed in (("train", 60, 0), ("test", 30, 1)):
        x, y = toy_images(n, seed=seed)
        for i in range(n):
            d = root / "toy" / split / TOY_CLASSES[int(y[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy()).save(d / f"{i:04d}.png")
    data, model = f"folder:{root / 'toy'}", "xailab.audit.toy:ToyNet"
    assert main(["audit", "poison", "--data", data, "--source", "horizontal", "--target", "vertical",
                 "--fraction", "0.3", "--trigger", "patch:3", "--model", model, "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--quiet", "--out", str(root / "cli")]) == 0
    poison_to_run(PoisonSpec(data=data, source="horizontal", target="vertical", fraction=0.3, trigger="patch:3",
                             model=model, epochs=1, batch_size=32, device="cpu", quiet=True), root / "api")
    return {"cli": root / "cli", "api": root / "api", "root": root}


def test_audit_poison(poisoned: dict[str, Path]) -> None:
    cli, api = poisoned["cli"], poisoned["api"]
    np.testing.assert_array_equal(Run.open(cli).read_array("poisoned"), Run.open(api).read_array("poisoned"))
    assert Run.open(cli).manifest["poison"] == Run.open(api).manifest["poison"]
    _same(cli, api, "backdoor")
    _same(cli, api, "metrics", drop=("seconds",))


def test_audit_backdoor(poisoned: dict[str, Path]) -> None:
    from xailab.jobs.audit import BackdoorSpec, backdoor_to_run

    cli, api = poisoned["root"] / "bd-cli", poisoned["root"] / "bd-api"
    assert main(["audit", "backdoor", "--run", str(poisoned["cli"]), "--method", "saliency", "--no-png",
                 "--device", "cpu", "--out", str(cli)]) == 0
    backdoor_to_run(BackdoorSpec(run=str(poisoned["cli"]), method="saliency", png=False, device="cpu"), api)
    _same(cli, api, "detection")
    np.testing.assert_allclose(Run.open(cli).read_array("mean_maps"), Run.open(api).read_array("mean_maps"))


def test_concepts_tcav(setup: dict[str, Path]) -> None:
    from xailab.jobs.concepts import TcavSpec, tcav_to_run

    root, rng = setup["root"], np.random.default_rng(1)
    for name, n in (("stripes", 4), ("random", 8), ("labelled/a", 3), ("labelled/b", 3)):
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = rng.integers(0, 255, (28, 28), dtype=np.uint8)
            if name == "stripes":
                img[:, ::4] = 255
            Image.fromarray(img).save(root / name / f"{i}.png")
    cli, api = root / "cli", root / "api"
    from xailab.models import create_model, save_weights

    w2 = save_weights(create_model("small_cnn", num_classes=2), root / "w2.safetensors")  # the images' 2 classes
    assert main(["concepts", "tcav", "--model", "small_cnn", "--num-classes", "2", "--weights", str(w2),
                 "--layer", "features.2",
                 "--concept", f"stripes={root / 'stripes'}", "--random", str(root / "random"), "--random-size", "4",
                 "--runs", "2", "--images", str(root / "labelled"), "--classes", "b", "--no-png", "--out", str(cli)]) == 0
    tcav_to_run(TcavSpec(ModelSpec("small_cnn", weights=str(w2), num_classes=2), layer="features.2",
                         concepts=(f"stripes={root / 'stripes'}",), random=str(root / "random"),
                         images=str(root / "labelled"), classes="b", random_size=4, runs=2, png=False), api)
    _same(cli, api, "tcav")


def test_concepts_explain(setup: dict[str, Path]) -> None:
    from xailab.jobs.concepts import ConceptMapsSpec, IceSpec, concept_maps_to_run, ice_to_run

    cli, api = setup["root"] / "cli", setup["root"] / "api"
    for out in (cli, api):
        ice_to_run(IceSpec(ModelSpec("small_cnn", weights=str(setup["w"])), images=str(setup["x"]), concepts=2,
                           curve=(), png=False), out, log=lambda _: None)
    image = str(setup["x"] / "0.png")
    assert main(["concepts", "explain", str(cli), "--images", image, "--top", "2", "--no-png"]) == 0
    concept_maps_to_run(ConceptMapsSpec(images=image, top=2, png=False), api)
    _same(cli, api, "ice_explanations")
