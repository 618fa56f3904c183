"""Network dissection: Broden reader, run store / CSV / figures, model comparison, CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from tests.test_dissection import detector_model, planted_images
from xailab.concepts.dissection import dissect, dissect_classes
from xailab.concepts.dissection_concepts import BrodenDataset, ColourConcepts, decode_label_png
from xailab.concepts.dissection_report import (
    compare_dissections,
    dissection_to_run,
    load_dissection_table,
)
from xailab.core.errors import DataError


def _write_csv(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _label_png(path: Path, numbers: np.ndarray) -> None:
    rgb = np.zeros((*numbers.shape, 3), dtype=np.uint8)
    rgb[..., 0] = numbers % 256
    rgb[..., 1] = numbers // 256
    Image.fromarray(rgb).save(path)


def make_broden(root: Path, n: int = 4) -> Path:
    """A tiny Broden-style folder: 16x16 images with a red 'car' (label 300: R + 256 G
    encoding beyond 255) in an 8x8 object mask, a 'sky' label elsewhere on half the images,
    and a scene label per image; the last image has no object annotation."""
    (root / "images" / "sub").mkdir(parents=True)
    x, _ = planted_images(n, seed=3)
    rows = []
    for i in range(n):
        img = (x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        # the object mask marks exactly the red pixels as 'car' (300), the rest 'sky' (2) or none
        red = (img[..., 0] > 150) & (img[..., 1] < 100)
        obj = np.where(red, 300, 2 if i % 2 == 0 else 0)
        Image.fromarray(img).save(root / "images" / "sub" / f"im{i}.jpg", quality=100)
        _label_png(root / "images" / "sub" / f"im{i}_object.png", obj[::2, ::2])  # masks half size
        rows.append({
            "image": f"sub/im{i}.jpg", "split": "train", "ih": 16, "iw": 16, "sh": 8, "sw": 8,
            "color": "", "object": f"sub/im{i}_object.png" if i < n - 1 else "",
            "part": "", "material": "", "scene": "5" if i % 2 else "5;6", "texture": "",
        })
    _write_csv(root / "index.csv", rows)
    _write_csv(root / "label.csv", [
        {"number": 0, "name": "-", "category": "", "frequency": 0, "coverage": 0, "syns": ""},
        {"number": 2, "name": "sky", "category": "object(3)", "frequency": 3, "coverage": 1, "syns": ""},
        {"number": 5, "name": "street", "category": "scene(4)", "frequency": 4, "coverage": 1, "syns": ""},
        {"number": 6, "name": "park", "category": "scene(2)", "frequency": 2, "coverage": 1, "syns": ""},
        {"number": 300, "name": "car", "category": "object(3);part(1)", "frequency": 3, "coverage": 1, "syns": ""},
    ])
    return root


def test_broden_reader(tmp_path: Path) -> None:
    root = make_broden(tmp_path / "broden")
    b = BrodenDataset(root)
    assert len(b) == 4
    assert b.names == ["sky", "street", "park", "car"]
    assert b.categories == ["object", "scene", "scene", "object"]
    assert b.category_columns == ["color", "object", "part", "material", "scene", "texture"]
    img, _ = b[0]
    assert img.shape == (3, 16, 16) and float(img.min()) >= 0 and float(img.max()) <= 1
    lab = decode_label_png(root / "images" / "sub" / "im0_object.png")
    assert set(np.unique(lab).tolist()) <= {2, 300} and (lab == 300).any()
    m = b.masks(torch.arange(4), torch.stack([b[i][0] for i in range(4)]))
    assert m.layers.shape == (4, 3, 8, 8)  # image 0: object map + two scene layers
    assert m.valid is not None
    assert m.valid[:, 3].tolist() == [True, True, True, False]  # object not annotated on image 3
    assert m.valid[:, 1].all()  # scene annotated everywhere
    car = (m.layers[0] == 3).any(0)
    assert torch.equal(car, torch.from_numpy(lab == 300))
    assert (m.layers[0, 1] == 1).all() and (m.layers[0, 2] == 2).all()  # street, park: whole image
    assert (m.layers[1, 0] != 0).all()  # odd images: no sky
    assert len(BrodenDataset(root, split="train", max_images=2)) == 2


def test_broden_dissection_finds_the_car(tmp_path: Path) -> None:
    root = make_broden(tmp_path / "broden", n=6)
    b = BrodenDataset(root)
    res = dissect(detector_model(), b, "1,2", b, quantile=0.04, batch_size=4)
    t = res.table.set_index(["layer", "unit"])
    assert t.loc[("1", 0), "label"] == "car" and t.loc[("1", 0), "labelled"]
    assert t.loc[("1", 0), "category"] == "object"


def test_broden_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Broden folder"):
        BrodenDataset(tmp_path / "nope")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"index\.csv"):
        BrodenDataset(tmp_path / "b")
    root = make_broden(tmp_path / "c")
    with pytest.raises(DataError, match="no image"):
        BrodenDataset(root, split="val")
    with pytest.raises(DataError, match="no column"):
        BrodenDataset(root, categories=["colour"])


def test_run_store_csv_and_figures(tmp_path: Path) -> None:
    model = detector_model()
    x, _ = planted_images(12)
    res = dissect(model, x, "1,2", ColourConcepts(), quantile=0.05, top_images=4)
    run = dissection_to_run(res, tmp_path / "run", model=model, images=x, gallery_units=2, per_unit=3)
    files = run.manifest["dissection"]["files"]
    assert {"csv", "histogram", "gallery_1", "gallery_2"} <= set(files)
    for f in files.values():
        assert (run.path / f).is_file()
    csv_table = pd.read_csv(run.path / files["csv"])
    assert list(csv_table.columns) == ["layer", "unit", "label", "category", "score", "labelled",
                                       "runner_up", "threshold"]
    stored = load_dissection_table(run.path)
    assert len(stored) == len(csv_table) == 6
    assert stored["label"].tolist() == res.table["label"].tolist()
    assert run.manifest["dissection"]["summary"][0]["layer"] == "1"
    assert np.allclose(run.read_array("dissection_scores_1"), res.scores["1"].numpy())


def test_compare_dissections() -> None:
    a = pd.DataFrame({"layer": "l", "unit": range(4), "label": ["red", "red", "blue", "sky"],
                      "labelled": [True, True, True, False]})
    b = pd.DataFrame({"layer": "l", "unit": range(3), "label": ["red", "green", "sky"],
                      "labelled": [True, True, True]})
    cmp = compare_dissections(a, b, ("m1", "m2")).set_index("label")
    assert cmp.loc["red", "status"] == "shared"
    assert cmp.loc["red", "units_m1"] == 2 and cmp.loc["red", "units_m2"] == 1
    assert cmp.loc["blue", "status"] == "only_m1"
    assert cmp.loc["green", "status"] == "only_m2"
    assert cmp.loc["sky", "status"] == "only_m2"  # not labelled in a


def test_class_dissection_to_run(tmp_path: Path) -> None:
    model = detector_model()
    x, _ = planted_images(9)
    res = dissect_classes(model, x, "1", labels=torch.arange(9) % 3, class_names=["a", "b", "c"], top_images=3)
    run = dissection_to_run(res, tmp_path / "r", model=model, images=x, gallery_units=3, per_unit=3)
    assert run.manifest["dissection"]["kind"] == "classes"
    assert (run.path / "files" / "dissection" / "gallery_1.png").is_file()


def _image_folder(root: Path) -> Path:
    x, _ = planted_images(6, seed=5)
    for i in range(6):
        d = root / ("cls_a" if i % 2 else "cls_b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x[i].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def test_cli_colour_classes_and_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from xailab.cli import main

    folder = _image_folder(tmp_path / "imgs")
    spec = "tests.test_dissection:detector_model"
    rc = main(["dissect", "--model", spec, "--images", str(folder), "--layers", "1,2",
               "--concepts", "colour", "--quantile", "0.05", "--out", str(tmp_path / "a"), "--no-png"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "units labelled" in out and "dissection.csv" in out
    rc = main(["dissect", "--model", spec, "--images", str(folder), "--layers", "1",
               "--concepts", "classes", "--out", str(tmp_path / "b"), "--gallery-units", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (tmp_path / "b" / "files" / "dissection" / "gallery_1.png").is_file()
    assert main(["dissect", "--compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "only_a" in capsys.readouterr().out
    rc = main(["dissect", "--model", spec, "--images", str(folder), "--layers", "nope",
               "--out", str(tmp_path / "c")])
    assert rc == 2
    assert "no layer named 'nope'" in capsys.readouterr().err
    rc = main(["dissect", "--model", spec, "--images", str(folder), "--layers", "1",
               "--concepts", "shapes", "--out", str(tmp_path / "d")])
    assert rc == 2
