"""``xailab audit backdoor --images`` (no training data) and ``xailab audit strip`` end to end on the
toy image folder of tests/test_audit_cli.py, the report's section, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_audit_cli import folder, poisoned_run  # noqa: F401  (fixtures)
from xailab.cli import main
from xailab.runs import Run


def model_args(run: Path) -> list[str]:
    return ["--model", "xailab.audit.toy:ToyNet", "--num-classes", "3",
            "--weights", str(run / "checkpoints" / "best.safetensors")]


def test_clean_images_only(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nc"
    rc = main(["audit", "backdoor", *model_args(poisoned_run), "--images", f"folder:{folder}:test:30",
               "--nc-steps", "20", "--nc-method", "saliency", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "clean images (Neural Cleanse)" in text and "training data:" not in text
    assert "clean data can show" in text and "it cannot show" in text and "prove that there is no backdoor" in text
    assert "only 3 classes: the outlier test needs at least 5" in text and "training-data detectors did not run" in text
    run = Run.open(out)
    t = run.read_table("cleanse")
    assert list(t["class"]) == [0, 1, 2] and {"l1", "anomaly", "flagged", "box_iou"} <= set(t.columns)
    assert run.read_array("cleanse_masks").shape == (3, 12, 12)
    assert run.read_array("cleanse_patterns").shape == (3, 1, 12, 12)
    m = run.manifest
    assert m["cleanse"]["scope"]["training_data"] is False and m["provenance"]["data"]["images"].endswith("test:30")
    assert (out / "files" / "cleanse" / "norms.png").is_file()


def test_with_training_data_and_images(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "both"
    rc = main(["audit", "backdoor", "--run", str(poisoned_run), "--method", "saliency", "--images",
               f"folder:{folder}:test:12", "--nc-steps", "10", "--nc-method", "saliency", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "training data:" in text and "clean images (Neural Cleanse)" in text
    run = Run.open(out)
    assert {"detection", "cleanse"} <= set(run.tables())
    assert run.manifest["cleanse"]["scope"]["training_data"] is True


def test_strip_with_the_runs_trigger(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "strip"
    rc = main(["audit", "strip", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:20",
               "--clean", f"folder:{folder}:train:40", "--overlays", "5", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "STRIP threshold" in text and "false acceptance rate" in text
    run = Run.open(out)
    t = run.read_table("strip")
    assert len(t) == 20 and {"entropy", "rejected", "triggered_entropy", "triggered_rejected"} <= set(t.columns)
    rates = run.manifest["strip"]["rates"]
    assert rates["frr"] == pytest.approx(t["rejected"].mean()) and rates["far"] == pytest.approx(
        1 - t["triggered_rejected"].mean())
    assert run.manifest["strip"]["trigger"] == "patch:3"
    assert len(run.read_table("strip_calibration")) == 20


def test_strip_notes_overlapping_images(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                                        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "strip", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:8",
               "--clean", f"folder:{folder}:test:16", "--overlays", "4", "--out", str(tmp_path / "o")])
    assert rc == 0 and "also clean pool/calibration images" in capsys.readouterr().out


def test_report_shows_the_clean_data_sections(poisoned_run: Path, folder: Path, tmp_path: Path) -> None:  # noqa: F811
    nc, st = tmp_path / "nc", tmp_path / "st"
    assert main(["audit", "backdoor", *model_args(poisoned_run), "--images", f"folder:{folder}:test:12",
                 "--nc-steps", "10", "--nc-method", "saliency", "--out", str(nc)]) == 0
    assert main(["audit", "strip", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:10",
                 "--clean", f"folder:{folder}:train:10", "--overlays", "3", "--out", str(st)]) == 0
    assert main(["report", str(nc), str(st), "--out", str(tmp_path / "rep")]) == 0
    html = (tmp_path / "rep" / "audit.html").read_text()
    assert "Neural Cleanse flags" in html and "What clean data can show" in html and "What it cannot" in html
    assert "Input screening (STRIP)" in html and "false acceptance rate" in html


def test_bad_input(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                   capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["audit", "backdoor", *model_args(poisoned_run), "--out", str(tmp_path / "a")])
    assert rc == 2 and "--images" in capsys.readouterr().err
    rc = main(["audit", "strip", "--run", str(poisoned_run), "--images", f"folder:{folder}:test:4",
               "--clean", f"folder:{folder}:train:4", "--frr", "1.5", "--out", str(tmp_path / "b")])
    assert rc == 2 and "false rejection rate" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_clean_reference_runs(poisoned_run: Path, folder: Path, tmp_path: Path,  # noqa: F811
                              capsys: pytest.CaptureFixture[str]) -> None:
    common = [*model_args(poisoned_run), "--images", f"folder:{folder}:test:12", "--nc-method", "saliency"]
    assert main(["audit", "backdoor", *common, "--nc-steps", "10", "--out", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    out = tmp_path / "rel"
    assert main(["audit", "backdoor", *common, "--nc-steps", "10", "--nc-reference", str(tmp_path / "ref"),
                 "--out", str(out)]) == 0
    assert "reference_l1" in capsys.readouterr().out
    t, ref = Run.open(out).read_table("cleanse"), Run.open(tmp_path / "ref").read_table("cleanse")
    assert list(t["reference_l1"]) == pytest.approx(list(ref["l1"]))  # the same model: its own reference
    assert (t["z"] == 0).all() and (t["p_value"] == 0.5).all() and Run.open(out).manifest["cleanse"]["params"]["reference"]
    rc = main(["audit", "backdoor", *common, "--nc-steps", "12", "--nc-reference", str(tmp_path / "ref"),
               "--out", str(tmp_path / "bad")])
    assert rc == 2 and "steps 10 there, 12 here" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    rc = main(["audit", "backdoor", *common, "--nc-reference", str(tmp_path / "nothing"), "--out", str(tmp_path / "b2")])
    assert rc == 2 and "not a run" in capsys.readouterr().err
