"""`xailab train` / `xailab evaluate` through the CLI entry point, on tiny image folders."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xailab.cli import main
from xailab.runs import Run

pytest.importorskip("xailab.models")
models = pytest.importorskip("xailab.models")
if not hasattr(models, "create_model"):
    pytest.skip("xailab.models is not finished yet", allow_module_level=True)


def make_folder(root: Path, per_class: int = 12, size: int = 16, split_test: bool = True) -> Path:
    """Two classes a pixel net can tell apart: dark images vs bright images."""
    rng = np.random.default_rng(0)
    splits = ("train", "test") if split_test else ("",)
    for split in splits:
        for c, (name, base) in enumerate((("dark", 60), ("bright", 190))):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class if split != "test" else per_class // 2):
                px = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(px).save(d / f"{c}_{i:03d}.png")
    return root


def m_mean(run: Path) -> list[float]:
    return list(Run.open(run).manifest["dataset"]["mean"])


BASE = ["--model", "binary_cnn", "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--quiet"]


def train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", *BASE, "--data", f"folder:{data}", "--out", str(out), *extra])


def test_train_then_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "pets")
    out = tmp_path / "run"
    assert train(data, out, "--val-fraction", "0.25") == 0
    text = capsys.readouterr().out
    assert f"run: {out}" in text and "test (best checkpoint" in text
    run = Run.open(out)
    m = run.manifest
    assert m["config"]["model"] == "binary_cnn" and m["status"]["state"] == "finished"
    assert m["dataset"]["train_size"] == 18 and m["dataset"]["val_size"] == 6
    assert m["dataset"]["test_size"] == 12 and m["classes"] == ["bright", "dark"]
    preds = run.read_table("predictions")  # the test set is tracked by default
    assert sorted(preds["epoch"].unique()) == [1, 2] and len(preds) == 24
    assert "test" in m["evaluation"]

    assert main(["evaluate", "--run", str(out)]) == 0
    text = capsys.readouterr().out
    assert "confusion matrix" in text and "macro F1" in text
    assert main(["evaluate", "--run", str(out), "--checkpoint", "1", "--split", "train"]) == 0
    assert "train@1" in Run.open(out).table_parts("evaluation")

    # the same command into another run gives the same numbers (the initial weights are seeded)
    assert train(data, tmp_path / "again", "--val-fraction", "0.25") == 0
    cols = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc"]
    assert Run.open(tmp_path / "again").read_table("metrics")[cols].equals(run.read_table("metrics")[cols])

    # starting from pretrained weights: the data is normalised as those weights expect
    from xailab.models import get_preprocessing, load_model, save_weights

    m = load_model("binary_cnn", num_classes=2)
    save_weights(m, tmp_path / "w.safetensors")
    assert train(data, tmp_path / "ft", "--weights", str(tmp_path / "w.safetensors"), "--epochs", "1") == 0
    expect = list(get_preprocessing(m).mean)  # type: ignore[union-attr]
    assert m_mean(tmp_path / "ft") == pytest.approx(expect)
    assert m_mean(out) != pytest.approx(expect)  # trained from scratch: the folder's own statistics

    # the same command again: nothing to redo; more epochs: continues
    assert train(data, out, "--val-fraction", "0.25") == 0
    assert train(data, out, "--val-fraction", "0.25", "--epochs", "3") == 0
    assert Run.open(out).read_table("metrics")["epoch"].tolist() == [1, 2, 3]
    # other settings on the same run: refused
    assert train(data, out, "--val-fraction", "0.25", "--lr", "0.5") == 2
    assert "other settings" in capsys.readouterr().err


def test_kfold_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_folder(tmp_path / "pets", per_class=9, split_test=False)
    out = tmp_path / "cv"
    assert train(data, out, "--folds", "3", "--epochs", "1") == 0
    text = capsys.readouterr().out
    assert "mean ± std" in text and "f1_macro" in text
    assert len(Run.open(out).read_table("kfold")) == 3
    assert main(["evaluate", "--run", str(out / "folds" / "fold-2"), "--split", "train"]) == 0


def _assert_failed(code: int, capsys: pytest.CaptureFixture[str], words: str, out: Path) -> None:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("xailab ") and words in err.lower(), err
    assert not out.exists(), "a failed command left a run directory behind"


def test_bad_data_exits_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    _assert_failed(train(tmp_path / "nowhere", out), capsys, "not found", out)
    (tmp_path / "empty").mkdir()
    _assert_failed(train(tmp_path / "empty", out), capsys, "", out)
    bad = make_folder(tmp_path / "bad")
    (bad / "train" / "dark" / "broken.png").write_bytes(b"this is not a png")
    _assert_failed(train(bad, out), capsys, "broken.png", out)


def test_bad_models_and_checkpoints_exit_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xailab.models import create_model, save_weights

    data = make_folder(tmp_path / "pets")
    out = tmp_path / "run"
    ten = tmp_path / "ten.safetensors"
    save_weights(create_model("binary_cnn", num_classes=10), ten)
    # weights of a 10-class model for a 2-class dataset; a model with 5 outputs: refused
    _assert_failed(train(data, out, "--weights", str(ten)), capsys, "does not fit", out)
    code = main(["train", *BASE, "--model", "tests.conftest:TinyCNN", "--data", f"folder:{data}",
                 "--out", str(out)])
    _assert_failed(code, capsys, "2 classes", out)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(ten.read_bytes()[:200])
    _assert_failed(train(data, out, "--weights", str(corrupt)), capsys, "", out)

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, ...]:
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    _assert_failed(train(data, out, "--weights", str(evil)), capsys, "", out)
    assert not marker.exists()
    code = main(["evaluate", "--model", "binary_cnn", "--weights", str(evil), "--data", f"folder:{data}"])
    assert code == 2 and not marker.exists()
    # a run's checkpoint that was damaged
    assert train(data, out, "--epochs", "1") == 0
    (out / "checkpoints" / "best.safetensors").write_bytes(b"garbage")
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out)]) == 2
    assert "corrupt" in capsys.readouterr().err
    # not a run
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "file.txt").write_text("x")
    assert train(data, tmp_path / "plain") == 2
    assert "not an xailab run" in capsys.readouterr().err
