"""`xailab distill` end to end on a tiny image folder: ICE features, rules, a student, the report, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xailab.cli import main
from xailab.runs.store import Run

from .test_concepts_cli import write_pngs


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from xailab.data import load_images
    from xailab.models import create_model, get_preprocessing, save_weights

    root = tmp_path_factory.mktemp("distill_cli")
    write_pngs(root / "images" / "a", 10, 0)
    write_pngs(root / "images" / "b", 10, 1, stripes=True)
    torch.manual_seed(0)
    model = create_model("student_cnn", num_classes=2)
    x = load_images(str(root / "images"), get_preprocessing(model))[0]
    with torch.no_grad():  # move the bias so that the random network predicts both classes
        d = model(x)
        model.classifier[2].bias[1] -= float((d[:, 1] - d[:, 0]).median())
    weights = save_weights(model, root / "teacher.safetensors")
    torch.manual_seed(1)
    other = save_weights(create_model("student_cnn", num_classes=2), root / "other.safetensors")
    ice = root / "ice"
    assert main(["concepts", "ice", "--model", "student_cnn", "--weights", str(weights), "--num-classes", "2",
                 "--images", str(root / "images"), "--layer", "features.14", "--concepts", "3", "--curve", "3",
                 "--curve-images", "6", "--no-png", "--out", str(ice)]) == 0
    return {"root": root, "weights": weights, "other": other, "ice": ice}


def _args(world: dict[str, Path], out: Path, *extra: str, weights: str = "weights") -> list[str]:
    return ["distill", "--model", "student_cnn", "--weights", str(world[weights]), "--num-classes", "2",
            "--images", str(world["root"] / "images"), "--min-per-class", "3", "--depths", "1,2",
            "--depth", "2", "--out", str(out), *extra]


def test_distill_with_ice_features_and_a_student(world: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "distill"
    rc = main(_args(world, out, "--features", f"ice:{world['ice']}", "--student", "--student-epochs", "2",
                    "--map-images", "3"))
    assert rc == 0
    text = capsys.readouterr().out
    assert "IF concept" in text and "explain the student: xailab explain --model student_cnn" in text
    run = Run.open(out)
    assert run.manifest["kind"] == "distill" and run.manifest["provenance"]["model"]["weights_sha256"]
    s = run.read_table("distill_surrogates").set_index("surrogate")
    assert 0.0 <= s.loc["tree", "fidelity"] <= 1.0 and s.loc["tree", "size"] <= 4
    pred = run.read_table("distill_predictions")
    assert s.loc["tree", "fidelity"] == pytest.approx((pred["tree"] == pred["network"]).mean())
    assert run.read_table("distill_depth")["max_depth"].tolist() == [1, 2]
    assert set(run.read_table("distill_features")["name"].str.slice(0, 8)) == {"concept "}
    assert len(run.read_table("distill_maps")) == 2 * 3
    for f in ("rules.txt", "tree.png", "depth.png", "student.safetensors", "maps.png"):
        assert (out / "files" / "distill" / f).stat().st_size > 100

    weights = out / "files" / "distill" / "student.safetensors"  # the student explains as any model does
    rc = main(["explain", "--model", "student_cnn", "--weights", str(weights), "--num-classes", "2",
               "--images", str(world["root"] / "images" / "a" / "000.png"), "--methods", "gradcam",
               "--no-png", "--out", str(tmp_path / "explain")])
    assert rc == 0

    from xailab.report.site import build_site

    site = build_site([out], tmp_path / "site")
    page = (site / "distill.html").read_text()
    main_part = page.split("<main>")[1]
    assert "<title>Distillation" in page and "Rules per class" in main_part and "concept " in main_part
    assert 'href="distill.html"' in (site / "index.html").read_text()


def test_pixel_features_and_two_classes(world: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pixels"
    assert main(_args(world, out, "--features", "pixels", "--grid", "2", "--classes", "a,b", "--no-png")) == 0
    names = Run.open(out).read_table("distill_features")["name"].tolist()
    assert "red mean (top-left)" in names and len(names) == 4 * 5


@pytest.mark.parametrize(("extra", "weights", "message"), [
    (("--features", "ice:{ice}"), "other", "made with other weights"),
    (("--features", "pixels", "--min-per-class", "50"), "weights", "too few images per class: 'a' has"),
    (("--features", "bogus"), "weights", "give ice:RUN, units:RUN[:LAYER] or pixels"),
    (("--features", "pixels", "--classes", "a"), "weights", "at least two classes"),
])
def test_bad_input_is_one_line(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               extra: tuple[str, ...], weights: str, message: str) -> None:
    args = [a.format(ice=world["ice"]) for a in extra]
    assert main(_args(world, tmp_path / "bad", *args, weights=weights)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_the_fashion_study_distils_its_model() -> None:
    from .test_studies_a import by_command, study_steps

    steps = study_steps("fashion_mnist", "--out", "/o", "--quick")
    d = by_command(steps)["distill"][0]
    assert (d.weights, d.features, d.student, d.out) == ("/o/train/checkpoints/best.safetensors", "pixels", True,
                                                        "/o/distill")
    assert d.images.startswith("fashion_mnist:train:") and d.test_images.startswith("fashion_mnist:test:")
    assert "/o/distill" in steps[-1][1]  # the report shows it


def test_units_of_a_dissection_as_features(world: dict[str, Path], tmp_path: Path) -> None:
    common = ["--model", "student_cnn", "--num-classes", "2", "--images", str(world["root"] / "images")]
    dis = tmp_path / "dissect"
    assert main(["dissect", *common, "--weights", str(world["weights"]), "--layers", "features.14",
                 "--concepts", "classes", "--no-png", "--out", str(dis)]) == 0
    out = tmp_path / "units"
    assert main(_args(world, out, "--features", f"units:{dis}", "--no-png")) == 0
    labelled = Run.open(dis).read_table("dissection")
    names = Run.open(out).read_table("distill_features")["name"].tolist()
    assert len(names) == int(labelled["labelled"].sum()) and all(n.startswith("unit ") for n in names)
    assert main(_args(world, tmp_path / "bad", "--features", f"units:{dis}", weights="other")) == 2
