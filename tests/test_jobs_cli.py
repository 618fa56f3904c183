"""Issue 16 through the CLI: runs that know what they hold, inputs checked before anything is written.

Each test names its finding (16.N). They fail on the main before the jobs room: a stale run was
reused silently, a zoo model ran with random weights, a folder of the user's files became a run,
a late input error left a half-written run, two writers lost entries, a run's relative paths broke
``compare`` elsewhere, a model's own normalisation could not be given, and one refused method
stopped the whole job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from xailab.cli import main
from xailab.models import create_model, save_weights


class GroupNormNet(nn.Module):
    """A GroupNorm, which DeepLIFT has no rule for (refused); saliency does not care."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4)
        self.act, self.fc = nn.ReLU(), nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.norm(self.conv(x))).mean(dim=(2, 3)))


def group_norm_net() -> nn.Module:
    torch.manual_seed(0)
    return GroupNormNet()


def _pngs(folder: Path, n: int, seed: int = 0, size: int = 28) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    a = save_weights(create_model("small_cnn"), tmp_path / "a.safetensors")
    torch.manual_seed(1)
    b = save_weights(create_model("small_cnn"), tmp_path / "b.safetensors")
    return {"a": a, "b": b, "x": _pngs(tmp_path / "x", 3), "y": _pngs(tmp_path / "y", 3, seed=5),
            "fewer": _pngs(tmp_path / "fewer", 2), "root": tmp_path}


def _explain(weights: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["explain", "--model", "small_cnn", "--weights", str(weights), "--images", str(images),
                 "--methods", "saliency", "--png", "none", "--out", str(out), *extra])


