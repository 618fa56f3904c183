"""Studies 2 (resnet_dissection) and 4 (binary_kfold), `xailab crosscheck` and `datasets --export`.

The studies run end to end in :mod:`tests.test_examples_run` (their examples), checked by
:mod:`tests.study_checks`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import TinyCNN
from xailab.cli import build_parser, main
from xailab.core.errors import XailabError
from xailab.runs import Run, RunError
from xailab.studies import STUDIES

STUDY_NAMES = ("resnet_dissection", "binary_kfold")
# option sets: the defaults, quick, and a user's own model and data
OPTIONS = {
    "resnet_dissection": [
        [], ["--quick"],
        ["--model", "resnet50", "--pretrained", "--data", "photos/", "--layers", "layer2,layer3,layer4",
         "--concepts", "colour,broden:broden1_224", "--photos", "none", "--layer", "layer4"],
        ["--data", "folder:data/pets", "--photos", "more-photos/", "--photos-model", "resnet18", "--images", "4",
         "--probe-images", "100"],
    ],
    "binary_kfold": [
        [], ["--quick"],
        ["--data", "data/xray", "--model", "mypkg.models:net", "--folds", "3", "--fold", "2", "--epochs", "4",
         "--baselines", "black,gaussian:0.1,adversarial:noise", "--no-crosscheck", "--limit-train", "500"],
        ["--data", "folder:data/xray", "--weights", "net.safetensors", "--images", "4", "--data-root", "c10.tgz"],
    ],
}


def _steps(name: str, extra: list[str], out: Path) -> list[tuple[str, list[str]]]:
    args = build_parser().parse_args(["study", name, "--out", str(out), *extra])
    return STUDIES.get(name).steps(args)


def test_both_studies_are_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["study", "list"]) == 0
    listed = capsys.readouterr().out
    for name in STUDY_NAMES:
        assert name in listed


@pytest.mark.parametrize("name", STUDY_NAMES)
def test_dry_run_prints_every_command_and_runs_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    assert main(["study", name, "--dry-run", "--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    commands = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    assert len(commands) == len(_steps(name, ["--quick"], out))
    assert all(c.startswith("xailab ") for c in commands)
    assert "finished" not in text
    assert not out.exists()  # nothing ran
    assert commands[-1].startswith("xailab report ")
    if name == "resnet_dissection":
        dissect = [c for c in commands if c.startswith("xailab dissect ")]
        assert dissect and all("--layers layer1,layer2,layer3" in c for c in dissect)
        assert any("--methods gradcam,ablation_cam,score_cam,lime" in c for c in commands)
    else:
        assert any("--folds 5" in c for c in commands)
        for b in ("black", "uniform", "gaussian", "adversarial"):
            assert any(f"ig_{b}.baseline={b}" in c and f"ig_{b}=integrated_gradients" in c for c in commands)
        assert sum(c.startswith("xailab crosscheck ") for c in commands) == 4


@pytest.mark.parametrize("name,extra", [(n, e) for n, opts in OPTIONS.items() for e in opts])
def test_every_step_parses_with_the_real_cli(name: str, extra: list[str], tmp_path: Path) -> None:
    """A renamed flag, command or method breaks this test, not a user's run."""
    from xailab.core.registry import METHODS
    from xailab.jobs.explain_images import method_names
    from xailab.methods.gradient.baselines import Baseline

    parser = build_parser()
    steps = _steps(name, extra, tmp_path / "study")
    assert steps
    for what, argv in steps:
        assert what and argv
        try:
            ns = parser.parse_args(argv)
        except SystemExit as e:  # argparse's way of saying a flag is unknown
            raise AssertionError(f"step {what!r} does not parse: xailab {' '.join(argv)}") from e
        assert ns.command == argv[0]
        if ns.command == "explain":
            kinds = method_names(ns.methods.split(","))  # raises on a renamed method
            for item in ns.set:
                method, _, rest = item.partition(".")
                if method not in kinds:  # a NAME of the run, else a method's own name
                    METHODS.canonical(method)
                if rest.startswith("baseline="):
                    Baseline.parse(rest.removeprefix("baseline="))


