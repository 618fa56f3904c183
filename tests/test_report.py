"""`xailab report`: the static site from runs — files, escaping, sections, atomicity, cards."""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from xailab.cli import main
from xailab.jobs.explain_images import explain_images
from xailab.report import site as site_mod
from xailab.report.comparison import agreement_matrix
from xailab.report.html import CSP, esc
from xailab.report.site import MARKER, build_site
from xailab.runs.store import Run, RunError

from .conftest import TinyCNN

EVIL = "<script>alert(1)</script>"
CLASSES = [EVIL, "dog", "a&b \"q\"", "$x$", "cat"]
LINK = re.compile(r'(?:src|href)="([^"#]*)"')


def make_explain(path: Path, png: bool = False) -> Run:
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.randn(3, 3, 8, 8)
    return explain_images(model, x, out=path, methods=["saliency", "gradcam"], targets=["true", "top1"],
                          labels=torch.tensor([0, 1, 4]), names=["a", "<b>bold</b>", "c"],
                          class_names=CLASSES, png=png, log=lambda s: None)


def make_train(path: Path, flow: bool = True) -> Run:
    run = Run.create(path, kind="train")
    run.update_manifest("classes", CLASSES)
    run.update_manifest("model", {"name": "tiny", "class": "TinyCNN", "parameters": 123})
    run.write_table("evaluation", pd.DataFrame({"name": ["test"], "n": [10], "accuracy": [0.6], "loss": [1.1]}))
    run.write_table("per_class", pd.DataFrame({"name": ["test"] * 5, "class": CLASSES, "index": range(5),
                                               "support": [2] * 5, "accuracy": [0.5] * 5}))
    t, p = np.meshgrid(range(5), range(5), indexing="ij")
    run.write_table("confusion", pd.DataFrame({"name": "test", "true": t.ravel(), "predicted": p.ravel(),
                                               "count": np.eye(5, dtype=int).ravel() * 2}))
    run.write_table("metrics", pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.1, 0.7],
                                             "train_acc": [0.4, 0.6], "val_acc": [0.3, 0.5]}))
    if flow:
        run.file("flow.html").write_text("<!DOCTYPE html><html><body><p>flow</p></body></html>")
    return run


def add_comparison(run: Run) -> None:
    run.write_table("scoreboard", pd.DataFrame({"method": ["gradcam", "saliency"], "avg_time": [0.1, 0.2],
                                                "avg_iou": [1.0, 0.25]}))
    run.write_table("agreement", pd.DataFrame({"image": [0, 1], "name": ["a", "c"], "method_a": ["gradcam"] * 2,
                                               "method_b": ["saliency"] * 2, "iou": [0.2, 0.4],
                                               "spearman": [0.1, 0.3]}))
    run.write_table("sanity", pd.DataFrame({"method": ["saliency"], "step": ["fc"], "spearman": [0.12]}))
    (run.path / "files" / "metrics").mkdir(parents=True)
    (run.path / "files" / "metrics" / "scatter_gradcam_saliency.png").write_bytes(_png())


def _png() -> bytes:
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    explain = make_explain(root / "explain")
    add_comparison(explain)
    return make_train(root / "train").path, explain.path