def test_16_1_a_rerun_into_the_same_out_refuses_to_mix(setup: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "run"
    assert _explain(setup["a"], setup["x"], out) == 0
    before = (out / "explanations" / "saliency" / "maps.safetensors").read_bytes() \
        if (out / "explanations" / "saliency" / "maps.safetensors").exists() else None
    capsys.readouterr()
    assert _explain(setup["a"], setup["x"], out) == 0  # the same job: resumed, skipped
    assert "already in the run" in capsys.readouterr().out
    for weights, images, extra, what in ((setup["b"], setup["x"], (), "another model"),
                                         (setup["a"], setup["y"], (), "other images"),
                                         (setup["a"], setup["x"], ("--targets", "top2"), "other targets"),
                                         (setup["a"], setup["fewer"], (), "other images")):
        assert _explain(weights, images, out, *extra) == 2
        err = capsys.readouterr().err
        assert what in err and "choose another --out" in err and err.count("\n") == 1, err
    if before is not None:  # the maps of the first job are untouched
        assert (out / "explanations" / "saliency" / "maps.safetensors").read_bytes() == before


@pytest.mark.parametrize("argv", [
    ["explain", "--images", "{x}", "--methods", "saliency", "--out", "{o}"],
    ["evaluate", "--data", "fashion_mnist"],
    ["concepts", "ice", "--images", "{x}", "--out", "{o}"],
    ["dissect", "--images", "{x}", "--layers", "features.2", "--out", "{o}"],
    ["audit", "adversarial", "--images", "{x}", "--eps", "0.1", "--out", "{o}"],
])
def test_16_2_a_zoo_model_without_weights_is_refused(setup: dict[str, Path], argv: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "o"
    args = [a.format(x=setup["x"], o=out) for a in argv]
    cut = 2 if args[0] in ("audit", "concepts") else 1
    assert main([*args[:cut], "--model", "small_cnn", *args[cut:]]) == 2
    err = capsys.readouterr().err
    assert "has no weights" in err and "--random-weights" in err
    assert not out.exists()


def test_16_2_random_weights_when_asked_and_compare_and_crosscheck_follow_the_run(setup: dict[str, Path]) -> None:
    out = setup["root"] / "r"
    assert main(["explain", "--model", "small_cnn", "--random-weights", "--images", str(setup["x"]),
                 "--methods", "saliency", "--png", "none", "--out", str(out)]) == 0
    assert json.loads((out / "manifest.json").read_text())["config"]["random_weights"] is True
    assert main(["compare", str(out), "--no-sanity", "--no-figures", "--steps", "4", "--runs", "4"]) == 0
    # naming another zoo model without weights is refused again
    assert main(["compare", str(out), "--model", "small_cnn", "--no-sanity"]) == 2
    assert main(["crosscheck", str(out), "--model", "small_cnn"]) == 2


def test_16_4_class_count_of_model_and_data_must_agree(setup: dict[str, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    four = setup["root"] / "four"
    for c in ("a", "b", "c", "d"):
        _pngs(four / c, 1, seed=ord(c))
    out = setup["root"] / "o"
    assert _explain(setup["a"], four, out, "--targets", "true") == 2
    err = capsys.readouterr().err
    assert "10 outputs" in err and "4 classes" in err and "--class-names" in err
    assert not out.exists()
    names = setup["root"] / "names.txt"
    names.write_text("\n".join(f"c{i}" for i in range(10)))
    assert _explain(setup["a"], four, out, "--class-names", str(names)) == 0  # mapped explicitly


def test_16_6_two_explain_processes_on_one_out_lose_no_entry(setup: dict[str, Path]) -> None:
    out = setup["root"] / "both"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-m", "xailab.cli", "explain", "--model", "small_cnn", "--weights",
                               str(setup["a"]), "--images", str(setup["x"]), "--methods", m, "--out", str(out)],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for m in ("saliency", "input_x_gradient")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["explain"]["methods"]) == {"saliency", "input_x_gradient"}
    assert set(manifest["cards"]) >= {"saliency", "input_x_gradient"}
    assert (out / "explanations" / "saliency").is_dir() and (out / "explanations" / "input_x_gradient").is_dir()
    grids = sorted(p.name for p in (out / "files" / "overlays").iterdir())
    assert len(grids) == 3


def test_16_7_out_a_file_or_a_folder_of_the_users_files_is_refused(setup: dict[str, Path],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    file = setup["root"] / "notes.txt"
    file.write_text("mine")
    assert _explain(setup["a"], setup["x"], file) == 2
    assert "is a file" in capsys.readouterr().err
    mine = setup["root"] / "photos"
    _pngs(mine, 1)
    assert _explain(setup["a"], setup["x"], mine) == 2
    err = capsys.readouterr().err
    assert "not an xailab run" in err and err.count("\n") == 1
    assert sorted(p.name for p in mine.iterdir()) == ["0.png"]  # nothing written into it


@pytest.mark.parametrize("extra", [
    ["--targets", "12"],                                      # target out of range
    ["--methods", "integrated_gradients", "--set", "integrated_gradients.n_steps=0"],
    ["--methods", "gradcam", "--layer", "nope"],              # unknown layer
    ["--methods", ","],                                       # no method
    ["--methods", "saliency,nosuchmethod"],
])
def test_16_8_bad_input_leaves_no_half_written_run(setup: dict[str, Path], extra: list[str],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "half"
    assert _explain(setup["a"], setup["x"], out, *extra) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()


def test_16_8_an_empty_image_set_leaves_no_run(setup: dict[str, Path]) -> None:
    empty = setup["root"] / "empty"
    empty.mkdir()
    assert _explain(setup["a"], empty, setup["root"] / "e") == 2
    assert not (setup["root"] / "e").exists()


def test_16_10_a_run_made_with_relative_paths_is_compared_from_elsewhere(setup: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(setup["root"])
    assert main(["explain", "--model", "small_cnn", "--weights", "a.safetensors", "--images", "x",
                 "--methods", "saliency,input_x_gradient", "--png", "none", "--out", "rel"]) == 0
    config = json.loads((setup["root"] / "rel" / "manifest.json").read_text())["config"]
    assert Path(config["weights"]).is_absolute()
    elsewhere = setup["root"] / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compare", str(setup["root"] / "rel"), "--no-sanity", "--no-figures", "--steps", "4",
                 "--runs", "4"]) == 0


def test_16_16_mean_std_of_a_model_without_recorded_preprocessing(setup: dict[str, Path],
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests.test_jobs_cli:group_norm_net"
    out = setup["root"] / "plain"
    assert main(["explain", "--model", spec, "--images", str(setup["x"]), "--methods", "saliency",
                 "--png", "none", "--out", str(out)]) == 0
    assert "carry no recorded preprocessing" in capsys.readouterr().out  # the loud warning
    out2 = setup["root"] / "norm"
    assert main(["explain", "--model", spec, "--images", str(setup["x"]), "--methods", "saliency", "--mean", "0.5",
                 "--std", "0.5", "--png", "none", "--out", str(out2)]) == 0
    from xailab.runs import Run

    plain, norm = (np.asarray(Run.open(o).read_array("images")) for o in (out, out2))
    np.testing.assert_allclose(norm, (plain - 0.5) / 0.5, atol=1e-6)  # the images the model saw
    prov = Run.open(out2).manifest["provenance"]
    assert prov["model"]["preprocessing"] == {"mean": [0.5], "std": [0.5], "source": "user"}
    out3 = setup["root"] / "range"
    assert main(["explain", "--model", spec, "--images", str(setup["x"]), "--methods", "saliency",
                 "--input-range=-1,1", "--png", "none", "--out", str(out3)]) == 0
    np.testing.assert_allclose(np.asarray(Run.open(out3).read_array("images")), norm, atol=1e-6)
    assert main(["explain", "--model", spec, "--images", str(setup["x"]), "--methods", "saliency", "--mean", "0.5",
                 "--out", str(setup["root"] / "bad")]) == 2  # --mean without --std


def test_16_19_a_refused_method_does_not_stop_the_others(setup: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "mixed"
    assert main(["explain", "--model", "tests.test_jobs_cli:group_norm_net", "--images", str(setup["x"]),
                 "--methods", "deeplift,saliency", "--png", "none", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "refused deeplift" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["explain"]["methods"] == ["saliency"] and "deeplift" in manifest["explain"]["refused"]
    assert (out / "explanations" / "saliency").is_dir()


def test_provenance_is_recorded(setup: dict[str, Path]) -> None:
    from xailab import __version__
    from xailab.jobs.model import file_sha256

    out = setup["root"] / "p"
    assert _explain(setup["a"], setup["x"], out, "--targets", "top1,top2") == 0
    prov = json.loads((out / "manifest.json").read_text())["provenance"]
    assert prov["xailab"] == __version__
    assert prov["model"]["weights_sha256"] == file_sha256(setup["a"])
    assert prov["model"]["preprocessing"]["source"] == "model"
    assert prov["data"]["n"] == 3 and len(prov["data"]["sha256"]) == 64
    assert prov["targets"] == ["top1", "top2"]


def test_16_4_images_of_another_dataset_are_said_when_the_weights_name_no_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MNIST digits given to a CIFAR-10 ResNet whose weights record no class names: the count agrees
    (10 and 10), so nothing can refuse; the outputs being named after the digits and the grey images
    made RGB are both said (a warning and the run's image notes), not silent."""
    from .conftest import shared_path

    weights = shared_path("cifar10-resnet", "resnet20.safetensors")
    mnist = shared_path("mnist")
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="record no class names.*--class-names"):
        assert main(["explain", "--model", "resnet20", "--weights", str(weights), "--images", "mnist:test:2",
                     "--data-root", str(mnist), "--methods", "saliency", "--png", "none", "--out", str(out)]) == 0
    notes = json.loads((out / "manifest.json").read_text())["config"]["image_notes"]
    assert any("1-channel images repeated to the model's 3 channels" in n for n in notes)


@pytest.mark.parametrize("command", [
    ["counterfactual", "--images", "mnist:test:2", "--kinds", "region", "--png", "0"],
    ["distill", "--images", "mnist:test:20", "--min-per-class", "1", "--depths", "1", "--depth", "1", "--no-png"],
], ids=["counterfactual", "distill"])
def test_16_4_counterfactual_and_distill_say_the_outputs_are_named_after_the_data(
        command: list[str], tmp_path: Path) -> None:
    """The same MNIST-into-CIFAR-ResNet case: counterfactual and distill name the outputs after the
    data's classes too, so they warn as explain does (the one function, without --class-names)."""
    from .conftest import shared_path

    weights = shared_path("cifar10-resnet", "resnet20.safetensors")
    mnist = shared_path("mnist")
    with pytest.warns(UserWarning, match="record no class names.*the class names .* are wrong"):
        assert main([command[0], "--model", "resnet20", "--weights", str(weights), *command[1:],
                     "--data-root", str(mnist), "--out", str(tmp_path / "run")]) == 0
