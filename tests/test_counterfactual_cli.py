"""``xailab counterfactual`` end to end on the toy problem as an image folder: the run's table and
figures, the report's Counterfactuals page, Python and the CLI giving the same table, and bad
input refused with one line (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn

from xailab.audit.toy import TOY_CLASSES, ToyNet, toy_images
from xailab.cli import main
from xailab.data.transforms import Preprocessing
from xailab.jobs.counterfactual import CounterfactualSpec, counterfactual_to_run
from xailab.jobs.model import ModelSpec
from xailab.models import save_weights, set_preprocessing
from xailab.runs import Run

MODEL = "xailab.audit.toy:ToyNet"


def _trained(seed: int, steps: int) -> nn.Module:
    torch.manual_seed(seed)
    m = ToyNet()
    prep = Preprocessing(mean=(0.2,), std=(0.25,), channels=1)
    set_preprocessing(m, prep)
    x, y = toy_images(240, seed=0)
    xn = prep.normalize(x.float() / 255)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(m(xn), y).backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cf")
    for split, n, seed in (("train", 60, 0), ("test", 6, 1)):
        x, y = toy_images(n, seed=seed)
        for i in range(n):
            d = root / "data" / split / TOY_CLASSES[int(y[i])]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i, 0].numpy()).save(d / f"{i:04d}.png")
    return {"root": root, "w": save_weights(_trained(0, 100), root / "w.safetensors"),
            "other": save_weights(_trained(1, 5), root / "other.safetensors"), "data": root / "data"}


def _args(s: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["counterfactual", "--model", MODEL, "--weights", str(s["w"]), "--images", f"folder:{s['data']}:test",
            "--steps", "20", "--search-steps", "2", "--png", "2", "--out", str(out), *extra]


def test_cli_run_report_and_python(setup: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cf"
    ref = f"folder:{setup['data']}:train"
    assert main(_args(setup, out, "--kinds", "pixel,region,prototype", "--reference", ref, "--target", "other")) == 0
    run = Run.open(out)
    t = run.read_table("counterfactuals")
    assert set(t["kind"]) == {"pixel", "region", "prototype"} and len(t) == 18
    assert {"valid", "status", "l2", "changed_pixels", "plausibility", "evaluations", "seconds"} <= set(t.columns)
    assert t.loc[t["kind"] == "region", "regions"].notna().any()
    assert run.manifest["provenance"]["model"]["weights_sha256"]
    assert len(list((out / "files" / "counterfactuals").glob("*.png"))) >= 3
    spec = CounterfactualSpec(ModelSpec(MODEL, weights=str(setup["w"])), images=f"folder:{setup['data']}:test",
                              kinds=("pixel", "region", "prototype"), reference=ref, target="other", steps=20,
                              search_steps=2, png=2)
    py = counterfactual_to_run(spec, tmp_path / "py", log=lambda _: None)
    a, b = (r.read_table("counterfactuals") for r in (run, py))
    cols = [c for c in a.columns if c != "seconds"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    site = tmp_path / "site"
    assert main(["report", str(out), "--out", str(site)]) == 0
    page = (site / "counterfactuals.html").read_text()
    assert "Counterfactuals" in page and "reached target" in page and page.count("<img") >= 3


def test_concepts_and_another_models_basis(setup: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    ice = tmp_path / "ice"
    assert main(["concepts", "ice", "--model", MODEL, "--weights", str(setup["other"]), "--images",
                 f"folder:{setup['data']}:train", "--layer", "features.1", "--concepts", "3", "--curve", "2",
                 "--no-png", "--out", str(ice)]) == 0
    capsys.readouterr()
    assert main(_args(setup, tmp_path / "x", "--kinds", "concept", "--basis", str(ice))) == 2
    assert "fitted on another model" in capsys.readouterr().err
    mine = tmp_path / "ice2"
    assert main(["concepts", "ice", "--model", MODEL, "--weights", str(setup["w"]), "--images",
                 f"folder:{setup['data']}:train", "--layer", "features.1", "--concepts", "3", "--curve", "2",
                 "--no-png", "--out", str(mine)]) == 0
    assert main(_args(setup, tmp_path / "c", "--kinds", "concept", "--basis", str(mine), "--max-concepts", "3")) == 0
    t = Run.open(tmp_path / "c").read_table("counterfactuals")
    assert (t["kind"] == "concept").all() and "edits" in t
    assert all(s == "found" or s.startswith(("not found within 3 concepts", "already")) for s in t["status"])


@pytest.mark.parametrize(("extra", "message"), [
    (("--kinds", "pixel,dream"), "choose from pixel, region, prototype, concept"),
    (("--kinds", "prototype"), "need training images"),
    (("--kinds", "concept"), "need an ICE basis"),
    (("--steps", "0"), "impossible budget"),
    (("--target", "giraffe"), "does not exist"),
])
def test_bad_input_is_one_line(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               extra: tuple[str, ...], message: str) -> None:
    assert main(_args(setup, tmp_path / "bad", *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad").exists()
