"""The shared gradient pass gives, for every method, exactly what the method gives on its own."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import xailab
from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.core.hooks import count_hooks
from xailab.methods.shared import SHARED_METHODS, SharedGradientPass, explain_shared

from .conftest import TinyBNCNN, _randomise_bn


def model() -> TinyBNCNN:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1)


def assert_identical(a: Explanation, b: Explanation) -> None:
    assert a.method == b.method and a.params == b.params and a.target_names == b.target_names
    assert torch.equal(a.maps, b.maps), a.method
    assert torch.equal(a.targets, b.targets) and torch.equal(a.logits, b.logits)
    assert a.extras.keys() == b.extras.keys()
    assert all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)
    assert a.evaluations == b.evaluations


@pytest.mark.parametrize("batch_size", [64, 3, 1])
def test_every_method_equals_its_own_run(batch_size: int, images: Tensor, labels: Tensor) -> None:
    m = model().eval()
    x = images[:5]
    shared = explain_shared(m, x, target=["true", "least"], labels=labels[:5] % 4, batch_size=batch_size)
    assert list(shared) == list(SHARED_METHODS)
    for name, got in shared.items():
        alone = xailab.create(name, m, batch_size=batch_size).explain(x, target=["true", "least"], labels=labels[:5] % 4)
        assert_identical(got, alone)


def test_subsets_aliases_layer_and_params(images: Tensor) -> None:
    m = model().eval()
    x = images[:3].double()
    m.double()
    got = explain_shared(
        m, x, ["grad_cam", "saliency"], target="top1", layer="relu1", params={"saliency": {"absolute": False}}
    )
    assert list(got) == ["gradcam", "saliency"]
    assert_identical(got["gradcam"], xailab.create("gradcam", m, layer="relu1").explain(x))
    assert_identical(got["saliency"], xailab.create("saliency", m, absolute=False).explain(x))
    only_input = explain_shared(m, x, ["input_x_gradient"])
    assert_identical(only_input["input_x_gradient"], xailab.create("input_x_gradient", m).explain(x))
    only_cams = explain_shared(m, x, ["layercam", "xgradcam"], output="probability")
    for name in ("layercam", "xgradcam"):
        assert_identical(only_cams[name], xailab.create(name, m, output="probability").explain(x))


def test_one_pass_for_all(images: Tensor) -> None:
    """Six methods cost the evaluations of one: N x T gradient rows, no scoring pass."""
    m = model().eval()
    shared = explain_shared(m, images[:4], target=["top1", "top2"])
    assert {e.evaluations for e in shared.values()} == {4 * 2}
    alone = xailab.create("saliency", m).explain(images[:4], target=["top1", "top2"])
    assert alone.evaluations == 4 * 2


def test_model_left_as_found_and_errors(images: Tensor) -> None:
    m = model().train()
    for p in m.parameters():
        p.grad = torch.full_like(p, 3.0)
    explain_shared(m, images[:2])
    assert m.training and count_hooks(m) == 0
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in m.parameters())
    with pytest.raises(InputError, match=r"cannot share.*score_cam.*choose among saliency"):
        SharedGradientPass(m, ["gradcam", "score_cam"])
    with pytest.raises(InputError, match="same layer"):
        explain_shared(m, images[:2], ["gradcam", "layercam"], params={"layercam": {"layer": "relu1"}}, layer="relu2")
    with pytest.raises(InputError, match="named twice"):
        SharedGradientPass(m, ["gradcam", "grad_cam"])
