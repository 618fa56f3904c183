"""Issue #16, the library side: no silent wrong answers (one test per finding, named after it)."""

from __future__ import annotations

import inspect

import pytest
import torch

import xailab
from tests.conftest import TinyBNCNN, TinyCNN
from xailab.core.errors import InputError
from xailab.core.explainer import all_ranges
from xailab.core.registry import METHODS


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
