"""timm: and hf: models: built by spec, preprocessing from their own config, clear refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from xailab.core.errors import CheckpointError, ModelError
from xailab.models import create_model, get_preprocessing, load_model, save_weights

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TINY_VIT = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2,embed_dim=48,num_heads=2"


def tiny_hf_vit(folder: Path, *, preprocessor: bool = True) -> Path:
    """A random-weight ``ViTForImageClassification`` saved as a Hugging Face folder."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    transformers.ViTForImageClassification(cfg).save_pretrained(str(folder))
    if preprocessor:
        (folder / "preprocessor_config.json").write_text(json.dumps({
            "image_mean": [0.4, 0.5, 0.6], "image_std": [0.2, 0.25, 0.3], "resample": 3,
            "size": {"height": 32, "width": 32}}))
    return folder


def test_timm_spec_with_kwargs_and_its_preprocessing() -> None:
    model = load_model(TINY_VIT, num_classes=10)
    prep = get_preprocessing(model)
    assert prep is not None and prep.input_size == (32, 32) and prep.interpolation == "bicubic"
    cfg = timm.data.resolve_data_config({}, model=model)
    assert prep.mean == pytest.approx(cfg["mean"]) and prep.std == pytest.approx(cfg["std"])
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10) and not model.training
    conv = load_model("timm:convnext_atto", num_classes=3)
    cp = get_preprocessing(conv)
    assert cp is not None and cp.mean == pytest.approx((0.485, 0.456, 0.406)) and cp.resize == 256


def test_timm_weights_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    a = load_model(TINY_VIT, num_classes=10)
    w = save_weights(a, tmp_path / "vit.safetensors")
    torch.manual_seed(2)
    b = load_model(TINY_VIT, w, num_classes=10)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_bad_timm_name_gives_the_closest() -> None:
    with pytest.raises(ModelError, match="closest: vit_tiny_patch16_224"):
        load_model("timm:vit_tiny_patch16_22")
    with pytest.raises(ModelError, match="key=value"):
        load_model("timm:resnet18,oops")


def test_missing_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ModelError, match=r"pip install 'xailab\[modern\]'"):
        load_model("timm:resnet18")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelError, match="transformers"):
        create_model("hf:./nowhere")


def test_hf_folder_logits_and_preprocessing(tmp_path: Path) -> None:
    folder = tiny_hf_vit(tmp_path / "vit")
    model = load_model(f"hf:{folder}")
    ref = transformers.ViTForImageClassification.from_pretrained(str(folder)).eval()
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, ref(pixel_values=x).logits)
    prep = get_preprocessing(model)
    assert prep is not None and prep.mean == (0.4, 0.5, 0.6) and prep.std == (0.2, 0.25, 0.3)
    assert prep.input_size == (32, 32) and prep.interpolation == "bicubic"
    with pytest.raises(ModelError, match="10 labels"):
        load_model(f"hf:{folder}", num_classes=4)


def test_hf_folder_without_weights_or_with_pickles(tmp_path: Path) -> None:
    folder = tiny_hf_vit(tmp_path / "vit")
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no \*\.safetensors"):
        load_model(f"hf:{folder}")
    (folder / "pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="pickled weights"):
        load_model(f"hf:{folder}")
    with pytest.raises(ModelError, match=r"no config\.json"):
        load_model(f"hf:{tmp_path}")
    with pytest.raises(ModelError, match="not in the Hugging Face cache"):
        load_model("hf:someone/no-such-model")


def test_cli_explains_timm_and_hf_models_and_records_preprocessing(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from xailab.cli import main

    rng = np.random.default_rng(0)
    (tmp_path / "x").mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "x" / f"{i}.png")
    torch.manual_seed(0)
    w = save_weights(load_model(TINY_VIT, num_classes=10), tmp_path / "vit.safetensors")
    folder = tiny_hf_vit(tmp_path / "hf")
    for spec, weights in ((TINY_VIT, ["--weights", str(w)]), (f"hf:{folder}", [])):
        out = tmp_path / f"run-{spec[:2]}"  # not the HF folder itself: --out a folder of files is refused
        assert main(["explain", "--model", spec, *weights, "--num-classes", "10", "--images", str(tmp_path / "x"),
                     "--methods", "saliency", "--no-png", "--out", str(out)]) == 0
        config = json.loads((out / "manifest.json").read_text())["config"]
        assert config["preprocessing"]["input_size"] == [32, 32]
    assert main(["explain", "--model", "timm:vit_tiny_patch16_22", "--images", str(tmp_path / "x"),
                 "--methods", "saliency", "--out", str(tmp_path / "bad")]) == 2


def test_models_command_lists_timm(capsys: pytest.CaptureFixture[str]) -> None:
    from xailab.cli import main

    assert main(["models", "timm:vit_tiny_patch16_2*"]) == 0
    assert "timm:vit_tiny_patch16_224" in capsys.readouterr().out
    assert main(["models", "timm:nothing_like_this*"]) == 2


def test_timm_grey_model_gets_grey_preprocessing() -> None:
    model = load_model(TINY_VIT, num_classes=10, in_channels=1)
    prep = get_preprocessing(model)
    assert prep is not None and prep.channels == 1 and len(prep.mean) == 1
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
