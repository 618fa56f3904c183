"""Explanations over training (`xailab learning`): drift measures by hand, storage, resume after a kill."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from xailab.cli import main
from xailab.core.errors import InputError
from xailab.dynamics.drift import (
    drift_measures,
    flips_vs_changes,
    region_mask,
    region_mass,
    settling_epochs,
)
from xailab.dynamics.learning import decode, encode, explained_epochs, load_maps
from xailab.runs.store import Run

CLASSES = ("cat", "dog", "frog")


def test_drift_of_identical_and_moving_maps() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((4, 6, 6)).astype(np.float32)
    moved = np.roll(a, 3, axis=2)
    maps = np.stack([moved, a, a])  # epoch 1 elsewhere, then settled
    d = drift_measures(maps)
    assert np.isnan(d["rank_prev"][0]).all()
    np.testing.assert_allclose(d["rank_prev"][2], 1.0, atol=1e-6)
    np.testing.assert_allclose(d["iou_last"][1:], 1.0)
    assert (d["rank_last"][0] < 0.8).all()
    assert settling_epochs(d["rank_last"], [1, 2, 3]).tolist() == [2] * 4


def test_settling_needs_to_stay_settled() -> None:
    r = np.array([[0.9], [0.1], [0.95], [1.0]])
    assert settling_epochs(r, [1, 2, 3, 4]).tolist() == [3]


def test_flips_against_map_changes_by_hand() -> None:
    # instance 0 flips at epoch 3 and its map changed most into epoch 2 (before);
    # instance 1 flips at epoch 2 and its map changed most into epoch 4 (after); instance 2 never flips
    predicted = np.array([[0, 0, 1, 1], [2, 1, 1, 1], [0, 0, 0, 0]])
    change = np.array([[0, 0, 0], [0.9, 0.1, 0.0], [0.2, 0.0, 0.0], [0.1, 0.8, 0.0]])
    table, s = flips_vs_changes(predicted, change, [1, 2, 3, 4], window=2)
    assert table[["row", "flip_epoch", "change_epoch", "relation"]].values.tolist() == [
        [1, 2, 4, "after"], [0, 3, 2, "before"]]
    assert s["flips"] == 2 and s["lead"] == 0.5 and s["before"] == 0.5 and s["after"] == 0.5
    # chance: flip step 1 in window 1..3 -> 1/3; flip step 2 in window 1..3 -> 2/3
    assert s["chance"] == pytest.approx(0.5)
    assert s["change_at_flips"] == pytest.approx((0.1 + 0.2) / 2)


def test_region_mass_and_refusals() -> None:
    m = np.zeros((2, 8, 8), np.float32)
    m[0, 0, 0] = 3.0
    m[0, 4, 4] = 1.0
    m[1, 4, 4] = -2.0
    border = region_mask("border:1", (8, 8))
    assert border.sum() == 28
    np.testing.assert_allclose(region_mass(m, border), [0.75, 0.0])
    np.testing.assert_allclose(region_mass(m, region_mask("box:4,4,5,5", (8, 8))), [0.25, 1.0])
    for bad in ("box:5,5,4,4", "border:4", "circle:1", "box:0,0,9,9"):
        with pytest.raises(InputError):
            region_mask(bad, (8, 8))


def test_float16_storage_keeps_the_maps() -> None:
    rng = np.random.default_rng(1)
    m = (rng.standard_normal((5, 8, 8)) * np.array([1e-7, 1e-3, 1.0, 1e3, 0.0])[:, None, None]).astype(np.float32)
    m16, scale = encode(m)
    assert m16.dtype == np.float16
    back = decode(m16, scale)
    peak = np.abs(m).reshape(5, -1).max(1)[:, None, None]
    assert (np.abs(back - m) <= 5e-4 * peak + 1e-30).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run made by `xailab train`: 3 classes of 32x32 images, 3 epochs, 9 tracked."""
    from PIL import Image

    root = tmp_path_factory.mktemp("learning")
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        for k, c in enumerate(CLASSES):
            (root / "imgs" / split / c).mkdir(parents=True)
            for j in range(n):
                img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
                img[8 * k:8 * k + 9, 8 * k:8 * k + 9, k] = 250  # a class cue to learn
                Image.fromarray(img).save(root / "imgs" / split / c / f"{j}.png")
    out = root / "run"
    assert main(["train", "--model", "cifar_cnn", "--data", f"folder:{root / 'imgs'}", "--epochs", "3",
                 "--batch-size", "6", "--val-fraction", "0", "--quiet", "--device", "cpu", "--out", str(out)]) == 0
    return out


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def test_learning_stores_maps_and_tables(trained: Path, tmp_path: Path) -> None:
    path = _copy(trained, tmp_path / "r")
    assert main(["learning", str(path), "--methods", "gradcam,saliency", "--region", "border:2", "--strips", "3",
                 "--concepts", "3"]) == 0
    run = Run.open(path)
    for m in ("gradcam", "saliency"):
        assert explained_epochs(run, m) == [1, 2, 3]
        maps, _ = load_maps(run, m)
        assert maps.shape[:2] == (3, 9) and maps.dtype == np.float32
    assert load_maps(run, "gradcam")[0].shape[-1] < 32  # CAM kept at its layer's resolution
    assert load_maps(run, "saliency")[0].shape[-1] == 32
    steps = run.read_table("learning_steps")
    assert len(steps) == 2 * 3 * 9 and "mass border:2" in steps
    pred = run.read_table("predictions")
    merged = steps.merge(pred, on=["epoch", "instance"], suffixes=("", "_flow"))
    assert (merged["predicted"] == merged["predicted_flow"]).all()
    summary = run.manifest["learning"]["methods"]
    assert set(summary) == {"gradcam", "saliency"}
    assert summary["gradcam"]["flips"] == 0 or 0 <= summary["gradcam"]["lead"] <= 1
    strips = run.manifest["learning"]["strips"]
    assert 1 <= len(strips) <= 3 and all((path / s["file"]).is_file() for s in strips)
    assert (path / "files" / "learning" / "curves-gradcam.png").is_file()
    assert main(["report", str(path), "--out", str(tmp_path / "site")]) == 0
    page = (tmp_path / "site" / "learning.html").read_text()
    assert "<script" not in page and 'href="learning.html"' in (tmp_path / "site" / "index.html").read_text()
    assert f"{summary['gradcam']['median_settle_epoch']:.0f}" in page
    assert all(f'id="i{s["instance"]}"' in page for s in strips)
    assert (tmp_path / "site" / "img" / "r" / "learning" / "curves-saliency.png").is_file()
    concepts = run.read_table("learning_concepts")
    assert sorted(set(concepts["epoch"])) == [1, 2, 3] and set(concepts["concept"]) == {0, 1, 2}
    assert concepts["presence"].between(0, 1).all() and "ICE concepts over the epochs" in page
    spray = run.read_table("learning_spray")  # 3 tracked images a class: too few to cluster
    assert list(spray.columns[:4]) == ["method", "label", "epoch", "gap_score"] and len(spray) == 0