def test_user_data_is_used_instead_of_the_export(tmp_path: Path) -> None:
    steps = _steps("binary_kfold", ["--data", "folder:data/xray", "--fold", "3"], tmp_path)
    argvs = [a for _, a in steps]
    assert not any(a[0] == "datasets" for a in argvs)
    train = next(a for a in argvs if a[0] == "train")
    assert train[train.index("--data") + 1] == "folder:data/xray"
    explain = next(a for a in argvs if a[0] == "explain")
    assert explain[explain.index("--weights") + 1].endswith("folds/fold-3/checkpoints/best.safetensors")
    assert explain[explain.index("--images") + 1] == "folder:data/xray:test:32"


def test_given_weights_skip_the_kfold_training(tmp_path: Path) -> None:
    argvs = [a for _, a in _steps("binary_kfold", ["--data", "data/xray", "--weights", "w.safetensors"], tmp_path)]
    assert "train" not in [a[0] for a in argvs]
    assert all(a[a.index("--weights") + 1] == "w.safetensors" for a in argvs if a[0] == "explain")
    assert str(tmp_path / "cv") not in argvs[-1]


def test_resnet_study_on_a_users_photos(tmp_path: Path) -> None:
    steps = _steps("resnet_dissection", OPTIONS["resnet_dissection"][2], tmp_path)
    argvs = [a for _, a in steps]
    assert [a[0] for a in argvs] == ["dissect", "dissect", "datasets", "explain", "compare", "report"]
    assert all("--pretrained" in a for a in argvs if a[0] in ("dissect", "explain"))
    assert argvs[1][argvs[1].index("--concepts") + 1] == "broden:broden1_224"


# -- datasets --export --------------------------------------------------------------------------
def _two_class_folder(root: Path, n: int = 6, size: int = 16) -> Path:
    """``root/train|test/<bright|dark>/*.png``: bright images vs dark ones, with noise."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for cls, level in (("bright", 190), ("dark", 60)):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                img = np.clip(level + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")
    return root


def test_export_some_classes_of_a_folder_and_resume(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _two_class_folder(tmp_path / "src", n=5)
    out = tmp_path / "out"
    argv = ["datasets", f"folder:{src}", "--export", str(out), "--select", "dark", "--per-class", "3"]
    assert main(argv) == 0
    assert sorted(p.name for p in (out / "train").iterdir()) == ["dark"]
    assert len(list((out / "test" / "dark").glob("*.png"))) == 3
    assert main(argv) == 0
    assert "already exported" in capsys.readouterr().out
    assert main([*argv[:-1], "4"]) == 2  # other settings into the same folder: refused
    assert "choose another folder" in capsys.readouterr().err
    assert main(["datasets", f"folder:{src}", "--export", str(tmp_path / "x"), "--select", "zebra"]) == 2
    assert "bright, dark" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_a_flat_folder_spreads_the_picks(tmp_path: Path) -> None:
    src = tmp_path / "flat"
    src.mkdir()
    for i in range(10):
        Image.fromarray(np.full((8, 8, 3), 20 * i, np.uint8)).save(src / f"p{i}.jpg")
    assert main(["datasets", str(src), "--export", str(tmp_path / "pick"), "--per-class", "3"]) == 0
    assert sorted(p.name for p in (tmp_path / "pick").glob("*.png")) == ["p0.png", "p4.png", "p9.png"]  # 0, 4.5, 9 rounded


# -- crosscheck ---------------------------------------------------------------------------------
def tiny_factory(num_classes: int = 3, in_channels: int = 3) -> torch.nn.Module:
    """A seeded TinyCNN (what a run's config can name as ``tests.test_studies_b:tiny_factory``)."""
    torch.manual_seed(0)
    return TinyCNN(in_channels, num_classes)


def _ig_run(path: Path, baseline: str, dtype: torch.dtype = torch.float64, methods: str = "integrated_gradients") -> Run:
    from xailab.jobs.explain_images import explain_images

    model = tiny_factory().to(dtype)
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)  # float32-exact
    params = {"integrated_gradients": {"n_steps": 8, "baseline": baseline}} if "integrated" in methods else {}
    return explain_images(model, images, out=path, methods=methods.split(","), targets=["top1", "top2"],
                          method_params=params, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), batch_size=20,
                          png=False, config={"model": "tests.test_studies_b:tiny_factory"}, log=lambda _: None)