@pytest.fixture(scope="module")
def full_site(runs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(list(runs), tmp_path_factory.mktemp("sites") / "site")


def pages(site: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in site.glob("*.html")}


def test_site_is_written_with_every_page(full_site: Path) -> None:
    names = set(pages(full_site))
    assert {"index.html", "images.html", "compare.html", "flow.html", "methods.html"} <= names
    assert {f"explain-image-{i:05d}.html" for i in range(3)} <= names
    assert (full_site / MARKER).is_file()
    assert (full_site / "flow" / "train" / "flow.html").is_file()


def test_every_link_and_image_exists_inside_the_site(full_site: Path) -> None:
    n_img = 0
    for name, text in pages(full_site).items():
        for target in LINK.findall(text):
            target = html.unescape(target)
            assert "://" not in target and not target.startswith("/"), (name, target)
            assert (full_site / target).is_file(), (name, target)
        n_img += text.count("<img ")
    assert n_img >= 3 * 2 + 3  # thumbnails, big images, grids, confusion, curves


def test_pages_load_nothing_from_outside(full_site: Path) -> None:
    assert "default-src 'none'" in CSP and "script-src" not in CSP
    for name, text in pages(full_site).items():
        assert f'content="{esc(CSP)}"' in text, name
        assert "<script" not in text and "<link" not in text and "@import" not in text, name
        assert "@media print" in text


def test_hostile_names_show_as_text(full_site: Path) -> None:
    texts = pages(full_site)
    for name, text in texts.items():
        assert EVIL not in text and "<b>bold</b>" not in text, name
    assert html.escape(EVIL) in texts["index.html"]  # the per-class table
    assert html.escape(EVIL) in texts["explain-image-00000.html"]  # true class of image 0
    assert html.escape("<b>bold</b>") in texts["images.html"]
    assert html.escape('a&b "q"') in texts["explain-image-00002.html"] or html.escape(
        'a&b "q"') in texts["index.html"]


def test_comparison_and_cards_show_the_runs_numbers(full_site: Path) -> None:
    texts = pages(full_site)
    comp = texts["compare.html"]
    assert "Scoreboard" in comp and "scatter_gradcam_saliency.png" in comp and "Sanity" in comp
    assert re.search(r'<td class="num q\d">0.30</td>', comp)  # mean IoU of gradcam-saliency
    methods = texts["methods.html"]
    assert "Grad-CAM" in methods and "Selvaraju" in methods and "seconds per image" in methods
    assert "&quot;absolute&quot;: true" in methods  # saliency's parameters from its manifest
    assert all(w in methods for w in ("Why", "Who", "What", "How", "When", "Where", "Known limits"))


def test_agreement_matrix_is_symmetric_with_unit_diagonal() -> None:
    df = pd.DataFrame({"method_a": ["a", "a", "b"], "method_b": ["b", "c", "c"], "iou": [0.2, 0.4, 0.6]})
    m = agreement_matrix(df)
    assert list(m.index) == ["a", "b", "c"] and np.allclose(m.to_numpy(), m.to_numpy().T)
    assert np.allclose(np.diag(m.to_numpy()), 1.0) and m.loc["c", "a"] == pytest.approx(0.4)


def test_sections_are_absent_without_their_data(tmp_path: Path) -> None:
    explain = make_explain(tmp_path / "e", png=True)  # overlays written by explain are reused
    site = build_site([explain.path], tmp_path / "s1")
    names = set(pages(site))
    assert "compare.html" not in names and "flow.html" not in names
    assert "images.html" in names and "methods.html" in names
    index = pages(site)["index.html"]
    assert "Comparison" not in index and "Instance flow" not in index and "Training" not in index
    assert (site / "img" / "e" / "grids" / "00000.png").is_file()
    assert (site / "img" / "e" / "overlays" / "00000_saliency.png").is_file()

    train = make_train(tmp_path / "t", flow=False)
    site2 = build_site([train.path], tmp_path / "s2")
    names2 = set(pages(site2))
    assert names2 == {"index.html"}
    index2 = pages(site2)["index.html"]
    assert "Confusion" in index2 and "Training curves" in index2 and "Images" not in index2


def test_a_failed_build_leaves_nothing_behind(runs: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out" / "site"
    first = build_site([runs[0]], out)
    before = sorted(p.name for p in first.iterdir())

    def boom(*a: object, **k: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(site_mod, "image_pages", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        build_site(list(runs), out)
    assert sorted(p.name for p in out.iterdir()) == before  # the old report, whole
    assert [p.name for p in out.parent.iterdir()] == ["site"]  # no hidden half-built folder
    with pytest.raises(RuntimeError):
        build_site(list(runs), tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_refuses_to_replace_a_folder_that_is_not_a_report(runs: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RunError, match="not an xailab report"):
        build_site([runs[0]], tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
    with pytest.raises(RunError, match="no run"):
        build_site([tmp_path / "nothing"], tmp_path / "x")


def test_cli_writes_the_report(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(runs[1]), "--out", str(tmp_path / "r"), "--max-images", "1"]) == 0
    assert "index.html" in capsys.readouterr().out
    names = set(pages(tmp_path / "r"))
    assert "explain-image-00000.html" in names and "explain-image-00001.html" not in names
    assert "First 1 of 3 images" in pages(tmp_path / "r")["images.html"]
    assert main(["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2


def test_report_imports_only_runs_report_and_plotting_or_drawing() -> None:
    folder = Path(site_mod.__file__).parent
    for f in folder.glob("*.py"):
        tree = ast.parse(f.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert not n.startswith("torch"), (f.name, n)
                if n.startswith("xailab"):
                    assert n.startswith(("xailab.runs", "xailab.report", "xailab.plotting", "xailab.drawing")), (f.name, n)