def test_resume_after_a_kill_loses_and_repeats_nothing(trained: Path, tmp_path: Path) -> None:
    from xailab.jobs.learning import LearningSpec, learning_to_run

    whole = _copy(trained, tmp_path / "whole")
    cut = _copy(trained, tmp_path / "cut")
    learning_to_run(LearningSpec(run=str(whole), strips=0), log=lambda s: None)
    lines: list[str] = []

    def killing_log(line: str) -> None:
        lines.append(line)
        if len(lines) == 3:  # epoch 1 done, epoch 2 half done
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        learning_to_run(LearningSpec(run=str(cut), strips=0), log=killing_log)
    run = Run.open(cut)
    assert explained_epochs(run, "gradcam") == [1, 2] and explained_epochs(run, "saliency") == [1]
    again: list[str] = []
    learning_to_run(LearningSpec(run=str(cut), strips=0), log=again.append)
    assert sum(line.startswith("epoch") for line in again) == 3  # only the missing (epoch, method) pairs
    cli = _copy(trained, tmp_path / "cli")
    assert main(["learning", str(cli), "--strips", "0"]) == 0  # the CLI and Python give the same run
    a, b, c = Run.open(whole), Run.open(cut), Run.open(cli)
    for m in ("gradcam", "saliency"):
        np.testing.assert_array_equal(load_maps(a, m)[0], load_maps(b, m)[0])
        np.testing.assert_array_equal(load_maps(a, m)[0], load_maps(c, m)[0])
    assert a.manifest["learning"]["methods"]["saliency"]["lead"] == c.manifest["learning"]["methods"]["saliency"]["lead"] \
        or a.manifest["learning"]["methods"]["saliency"]["flips"] == 0
    assert len(b.read_table("learning_times")) == 6
    cols = ["method", "epoch", "instance", "rank_prev", "iou_last"]
    assert a.read_table("learning_steps")[cols].equals(b.read_table("learning_steps")[cols])


def test_a_resume_with_other_settings_is_refused(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _copy(trained, tmp_path / "r")
    assert main(["learning", str(path), "--methods", "gradcam", "--epochs", "1", "--strips", "0"]) == 0
    assert main(["learning", str(path), "--methods", "gradcam", "--target", "top1"]) == 2
    assert "other settings (target)" in capsys.readouterr().err
    assert main(["learning", str(path), "--methods", "gradcam", "--epochs", "7-9"]) == 2
    # methods explained over different epochs: the strips show the epochs all of them have
    assert main(["learning", str(path), "--methods", "gradcam,saliency", "--epochs", "2-3", "--strips", "2"]) == 0
    run = Run.open(path)
    assert explained_epochs(run, "gradcam") == [1, 2, 3] and explained_epochs(run, "saliency") == [2, 3]
    assert all((path / s["file"]).is_file() for s in run.manifest["learning"]["strips"])


def test_spray_eigengap_sees_two_groups_of_maps(tmp_path: Path) -> None:
    import pandas as pd

    from xailab.dynamics.learning import INSTANCES, encode, maps_name, scale_name
    from xailab.jobs.learning_report import spray_per_epoch

    run = Run.create(tmp_path / "r", kind="train")
    rng = np.random.default_rng(0)
    n = 24
    blob = np.zeros((n, 8, 8), np.float32)
    blob[:, 2:5, 2:5] = 1.0
    split = blob.copy()
    split[n // 2:] = 0.0
    split[n // 2:, 6:8, 6:8] = 1.0  # epoch 2: half of the class looks at a corner instead
    for e, m in ((1, blob), (2, split)):
        m16, scale = encode(m + 0.05 * rng.random(m.shape).astype(np.float32))
        run.write_array(scale_name("x"), scale, chunk=e)
        run.write_array(maps_name("x"), m16, chunk=e)
    run.write_array(INSTANCES, np.arange(n), chunk=0)
    per = pd.DataFrame({"instance": np.arange(n), "label": np.zeros(n, int)})
    sp = spray_per_epoch(run, "x", per, (8, 8)).set_index("epoch")
    assert sp.loc[2, "gap_score"] > 0.9 > sp.loc[1, "gap_score"]
    assert sp.loc[2, "small_share"] == pytest.approx(0.5)
