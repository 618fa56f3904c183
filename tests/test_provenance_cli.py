"""Issue 16 beyond explain, through the CLI: every job records what its run was made from and
refuses (or recomputes) a rerun with other inputs, naming what differs (16.1); the model's classes
are checked against the data's in every command that takes both (16.4); ``train`` and ``audit
poison`` take ``--mean/--std/--input-range`` (16.16); a method the model cannot support is refused
before the run starts (16.19).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xailab.cli import main
from xailab.models import create_model, save_weights

TRAIN = ["--model", "small_cnn", "--epochs", "1", "--batch-size", "8", "--val-fraction", "0.25", "--quiet"]


def _folder(root: Path, classes: tuple[str, ...] = ("ant", "bee"), n: int = 4, seed: int = 0) -> Path:
    """``root/{train,test}/<class>/*.png``: 28x28 grey images, a bright or dark square per class."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, c in enumerate(classes):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 60, (28, 28), dtype=np.uint8)
                a[4 + 6 * k : 12 + 6 * k, 8:20] = 220
                Image.fromarray(a).save(root / split / c / f"{i}.png")
    return root


def _manifest(run: Path) -> dict:
    return json.loads((run / "manifest.json").read_text())


@pytest.fixture
def work(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    a = save_weights(create_model("small_cnn"), tmp_path / "a.safetensors")
    torch.manual_seed(1)
    b = save_weights(create_model("small_cnn"), tmp_path / "b.safetensors")
    return {"root": tmp_path, "a": a, "b": b, "data": _folder(tmp_path / "pets"),
            "four": _folder(tmp_path / "four", ("w", "x", "y", "z"), n=2)}


def test_16_1_train_resumes_the_same_inputs_and_refuses_others(work: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out, data = work["root"] / "t", f"folder:{work['data']}"
    assert main(["train", *TRAIN, "--data", data, "--out", str(out)]) == 0
    prov = _manifest(out)["provenance"]
    assert len(prov["data"]["train_sha256"]) == 64 and prov["xailab"] and prov["params"]["lr"] == 1e-3
    assert main(["train", *TRAIN, "--data", data, "--out", str(out)]) == 0  # the same inputs: resumed
    capsys.readouterr()
    # another normalisation, or the same folder with other images, is refused naming what differs
    assert main(["train", *TRAIN, "--data", data, "--mean", "0.5", "--std", "0.5", "--out", str(out)]) == 2
    assert "mean: None -> [0.5]" in capsys.readouterr().err
    img = next((work["data"] / "train" / "ant").iterdir())
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(img)
    assert main(["train", *TRAIN, "--data", data, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "data.train_sha256" in err and "choose another --out" in err


def test_16_16_train_and_poison_take_the_users_normalisation(work: dict[str, Path]) -> None:
    """``--input-range=-1,1`` is mean 0.5, std 0.5: the inputs trained on, the checkpoint's recorded
    preprocessing (which explain then uses) and the provenance all say so."""
    from xailab.models import get_preprocessing, load_model

    out, data = work["root"] / "t", f"folder:{work['data']}"
    assert main(["train", *TRAIN, "--data", data, "--input-range=-1,1", "--out", str(out)]) == 0
    assert _manifest(out)["provenance"]["model"]["preprocessing"] == {"mean": [0.5], "std": [0.5]}
    model = load_model("small_cnn", str(out / "checkpoints" / "best.safetensors"), num_classes=2, in_channels=1)
    prep = get_preprocessing(model)
    assert prep is not None and prep.mean == (0.5,) and prep.std == (0.5,)
    bd = work["root"] / "bd"
    assert main(["audit", "poison", "--data", data, "--target", "bee", "--source", "ant", "--fraction", "0.5",
                 "--trigger", "patch:3", "--model", "small_cnn", "--epochs", "1", "--batch-size", "8",
                 "--mean", "0.25", "--std", "0.5", "--quiet", "--out", str(bd)]) == 0
    prov = _manifest(bd)["provenance"]
    assert prov["model"]["preprocessing"] == {"mean": [0.25], "std": [0.5]} and prov["params"]["mean"] == [0.25]
    assert len(prov["data"]["train_sha256"]) == 64
    poisoned = load_model("small_cnn", str(bd / "checkpoints" / "best.safetensors"), num_classes=2, in_channels=1)
    assert get_preprocessing(poisoned).mean == (0.25,)  # type: ignore[union-attr]


def test_16_1_evaluate_into_out_refuses_another_model(work: dict[str, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    mnist = ["--data", f"folder:{work['four']}", "--num-classes", "4"]
    out = work["root"] / "ev"
    a4 = save_weights(create_model("small_cnn", num_classes=4), work["root"] / "a4.safetensors")
    b4 = save_weights(create_model("small_cnn", num_classes=4), work["root"] / "b4.safetensors")
    assert main(["evaluate", "--model", "small_cnn", "--weights", str(a4), *mnist, "--out", str(out)]) == 0
    assert main(["evaluate", "--model", "small_cnn", "--weights", str(a4), *mnist, "--split", "train",
                 "--out", str(out)]) == 0  # another split of the same model: its own part
    capsys.readouterr()
    assert main(["evaluate", "--model", "small_cnn", "--weights", str(b4), *mnist, "--out", str(out)]) == 2
    assert "model.weights_sha256" in capsys.readouterr().err
    assert _manifest(out)["provenance"]["model"]["weights_sha256"]


def _explain(work: dict[str, Path], out: Path, methods: str = "saliency") -> None:
    assert main(["explain", "--model", "small_cnn", "--weights", str(work["a"]), "--images",
                 str(work["data"] / "test" / "ant"), "--methods", methods, "--png", "none", "--out", str(out)]) == 0


def test_16_1_compare_and_crosscheck_refuse_a_model_that_did_not_make_the_maps(
        work: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = work["root"] / "e"
    _explain(work, out, "saliency,integrated_gradients")
    capsys.readouterr()
    assert main(["compare", str(out), "--weights", str(work["b"]), "--no-sanity", "--no-figures"]) == 2
    assert "made by another model" in capsys.readouterr().err
    assert main(["crosscheck", str(out), "--weights", str(work["b"])]) == 2
    assert "made by another model" in capsys.readouterr().err
    assert main(["compare", str(out), "--no-sanity", "--no-figures", "--steps", "4"]) == 0
    assert main(["crosscheck", str(out)]) == 0
    m = _manifest(out)
    assert m["compare_provenance"]["model"]["sha256"] == m["explain"]["identity"]["model"]
    assert m["crosscheck_provenance"]["model"]["weights_sha256"] == m["provenance"]["model"]["weights_sha256"]


def test_16_1_dissect_and_ice_never_mix_inputs(work: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    imgs_a, imgs_b = str(work["data"] / "test" / "ant"), str(work["data"] / "test" / "bee")
    d = work["root"] / "d"
    dissect = ["dissect", "--model", "small_cnn", "--images", imgs_a, "--layers", "features.2", "--no-png",
               "--out", str(d)]
    assert main([*dissect, "--weights", str(work["a"])]) == 0
    capsys.readouterr()
    assert main([*dissect, "--weights", str(work["b"])]) == 2
    assert "model.weights_sha256" in capsys.readouterr().err
    ice = ["concepts", "ice", "--model", "small_cnn", "--weights", str(work["a"]), "--layer", "features.9",
           "--concepts", "2", "--curve", "", "--no-png", "--out", str(work["root"] / "i")]
    assert main([*ice, "--images", imgs_a]) == 0
    assert main([*ice, "--images", imgs_a]) == 0
    assert "fit skipped" in capsys.readouterr().out  # the same inputs: the basis is reused
    assert main([*ice, "--images", imgs_b]) == 0  # other images: refitted, never the old basis
    out = capsys.readouterr().out
    assert "fit skipped" not in out and "fitting" in out


@pytest.mark.parametrize("command", ["evaluate", "concepts ice", "dissect", "audit adversarial", "audit backdoor",
                                     "counterfactual", "distill"])
def test_16_4_a_model_of_other_classes_is_refused(work: dict[str, Path], command: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A 10-class model and a 4-class folder: every command that takes a model and labelled data refuses."""
    four, out = f"folder:{work['four']}", str(work["root"] / "out")
    model = ["--model", "small_cnn", "--weights", str(work["a"])]
    argv = {
        "evaluate": ["evaluate", *model, "--data", four],
        "concepts ice": ["concepts", "ice", *model, "--images", four + ":test", "--layer", "features.9",
                         "--concepts", "2", "--out", out],
        "dissect": ["dissect", *model, "--images", four + ":test", "--layers", "features.2", "--concepts", "classes",
                    "--out", out],
        "audit adversarial": ["audit", "adversarial", *model, "--images", four + ":test", "--attack", "fgsm",
                              "--eps", "0.1", "--out", out],
        "audit backdoor": ["audit", "backdoor", *model, "--data", four, "--out", out],
        "counterfactual": ["counterfactual", *model, "--images", four + ":test", "--kinds", "region", "--out", out],
        "distill": ["distill", *model, "--images", four + ":test", "--features", "pixels", "--out", out],
    }[command]
    assert main(argv) == 2
    err = capsys.readouterr().err
    # (evaluate and backdoor size a zoo model for the data's 4 classes, yet the 10-class weights get the class check)
    assert "10 outputs" in err and "4 classes" in err and "another number of classes" not in err, err
    assert not Path(out).exists()


def test_16_4_a_model_trained_on_other_class_names_is_refused(work: dict[str, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Same count, other names (recorded by ``xailab train``): refused in evaluate and audit too."""
    t = work["root"] / "t"
    assert main(["train", *TRAIN, "--data", f"folder:{work['data']}", "--out", str(t)]) == 0
    other = _folder(work["root"] / "other", ("cat", "dog"), n=2)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(t), "--data", f"folder:{other}"]) == 2
    assert "trained on classes ant, bee" in capsys.readouterr().err
    assert main(["audit", "adversarial", "--run", str(t), "--images", f"folder:{other}:test", "--attack", "fgsm",
                 "--eps", "0.1", "--methods", "", "--out", str(work["root"] / "adv")]) == 2
    assert "trained on classes ant, bee" in capsys.readouterr().err


def test_16_19_a_method_the_model_cannot_support_is_refused_before_the_run(
        work: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    images = str(work["data"] / "test" / "ant")
    base = ["explain", "--model", "tests.test_jobs_cli:group_norm_net", "--images", images, "--png", "none"]
    out = work["root"] / "mixed"
    assert main([*base, "--methods", "deeplift,saliency,attention_rollout", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    log = captured.out
    first = log.index("deeplift: refused before the run")
    assert first < log.index("saliency:") and log.index("attention_rollout: refused before the run") < log.index("saliency:")
    assert "refused deeplift" in captured.err and "refused attention_rollout" in captured.err
    m = _manifest(out)["explain"]
    assert m["methods"] == ["saliency"] and set(m["refused"]) == {"deeplift", "attention_rollout"}
    # every method refused: nothing runs, no run is created
    none = work["root"] / "none"
    assert main([*base, "--methods", "deeplift", "--out", str(none)]) == 2
    assert "deeplift" in capsys.readouterr().err and not none.exists()
