"""Issue #16 through the command line: one test per finding (f3, f5, f9, f12, ...)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

import xailab
from xailab.cli import main
from xailab.core.explanation import Explanation
from xailab.models import create_model, get_preprocessing, save_weights


def _folder(root: Path, n: int = 2, size: int = 28, mode: str = "L") -> Path:
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (size, size) if mode == "L" else (size, size, len(mode))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"im{i}.png")
    return folder


def _small_cnn(root: Path) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model("small_cnn"), root / "w.safetensors")


def test_f3_api_and_cli_use_the_same_black_baseline(tmp_path: Path) -> None:
    """xailab.create("integrated_gradients", zoo model) takes the model's normalisation, as the CLI."""
    weights = _small_cnn(tmp_path)
    out = tmp_path / "run"
    argv = ["explain", "--model", "small_cnn", "--weights", str(weights), "--images", str(_folder(tmp_path)),
            "--methods", "integrated_gradients", "--set", "integrated_gradients.n_steps=8", "--no-png",
            "--out", str(out)]
    assert main(argv) == 0
    cli = Explanation.load(out / "explanations" / "integrated_gradients")
    images = torch.from_numpy(np.load(next((out / "arrays" / "images").glob("*.npy"))))
    model = create_model("small_cnn", weights=weights)
    api = xailab.create("integrated_gradients", model, n_steps=8).explain(images)
    assert api.params["mean"] == cli.params["mean"] == list(get_preprocessing(model).mean)
    torch.testing.assert_close(api.maps, cli.maps)
