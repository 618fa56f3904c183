"""``xailab audit poison | backdoor | adversarial`` end to end on a tiny image folder, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xailab.audit.toy import TOY_CLASSES, toy_images
from xailab.cli import main
from xailab.runs import Run


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy problem as an image folder: train/<class>/*.png (240) and test/<class>/*.png (60)."""
    root = tmp_path_factory.mktemp("toy")
    for split, n, seed in (("train", 240, 0), ("test", 60, 1)):
        x, y = toy_images(n, seed=seed)
        for i in range(n):
            d = root / split / TOY_CLASSES[int(y[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy()).save(d / f"{i:04d}.png")
    return root


def poison_args(folder: Path, out: Path, **changes: str) -> list[str]:
    opts = {"--data": f"folder:{folder}", "--source": "horizontal", "--target": "vertical",
            "--fraction": "0.3", "--trigger": "patch:3", "--model": "xailab.audit.toy:ToyNet",
            "--epochs": "6", "--batch-size": "32", "--out": str(out), **changes}
    return ["audit", "poison", "--quiet", *[t for kv in opts.items() for t in kv]]


@pytest.fixture(scope="module")
def poisoned_run(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path_factory.mktemp("runs") / "bd"
        assert main(poison_args(folder, out)) == 0
        return out
    finally:
        torch.set_num_threads(n)


def test_poison_run(poisoned_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = Run.open(poisoned_run)
    m = run.manifest
    assert m["poison"]["target"] == 2 and m["poison"]["sources"] == [1]  # folder classes are sorted
    assert m["model"]["name"] == "xailab.audit.toy:ToyNet" and m["model"]["num_outputs"] == 3
    assert (poisoned_run / "checkpoints" / "best.safetensors").is_file()
    ev = run.read_table("backdoor").iloc[0]
    assert 0 <= ev["attack_success_rate"] <= 1 and ev["n_source"] == 20
    assert int(run.read_array("poisoned").sum()) == m["poison"]["n_poisoned"] > 0


def test_poison_records_every_epochs_predictions_and_learning_reads_them(
        poisoned_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Like train, audit poison records the clean test images' predictions after every epoch:
    `xailab learning` explains its checkpoints (the example of `learning --help`)."""
    import shutil

    from xailab.train.recorder import read_predictions

    run = shutil.copytree(poisoned_run, tmp_path / "bd")  # learning writes into the run
    rows = read_predictions(Run.open(run))
    assert sorted(set(rows["epoch"])) == list(range(1, 7)) and len(rows) == 6 * 60
    rc = main(["learning", str(run), "--methods", "saliency", "--limit", "6", "--region", "box:6,6,9,9"])
    assert rc == 0, capsys.readouterr().err


def test_backdoor_detection_on_the_run(poisoned_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "det"
    rc = main(["audit", "backdoor", "--run", str(poisoned_run), "--method", "saliency", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "spray_score" in text and "spectral_score" in text and "rule: flagged when" in text and "run:" in text
    table = Run.open(out).read_table("detection")
    assert list(table["class"]) == [0, 1, 2]
    assert table["poisoned_n"].sum() == table.loc[table["class"] == 2, "poisoned_n"].iloc[0] > 0
    files = {p.name for p in (out / "files" / "backdoor").iterdir()}
    assert {"scores.png", "class_0.png", "class_1.png", "class_2.png"} <= files
    assert Run.open(out).read_array("mean_maps").shape == (3, 2, 12, 12)


def test_adversarial_patch_on_the_run(poisoned_run: Path, folder: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "adv"
    rc = main(["audit", "adversarial", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:6",
               "--patch", "3", "--steps", "10", "--stride", "3", "--methods", "saliency,input_x_gradient",
               "--png", "2", "--out", str(out)])
    assert rc == 0
    assert "patch on 6 images" in capsys.readouterr().out
    run = Run.open(out)
    attack = run.read_table("attack")
    assert len(attack) == 6 and (attack["pixels_changed"] <= 9).all()
    shift = run.read_table("shift")
    assert set(shift["method"]) == {"saliency", "input_x_gradient"} and "mass_adv" in shift
    assert len(list((out / "files" / "audit").glob("shift_*.png"))) == 2
    assert run.read_array("patch_mask").shape == (6, 12, 12)


def test_adversarial_pgd_with_model_and_weights(poisoned_run: Path, folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "pgd"
    rc = main(["audit", "adversarial", "--model", "xailab.audit.toy:ToyNet", "--num-classes", "3",
               "--weights", str(poisoned_run / "checkpoints" / "best.safetensors"),
               "--images", f"folder:{folder}:test:4", "--attack", "pgd", "--eps", "0.1", "--steps", "5",
               "--methods", "", "--out", str(out)])
    assert rc == 0
    attack = Run.open(out).read_table("attack")
    assert attack["linf"].max() <= 0.1 + 1e-6


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"--trigger": "patch:20"}, "does not fit the 12x12 images"),
        ({"--fraction": "1.5"}, "fraction must lie in (0, 1]"),
        ({"--fraction": "0"}, "fraction must lie in (0, 1]"),
        ({"--target": "giraffe"}, "target class 'giraffe' does not exist; the classes are: 0=block"),
        ({"--source": "7"}, "source class 7 does not exist"),
        ({"--trigger": "star:3"}, "a trigger is patch:S"),
    ],
)
def test_poison_bad_input(folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          changes: dict[str, str], message: str) -> None:
    out = tmp_path / "bad"
    assert main(poison_args(folder, out, **changes)) == 2
    err = capsys.readouterr().err
    assert err.startswith("xailab audit: error:") and message in err
    assert not out.exists()  # nothing is left behind


def test_backdoor_and_adversarial_bad_input(poisoned_run: Path, folder: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "backdoor", "--run", str(poisoned_run), "--classes", "giraffe", "--out", str(tmp_path / "a")])
    assert rc == 2 and "'giraffe' does not exist" in capsys.readouterr().err
    # too few items a class for every detector asked: one line, not a KeyError on an empty table
    rc = main(["audit", "backdoor", "--run", str(poisoned_run), "--detectors", "spray,ac", "--rule", "spray",
               "--max-per-class", "3", "--out", str(tmp_path / "few")])
    err = capsys.readouterr().err
    assert rc == 2 and "no class has enough items" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "few").exists()
    rc = main(["audit", "adversarial", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:2",
               "--attack", "pgd", "--out", str(tmp_path / "b")])
    assert rc == 2 and "needs a budget: --eps" in capsys.readouterr().err
    rc = main(["audit", "adversarial", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:2",
               "--patch", "13", "--out", str(tmp_path / "c")])
    assert rc == 2 and "does not fit 12x12 images" in capsys.readouterr().err
    rc = main(["audit", "adversarial", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:2",
               "--attack", "pgd", "--eps", "0.1", "--target", "giraffe", "--out", str(tmp_path / "d")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err


def test_audit_without_action_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["audit"])
    assert "adversarial" in capsys.readouterr().out


def test_images_are_the_toy(folder: Path) -> None:
    from xailab.data import load_dataset

    ds = load_dataset(f"folder:{folder}", "train")
    assert ds.classes == sorted(TOY_CLASSES) and ds.image_size == (12, 12) and ds.channels == 1
    assert np.bincount(ds.targets.numpy()).tolist() == [80, 80, 80]