@pytest.mark.reference
@pytest.mark.parametrize("baseline", ["black", "uniform", "gaussian", "adversarial"])
def test_crosscheck_matches_captum_in_float64(baseline: str, tmp_path: Path) -> None:
    from xailab.jobs.crosscheck import crosscheck_run

    run = _ig_run(tmp_path / "run", baseline)
    model = tiny_factory().double()
    table = crosscheck_run(run, model, log=lambda _: None)
    assert len(table) == 3 * 2  # images x targets
    assert set(table["baseline"]) == {baseline if baseline != "adversarial" else "adversarial:input"}
    assert table["max_abs"].min() > 1e-4  # the maps are not trivially zero
    assert table["max_abs_diff"].max() < 1e-9
    assert table["pearson"].min() > 1 - 1e-9
    np.testing.assert_allclose(table["delta_ours"], table["delta_captum"], atol=1e-9)
    stored = Run.open(run.path).read_table("crosscheck")
    assert len(stored) == len(table)
    assert "integrated_gradients-captum" in Run.open(run.path).manifest["crosscheck"]


@pytest.mark.reference
def test_crosscheck_cli_float32_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _ig_run(tmp_path / "run", "black", dtype=torch.float32)
    assert main(["crosscheck", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "max_abs_diff" in out and "black" in out
    table = Run.open(run.path).read_table("crosscheck")
    assert table["max_abs_diff"].max() < 1e-5 * max(1.0, table["max_abs"].max())
    assert (table["dtype"] == "float32").all()


def test_crosscheck_without_ig_says_how_to_make_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xailab.jobs.crosscheck import crosscheck_run

    run = _ig_run(tmp_path / "run", "black", methods="saliency")
    with pytest.raises(RunError, match=r"no integrated_gradients explanation \(it has: saliency\).*xailab explain"):
        crosscheck_run(run, tiny_factory().double(), log=lambda _: None)
    capsys.readouterr()  # the progress bar of making the run
    assert main(["crosscheck", str(run.path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("xailab crosscheck: error:") and "\n" not in err


def test_crosscheck_without_captum_names_the_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xailab.jobs.crosscheck import crosscheck_run

    run = _ig_run(tmp_path / "run", "black")
    monkeypatch.setitem(sys.modules, "captum.attr", None)  # import fails as if not installed
    with pytest.raises(XailabError, match=r"needs Captum: pip install captum"):
        crosscheck_run(run, tiny_factory().double(), log=lambda _: None)
    assert "crosscheck" not in Run.open(run.path).manifest


def test_study_arguments_do_not_clash_with_the_runner() -> None:
    """``xailab study NAME`` adds --dry-run itself; the studies must not add it again."""
    for name in STUDY_NAMES:
        p = argparse.ArgumentParser()
        p.add_argument("--dry-run", action="store_true")
        STUDIES.get(name).add_arguments(p)  # raises on a clash


def test_crosscheck_refuses_a_rule_captum_does_not_have(tmp_path: Path) -> None:
    import json

    from xailab.core.errors import InputError
    from xailab.jobs.crosscheck import crosscheck_run

    run = _ig_run(tmp_path / "run", "black")
    manifest = run.path / "explanations" / "integrated_gradients" / "manifest.json"
    data = json.loads(manifest.read_text())
    data["params"]["rule"] = "adaptive"  # a rule of ours with no Captum counterpart
    manifest.write_text(json.dumps(data))
    with pytest.raises(InputError, match="no Captum counterpart"):
        crosscheck_run(run, tiny_factory().double(), log=lambda _: None)
