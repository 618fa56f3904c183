"""Issue #16, the library side: no silent wrong answers (one test per finding, named after it)."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import xailab
from tests.conftest import TinyBNCNN, TinyCNN
from xailab.core.errors import DataError, InputError
from xailab.core.explainer import all_ranges
from xailab.core.registry import METHODS
from xailab.data import load_images
from xailab.data.transforms import Preprocessing


def test_f20_eval_mode_false_restores_batchnorm_buffers() -> None:
    torch.manual_seed(0)
    model = TinyBNCNN().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 8, 8)
    a = xailab.create("saliency", model, eval_mode=False).explain(x, target=0)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by explaining with eval_mode=False"
    b = xailab.create("saliency", model, eval_mode=False).explain(x, target=0)
    assert torch.equal(a.maps, b.maps)
    assert model.training


def _declared(cls: type) -> dict[str, tuple[object, object]]:
    out: dict[str, tuple[object, object]] = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind == p.KEYWORD_ONLY:
                out[p.name] = (p.annotation, p.default)
    return out


def _bad_values(annotation: object, limit: tuple[float | None, float | None] | None) -> list[object]:
    names = [a.strip() for a in str(annotation).split("|")]
    bad: list[object] = []
    if "int" in names and "float" not in names:
        bad += [2.5, "abc", True]
    if "float" in names:
        bad += [float("nan"), "abc"]
    if limit is not None and limit[0] is not None:
        bad.append(limit[0] - 1)
    if limit is not None and limit[1] is not None:
        bad.append(limit[1] + 1)
    return bad


@pytest.mark.parametrize("name", xailab.available())
def test_f11_every_numeric_parameter_refuses_bad_values_with_its_range(name: str) -> None:
    """n_steps=2.5 must not become 2: every int/float parameter of every method refuses
    non-integers, NaN, strings and values outside its declared range, naming the parameter."""
    cls = METHODS.get(name)
    limits = all_ranges(cls)
    model = TinyCNN()
    checked = 0
    for pname, (annotation, _default) in _declared(cls).items():
        for value in _bad_values(annotation, limits.get(pname)):
            with pytest.raises(InputError, match=pname):
                xailab.create(name, model, **{pname: value})
            checked += 1
    assert checked >= 3  # batch_size at least


def test_f11_range_is_named_and_good_values_pass() -> None:
    model = TinyCNN()
    with pytest.raises(InputError, match=r"n_steps must be an integer in \[1, inf\), got 2.5"):
        xailab.create("integrated_gradients", model, n_steps=2.5)
    assert xailab.create("integrated_gradients", model, n_steps=3).n_steps == 3
    assert xailab.create("lime", model, kernel_width=1).kernel_width == 1


@pytest.mark.parametrize(("name", "param"), [("occlusion", "window"), ("rise", "cell_size")])
def test_f11_window_larger_than_the_image_is_refused(name: str, param: str) -> None:
    explainer = xailab.create(name, TinyCNN(), **{param: 9})
    with pytest.raises(InputError, match=r"does not fit the 8x8 images.*1\.\.8"):
        explainer.explain(torch.rand(2, 3, 8, 8))
    assert xailab.create(name, TinyCNN(), **{param: 8}).explain(torch.rand(1, 3, 8, 8)).maps.isfinite().all()


def test_f5_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = (np.arange(16 * 16).reshape(16, 16) * 256).astype(np.uint16)  # 0 .. 65280
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    notes: list[str] = []
    with pytest.warns(UserWarning, match="16-bit grey scaled to 8 bits"):
        x, _, _, _ = load_images(str(tmp_path / "deep.png"), notes=notes)
    expected = torch.from_numpy(np.round(ramp / 65535 * 255) / 255).float()
    torch.testing.assert_close(x[0, 0], expected, atol=1 / 255, rtol=0)
    assert x.mean() < 0.6 and any("16-bit" in n for n in notes)


def test_f5_alpha_is_composited_over_white_and_said(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent black: shown white
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    notes: list[str] = []
    with pytest.warns(UserWarning, match="composited over white"):
        x, _, _, _ = load_images(str(tmp_path / "a.png"), notes=notes)
    assert torch.equal(x[0, :, 4:], torch.ones(3, 4, 8))
    assert torch.equal(x[0, :, :4], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 4, 8))


def test_f5_large_upscale_warns_and_small_does_not(tmp_path: Path) -> None:
    prep = Preprocessing(mean=(0.5,), std=(0.5,), input_size=(28, 28), channels=1)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "dot.png")
    Image.fromarray(np.zeros((14, 14), np.uint8)).save(tmp_path / "half.png")
    notes: list[str] = []
    with pytest.warns(UserWarning, match=r"1x1 image upscaled 28.0x"):
        load_images(str(tmp_path / "dot.png"), prep, notes=notes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_images(str(tmp_path / "half.png"), prep)  # 2x: no warning


def test_f12_undecodable_image_names_the_file_not_a_bytesio(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.png") as info:
        load_images(str(tmp_path / "broken.png"))
    assert "BytesIO" not in str(info.value)


@pytest.mark.parametrize("labelled", [False, True])
def test_f12_skip_bad_images_leaves_them_out_and_notes_them(tmp_path: Path, labelled: bool) -> None:
    folder = tmp_path / "imgs"
    sub = folder / "cat" if labelled else folder
    sub.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((6, 6), 40 * i, np.uint8)).save(sub / f"ok{i}.png")
    (sub / "bad.png").write_bytes(b"garbage")
    if labelled:
        (folder / "dog").mkdir()
        Image.fromarray(np.zeros((6, 6), np.uint8)).save(folder / "dog" / "d.png")
    with pytest.raises(DataError, match=r"bad\.png"):
        load_images(str(folder))
    notes: list[str] = []
    with pytest.warns(UserWarning, match=r"bad\.png: skipped"):
        x, y, names, _ = load_images(str(folder), notes=notes, skip_bad=True)
    assert len(x) == len(names) == 3 + labelled and not any(n.endswith("bad.png") for n in names)
    assert (y is not None) == labelled


@pytest.mark.parametrize(("gap", "share", "expected"), [
    (0.62, 0.40, r"0\.62 \(Shirt\), below the threshold 0\.9$"),
    (0.97, 0.40, r"0\.97 \(Shirt\), at or above the threshold 0\.9, but its smaller cluster holds 40 % of the "
                 r"class, more than 25 %$"),
])
def test_f15_audit_verdict_sentence_follows_the_numbers(gap: float, share: float, expected: str) -> None:
    from xailab.report.audit_page import largest_gap_sentence

    row = pd.Series({"name": "Shirt", "spray_gap": gap, "spray_k": 2, "spray_small_share": share, "spray_flag": False})
    sentence = largest_gap_sentence(row, {"spray_gap": 0.9, "max_share": 0.25, "rule": "spray"})
    assert re.search(expected, sentence), sentence
    assert ("below" in sentence) == (gap < 0.9)


@pytest.mark.parametrize(("spray", "ac", "who"), [(False, True, "Activation clustering alone"),
                                                   (True, False, "SpRAy alone")])
def test_f15_check_sentence_names_the_detector_that_fired(spray: bool, ac: bool, who: str) -> None:
    from xailab.report.audit_page import check_sentence

    rows = pd.DataFrame([{"name": "Bag", "spray_flag": spray, "ac_flag": ac, "verdict": "check"}])
    sentence = check_sentence(rows, {"rule": "both" if spray else "spray"})
    assert sentence.startswith(f"{who} fired on Bag"), sentence
