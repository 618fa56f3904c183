"""One-pass methods: targets and logits from the method's own forward pass, no scoring pass."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import xailab
from xailab.core.errors import ModelError, TargetError
from xailab.core.explainer import RowTargets
from xailab.core.hooks import count_hooks
from xailab.core.registry import METHODS
from xailab.core.targets import TargetPlan, resolve_targets

from .conftest import TinyBNCNN, _randomise_bn

ONE_PASS = sorted(n for n in xailab.available() if METHODS.get(n).one_pass)


def model64() -> TinyBNCNN:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval().double()


def test_the_one_pass_methods() -> None:
    assert {"saliency", "input_x_gradient", "gradcam", "gradcam_pp", "xgradcam", "layercam", "lrp",
            "lrp_epsilon", "deeplift"} <= set(ONE_PASS)
    assert not {"integrated_gradients", "smoothgrad", "gradient_shap", "ablation_cam", "score_cam",
                "occlusion"} & set(ONE_PASS)


@pytest.mark.parametrize("name", ONE_PASS)
@pytest.mark.parametrize("batch_size", [64, 3])
def test_same_maps_as_with_a_scoring_pass(name: str, batch_size: int, images: Tensor, labels: Tensor) -> None:
    """Only the scoring pass goes: the same rows go through the same passes, so the maps are
    bitwise those of the old path (scoring pass first), the targets equal and the logits close."""
    m = model64()
    if getattr(METHODS.get(name), "family", "") == "attention":  # transformers only
        from .test_conformance import tiny_transformer

        m = tiny_transformer().eval().double()
    x = images[:5].double()
    spec = ["true", "top2", "least"]
    lab = labels[:5] % 4
    kw = {**METHODS.get(name).quick_params, "batch_size": batch_size}
    one = xailab.create(name, m, **kw).explain(x, target=spec, labels=lab)
    old = xailab.create(name, m, **kw)
    old.one_pass = False  # type: ignore[misc]  # the scoring-pass path, for comparison
    two = old.explain(x, target=spec, labels=lab)
    assert torch.equal(one.targets, two.targets)
    assert one.target_names == two.target_names
    torch.testing.assert_close(one.logits, two.logits, rtol=1e-9, atol=1e-12)
    assert torch.equal(one.maps, two.maps)
    if name.startswith("lrp") or name == "attnlrp":  # the second call finds the model checked: rows + scoring
        assert two.evaluations == 5 + 5 * 3 and one.evaluations > 5 * 3
    else:  # one evaluation per image fewer
        assert one.evaluations == two.evaluations - 5
    for k in one.extras:
        torch.testing.assert_close(one.extras[k], two.extras[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "gradcam", "layercam"])
def test_one_evaluation_per_row(name: str, images: Tensor) -> None:
    m = model64()
    res = xailab.create(name, m, batch_size=4).explain(images[:6].double(), target=["top1", "top2"])
    assert res.evaluations == 6 * 2


def test_deeplift_two_evaluations_per_image(images: Tensor) -> None:
    res = xailab.create("deeplift", model64(), batch_size=4).explain(images[:6].double(), target=["top1", "top2"])
    assert res.evaluations == 2 * 6  # baselines + images; the targets share the image pass


@pytest.mark.parametrize("name", ["saliency", "gradcam", "lrp_epsilon", "deeplift"])
@pytest.mark.parametrize("batch_size", [1, 4, 64])
def test_per_image_specs_are_sliced_per_chunk(name: str, batch_size: int, images: Tensor) -> None:
    """Per-image targets (labels, tensors, [N, T] tensors) follow their images across chunks."""
    m = model64()
    x = images[:6].double()
    with torch.no_grad():
        logits = m(x)
    per_image = torch.tensor([3, 0, 1, 2, 3, 1])
    lab = torch.tensor([1, 1, 0, 3, 2, 2])
    specs = [
        ["true", 2, per_image, "top3"],
        per_image,
        per_image.tolist(),
        torch.stack([per_image, lab], 1),
        "least",
    ]
    e = xailab.create(name, m, batch_size=batch_size)
    for spec in specs:
        res = e.explain(x, target=spec, labels=lab)
        want, names = resolve_targets(spec, logits, lab)
        assert torch.equal(res.targets, want), spec
        assert list(res.target_names) == names
        torch.testing.assert_close(res.logits, logits, rtol=1e-10, atol=1e-12)


def test_all_classes(images: Tensor) -> None:
    m = model64()
    x = images[:3].double()
    res = xailab.create("saliency", m, batch_size=5).explain(x, target="all")
    assert res.targets.tolist() == [[0, 1, 2, 3]] * 3 and res.target_names[-1] == "class3"
    assert res.evaluations == 1 + 3 * 4  # one image to count the classes, then a row per class
    with torch.no_grad():
        torch.testing.assert_close(res.logits, m(x))


def test_bad_targets_refused_at_the_first_pass(images: Tensor) -> None:
    """A label out of range in the last image is refused by the first pass, before any map."""
    calls = []

    class Counting(TinyBNCNN):
        def forward(self, x: Tensor) -> Tensor:
            calls.append(len(x))
            return super().forward(x)

    m = Counting().eval()
    with pytest.raises(TargetError, match="label 7 is out of range"):
        xailab.create("saliency", m, batch_size=1).explain(images[:4], target="true", labels=[0, 1, 2, 7])
    assert calls == [1]
    with pytest.raises(TargetError, match="unknown target 'best'"):
        xailab.create("gradcam", m).explain(images[:4], target="best")
    with pytest.raises(TargetError, match="needs the images' labels"):
        xailab.create("lrp", m).explain(images[:4], target=["top1", "true"])


def test_nan_logits_refused(images: Tensor) -> None:
    class NaNModel(TinyBNCNN):
        def forward(self, x: Tensor) -> Tensor:
            out = super().forward(x)
            return out * float("nan") if len(x) == 1 else out

    for name in ONE_PASS:
        with pytest.raises(ModelError, match="NaN"):  # the second image's pass (batch_size=1)
            xailab.create(name, NaNModel().eval(), batch_size=1).explain(images[:1].repeat(2, 1, 1, 1))


@pytest.mark.parametrize("name", xailab.available())
def test_no_hook_left_when_a_gradient_pass_fails(name: str, images: Tensor) -> None:
    """The model raises in the first pass that builds a graph (or its second call at the
    latest): one-pass methods have no separate scoring pass to get through first."""

    class Exploding(TinyBNCNN):
        calls = 0

        def forward(self, x: Tensor) -> Tensor:
            Exploding.calls += 1
            if Exploding.calls > 1 or (torch.is_grad_enabled() and x.requires_grad):
                raise RuntimeError("boom")
            return super().forward(x)

    model = Exploding().eval()
    cls = METHODS.get(name)
    with pytest.raises(RuntimeError, match="boom"):
        xailab.create(name, model, **cls.quick_params).explain(images[:2], target="top1")
    assert count_hooks(model) == 0
    assert all(p.requires_grad for p in model.parameters())


def test_row_targets_resolve_in_order() -> None:
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 1.0, 2.0], [1.0, 0.0, 5.0]])
    plan = TargetPlan(["top1", "least"], 3)
    rows = RowTargets.from_plan(plan, first_image=0, n_images=3, n_targets=2)
    row_logits = logits.repeat_interleave(2, dim=0)
    assert rows.rows(0, 3, row_logits[0:3]).tolist() == [1, 0, 0]  # images 0 and 1 resolved
    with pytest.raises(RuntimeError, match="2 of 3 images"):
        rows.targets  # noqa: B018
    assert rows.rows(3, 6, row_logits[3:6]).tolist() == [1, 2, 1]
    assert rows.targets.tolist() == [[1, 0], [0, 1], [2, 1]]
    assert torch.equal(rows.logits, logits)
    with pytest.raises(AssertionError, match="in order"):
        RowTargets.from_plan(plan, 0, 3, 2).rows(2, 4, row_logits[2:4])
    known = RowTargets.known(torch.tensor([[4, 5], [6, 7]]))
    assert known.rows(1, 3).tolist() == [5, 6] and not known.lazy


def test_lrp_check_is_cached_until_the_model_changes(images: Tensor) -> None:
    torch.manual_seed(0)
    m = _randomise_bn(TinyBNCNN(), 1).eval()
    x = images[:3]
    first = xailab.create("lrp_epsilon_plus", m).explain(x)
    again = xailab.create("lrp_epsilon_plus", m).explain(x)  # a new explainer: the same model
    assert first.evaluations > 3 and again.evaluations == 3
    assert torch.equal(first.maps, again.maps)
    with torch.no_grad():
        m.fc.weight.mul_(1.0)  # an in-place update (an optimizer step): checked again
    assert xailab.create("lrp_epsilon_plus", m).explain(x).evaluations > 3
    assert xailab.create("lrp_epsilon_plus", m).explain(x[:, :, :8, :8]).evaluations > 3  # new shape
    assert xailab.create("lrp_epsilon", m).explain(x).evaluations > 3  # another composite
    m.relu2 = torch.nn.ReLU()  # a replaced module
    assert xailab.create("lrp_epsilon", m).explain(x).evaluations > 3

    class Gated(TinyBNCNN):  # refused every time: a failed check is not remembered
        def forward(self, x: Tensor) -> Tensor:
            h = self.relu1(self.bn1(self.conv1(x)))
            return self.fc(self.pool2(h * torch.sigmoid(h)).flatten(1)[:, :5].repeat(1, 2)[:, :8])

    g = Gated().eval()
    for _ in range(2):
        with pytest.raises(Exception, match="product"):
            xailab.create("lrp_epsilon", g).explain(x)


@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "gradcam", "lrp_epsilon", "deeplift",
                                  "integrated_gradients"])
def test_channels_last_inputs(name: str, images: Tensor) -> None:
    """A channels-last batch is explained in its own memory format (no NCHW copy), same maps."""
    m = model64()
    x = images[:4].double()
    kw = METHODS.get(name).quick_params
    want = xailab.create(name, m, batch_size=3, **kw).explain(x, target=["top1", "least"])
    got = xailab.create(name, m, batch_size=3, **kw).explain(
        x.contiguous(memory_format=torch.channels_last), target=["top1", "least"])
    assert got.maps.is_contiguous()
    assert torch.equal(got.targets, want.targets)
    torch.testing.assert_close(got.maps, want.maps, rtol=1e-9, atol=1e-12)
