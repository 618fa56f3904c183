"""A timm spec sized by its weights: in_chans / num_classes / img_size read from the shapes,
every other difference refused with the spec to write (tiny random-weight timm models)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from xailab.core.errors import CheckpointError
from xailab.models import get_preprocessing, load_model

timm = pytest.importorskip("timm")
from safetensors.torch import save_file  # noqa: E402

from xailab.models.timm_weights import shape_kwargs  # noqa: E402

ARCH = {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2}


def saved(tmp_path: Path, name: str, **kwargs: object) -> tuple[torch.nn.Module, Path]:
    """A random-weight timm model saved as a plain safetensors state dict (no xailab metadata)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def spec(name: str, **kwargs: object) -> str:
    return "timm:" + ",".join([name, *(f"{k}={v}" for k, v in kwargs.items())])


def test_vit_for_grey_28x28_images_is_sized_by_its_weights(tmp_path: Path) -> None:
    ref, path = saved(tmp_path, "vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, **ARCH)
    model = load_model(spec("vit_tiny_patch16_224", **ARCH), path)
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    prep = get_preprocessing(model)
    assert prep is not None and prep.channels == 1 and prep.input_size == (28, 28)
    assert shape_kwargs(model, ref.state_dict()) == {"in_chans": 1, "num_classes": 10, "img_size": 28,
                                                     "patch_size": 4, "embed_dim": 32, "depth": 1, "mlp_ratio": 4.0}


def test_convnet_gets_in_chans_and_num_classes(tmp_path: Path) -> None:
    ref, path = saved(tmp_path, "convnext_atto", in_chans=1, num_classes=5)
    model = load_model("timm:convnext_atto", path)
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_other_architecture_names_every_argument_and_the_suggestion_loads(tmp_path: Path) -> None:
    ref, path = saved(tmp_path, "vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, **ARCH)
    with pytest.raises(CheckpointError) as err:
        load_model("timm:vit_tiny_patch16_224", path)
    text = str(err.value)
    for k, v in {"in_chans": 1, "num_classes": 10, "img_size": 28, "patch_size": 4, "embed_dim": 32, "depth": 1}.items():
        assert f"{k}={v}" in text
    assert "num_heads" in text  # not in the weights: the user must give it
    suggested = re.search(r"--model '([^']+)'", text)
    assert suggested is not None
    model = load_model(f"{suggested.group(1)},num_heads=2", path)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_a_given_argument_is_never_overridden(tmp_path: Path) -> None:
    _, path = saved(tmp_path, "vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, **ARCH)
    with pytest.raises(CheckpointError, match="num_classes=10"):
        load_model(spec("vit_tiny_patch16_224", **ARCH), path, num_classes=3)
    with pytest.raises(CheckpointError, match="img_size=28"):
        load_model(spec("vit_tiny_patch16_224", img_size=32, **ARCH), path)


def test_cli_explains_grey_images_with_a_bare_timm_name(tmp_path: Path) -> None:
    from PIL import Image

    from xailab.cli import main

    _, path = saved(tmp_path, "vit_tiny_patch16_224", img_size=28, in_chans=1, num_classes=10, **ARCH)
    rng = np.random.default_rng(0)
    (tmp_path / "x").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), mode="L").save(tmp_path / "x" / f"{i}.png")
    out = tmp_path / "run"
    assert main(["explain", "--model", spec("vit_tiny_patch16_224", **ARCH), "--weights", str(path),
                 "--images", str(tmp_path / "x"), "--methods", "saliency", "--no-png", "--out", str(out)]) == 0
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["preprocessing"]["input_size"] == [28, 28] and config["preprocessing"]["channels"] == 1
    assert main(["explain", "--model", "timm:vit_tiny_patch16_224", "--weights", str(path), "--images",
                 str(tmp_path / "x"), "--methods", "saliency", "--out", str(tmp_path / "bad")]) == 2
