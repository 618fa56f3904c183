"""``xailab explain --mistakes K``: images the model gets wrong are added, and only from datasets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xailab.cli import main
from xailab.models import create_model, save_weights
from xailab.runs import Run

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Fashion-MNIST (dataset-fashion-mnist) is not installed")
def test_mistakes_are_appended_and_are_misclassified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    w = save_weights(create_model("small_cnn"), tmp_path / "w.safetensors")  # untrained: mostly wrong
    out = tmp_path / "run"
    assert main(["explain", "--model", "small_cnn", "--weights", str(w), "--images", "fashion_mnist:test:3",
                 "--methods", "saliency", "--targets", "true,top1", "--mistakes", "2", "--png", "none",
                 "--out", str(out)]) == 0
    assert "added 2 misclassified image(s)" in capsys.readouterr().out
    run = Run.open(out)
    images = run.read_table("images")
    assert len(images) == 5 and images["name"].is_unique
    t = run.read_table("explanations")
    for i in (3, 4):  # the appended ones: true and top1 differ
        row = t[(t["image"] == i)].set_index("target")
        assert row.loc["true", "class"] != row.loc["top1", "class"]
    assert run.manifest["config"]["mistakes"] == 2


def test_mistakes_need_a_dataset_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    torch.manual_seed(0)
    w = save_weights(create_model("small_cnn"), tmp_path / "w.safetensors")
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    assert main(["explain", "--model", "small_cnn", "--weights", str(w), "--images", str(tmp_path / "a.png"),
                 "--methods", "saliency", "--mistakes", "1", "--png", "none", "--out", str(tmp_path / "r")]) == 2
    assert "--mistakes needs labelled images from a dataset spec" in capsys.readouterr().err
