"""`xailab concepts ice | explain | tcav` end to end on tiny image folders, and on real CIFAR-10."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xailab.cli import main
from xailab.runs.store import Run

from .conftest import shared_path


def write_pngs(folder: Path, n: int, seed: int, stripes: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        if stripes:
            img[(np.arange(32) % 4) < 2] = 255
        Image.fromarray(img).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from xailab.models import create_model, save_weights

    root = tmp_path_factory.mktemp("concepts_cli")
    write_pngs(root / "images" / "a", 6, 0)
    write_pngs(root / "images" / "b", 6, 1, stripes=True)
    write_pngs(root / "stripes", 5, 2, stripes=True)
    write_pngs(root / "random", 12, 3)
    (root / "empty").mkdir()
    torch.manual_seed(0)
    # two classes, as the labelled images (a model of other classes is refused: issue 16.4)
    weights = save_weights(create_model("cifar_cnn", num_classes=2), root / "cnn.safetensors")
    return {"root": root, "weights": weights}


def test_ice_then_explain(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, weights = world["root"], world["weights"]
    out = root / "ice_run"
    rc = main(["concepts", "ice", "--model", "cifar_cnn", "--num-classes", "2", "--weights", str(weights), "--images", str(root / "images"),
               "--layer", "features.5", "--concepts", "3", "--curve", "2,3", "--curve-images", "6",
               "--gallery", "3", "--batch-size", "5", "--out", str(out)])
    assert rc == 0
    run = Run.open(out)
    assert run.read_array("ice_basis").shape == (3, 32)
    assert run.read_array("ice_max_scores").shape == (12, 3)
    imp = run.read_table("ice_importance")
    assert len(imp) == 3 * 2 and set(imp["class_name"]) == {"a", "b"}
    assert run.read_table("ice_fidelity")["n_concepts"].tolist() == [2, 3]
    for f in ("overview.png", "gallery_00.png", "patches.png", "sensitivity.png", "presence.png", "fidelity.png"):
        assert (out / "files" / "ice" / f).stat().st_size > 1000
    assert run.manifest["ice"]["layer"] == "features.5"

    rc = main(["concepts", "explain", str(out), "--images", str(root / "random" / "000.png"), "--top", "2"])
    assert rc == 0
    assert "top concepts" in capsys.readouterr().out
    assert len(list((out / "files" / "ice" / "explain").glob("*.png"))) == 1
    assert len(run.read_table("ice_explanations")) == 3


    # another model's weights: the concepts were not fitted on it; refused in one line, nothing written
    from xailab.models import create_model, save_weights

    torch.manual_seed(1)
    other = save_weights(create_model("cifar_cnn", num_classes=2), root / "other.safetensors")
    capsys.readouterr()
    rc = main(["concepts", "explain", str(out), "--images", str(root / "random" / "001.png"),
               "--model", "cifar_cnn", "--num-classes", "2", "--weights", str(other)])
    err = capsys.readouterr().err
    assert rc == 2 and "fitted on another model" in err and len(err.strip().splitlines()) == 1
    assert len(run.read_table("ice_explanations")) == 3


def test_ice_refuses_a_batchnorm_layer(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, weights = world["root"], world["weights"]
    rc = main(["concepts", "ice", "--model", "cifar_cnn", "--num-classes", "2", "--weights", str(weights), "--images", str(root / "images"),
               "--layer", "features.4", "--concepts", "2", "--curve", "", "--no-png", "--out", str(root / "bad")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "BatchNorm2d" in err and "--clamp" in err


def test_tcav_and_an_empty_concept_folder(world: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, weights = world["root"], world["weights"]
    common = ["concepts", "tcav", "--model", "cifar_cnn", "--num-classes", "2", "--weights", str(weights), "--layer", "features.5",
              "--random", str(root / "random"), "--random-size", "4", "--runs", "2",
              "--images", str(root / "images"), "--classes", "b"]
    rc = main([*common, "--concept", f"stripes={root / 'stripes'}", "--out", str(root / "tcav_run")])
    assert rc == 0
    table = Run.open(root / "tcav_run").read_table("tcav")
    assert table["concept"].tolist() == ["stripes"] and table["class_name"].tolist() == ["b"]
    assert table["n_runs"].tolist() == [2]
    rc = main([*common, "--concept", f"nothing={root / 'empty'}", "--out", str(root / "tcav_bad")])
    assert rc == 2
    assert "holds no usable images" in capsys.readouterr().err


@pytest.mark.shared_data
def test_ice_on_real_cifar_with_resnet20() -> None:
    """Ten concepts of ResNet-20's last block over 200 real test images: the reconstruction keeps
    most of the model's decisions, more concepts keep more, and the concept maps are local."""
    from xailab.concepts.ice import analyse_ice, fidelity_curve, fit_concepts
    from xailab.data import load_images
    from xailab.models import create_model, get_preprocessing

    weights = shared_path("cifar10-resnet", "resnet20.safetensors")
    tar = shared_path("cifar10-jpg.tar.gz")
    model = create_model("resnet20", weights=weights)
    x, y, _, _ = load_images("cifar10:test:200", get_preprocessing(model), root=tar)
    assert y is not None
    bases = fit_concepts(model, x, [2, 10], layer="layer3.2", batch_size=100)
    res = analyse_ice(model, bases[10], x, y, batch_size=100)
    assert res.fidelity["top1_agreement"] > 0.8
    assert res.fidelity["reconstruction_error"] < 0.7
    curve = fidelity_curve(model, bases, x[:100], batch_size=100)
    assert curve["top1_agreement"].iloc[1] > curve["top1_agreement"].iloc[0]
    assert curve["reconstruction_error"].iloc[1] < curve["reconstruction_error"].iloc[0]
    # each concept is strongest in a few classes, not everywhere
    assert (res.presence.max(1).values > 2 * res.presence.mean(1)).float().mean() >= 0.5
