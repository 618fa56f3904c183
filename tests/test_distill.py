"""Distillation on numbers known by hand: fidelity, rules, pixel features, the KD loss, a tiny student."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xailab.core.errors import InputError
from xailab.distill import (
    Split,
    StudentSettings,
    agreement,
    class_rules,
    depth_curve,
    distill_student,
    fit_surrogate,
    kd_loss,
    pixel_features,
    tree_rules,
)
from xailab.distill.student import agreement_of_maps, predict_logits


def test_fidelity_is_the_agreement_counted_by_hand() -> None:
    X_fit = np.array([[0.0], [1.0], [2.0], [3.0]])
    X_test = np.array([[0.2], [2.6], [0.9], [1.6], [3.5]])
    # a depth-1 tree splits at 1.5: held-out predictions 0, 1, 0, 1, 1
    split = Split(X_fit, np.array([0, 0, 1, 1]), X_test, np.array([0, 1, 1, 1, 0]),
                  true_fit=np.array([0, 0, 1, 1]), true_test=np.array([0, 1, 1, 0, 1]))
    fit = fit_surrogate("tree", split, depth=1)
    assert fit.predictions.tolist() == [0, 1, 0, 1, 1]
    assert fit.fidelity == pytest.approx(3 / 5)  # agrees with the network on images 0, 1, 3
    assert fit.accuracy == pytest.approx(3 / 5)  # and with the labels on 0, 1, 4
    assert fit.teacher_accuracy == pytest.approx(3 / 5)
    assert fit.fit_fidelity == 1.0 and fit.size == 2 and fit.depth == 1
    assert agreement(np.array([1, 2, 3]), np.array([1, 0, 3])) == pytest.approx(2 / 3)
    with pytest.raises(InputError):
        agreement(np.array([1, 2]), np.array([1, 2, 3]))


def _random_split(n: int, labels_from_features: bool, seed: int = 0) -> Split:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    y = (X[:, 0] > 0).astype(int) * 2 + (X[:, 1] > 0.3) if labels_from_features else rng.integers(0, 4, n)
    h = n // 2
    return Split(X[:h], y[:h], X[h:], y[h:])


def test_a_tree_fitted_to_random_labels_has_chance_fidelity() -> None:
    n = 4000
    noise = fit_surrogate("tree", _random_split(n, False), depth=6)
    sd = np.sqrt(0.25 * 0.75 / (n // 2))
    assert abs(noise.fidelity - 0.25) < 4 * sd  # four classes: chance is 1/4
    assert noise.fit_fidelity > noise.fidelity + 0.05  # it did fit the fitting images
    signal = fit_surrogate("tree", _random_split(n, True), depth=6)
    assert signal.fidelity > 0.95  # the same tree learns a labelling that follows the features


def test_rules_partition_the_space_and_predict_as_the_tree() -> None:
    split = _random_split(600, True, seed=1)
    fit = fit_surrogate("tree", split, depth=3)
    rules = tree_rules(fit.estimator)
    assert len(rules) == fit.size
    masks = np.stack([r.mask(split.X_test) for r in rules])
    assert (masks.sum(0) == 1).all()  # every image satisfies exactly one rule
    by_rule = np.array([rules[int(i)].klass for i in masks.argmax(0)])
    assert (by_rule == fit.predictions).all()
    assert sum(r.support for r in rules) == len(split.X_fit)
    for r in fit.rules:  # coverage and precision counted again
        m, of = r.mask(split.X_test), split.teacher_test == r.klass
        if m.any():
            assert r.precision == pytest.approx(of[m].mean()) and r.covered == m.sum()
        assert r.coverage == pytest.approx((m & of).sum() / of.sum())
    text = rules[0].text(["a", "b", "c", "d", "e", "f"], ["w", "x", "y", "z"])
    assert text.startswith("IF ") and " THEN " in text


def test_class_rules_find_the_rule_of_a_class() -> None:
    split = _random_split(2000, True, seed=2)  # class 3 <=> x0 > 0 and x1 > 0.3
    cr = class_rules(split, 3, depth=2, min_leaf=5)
    assert cr.coverage > 0.95 and cr.precision > 0.95
    top = cr.rules[0]
    bounds = {f: (lo, hi) for f, lo, hi in top.bounds}
    assert set(bounds) == {0, 1}
    assert bounds[0][0] == pytest.approx(0.0, abs=0.1) and bounds[1][0] == pytest.approx(0.3, abs=0.1)
    with pytest.raises(InputError, match="none of the fitting images"):
        class_rules(split, 7)


def test_depth_curve_and_linear_model() -> None:
    split = _random_split(800, True, seed=3)
    curve = depth_curve(split, (1, 2, 4))
    assert curve["max_depth"].tolist() == [1, 2, 4]
    assert curve["size"].is_monotonic_increasing and curve["fidelity"].iloc[-1] > curve["fidelity"].iloc[0]
    lin = fit_surrogate("linear", split, C=1.0)
    assert lin.size <= 6 and lin.fidelity > 0.7 and lin.rules == ()
    with pytest.raises(InputError, match="unknown surrogate"):
        fit_surrogate("forest", split)


def test_pixel_features_of_known_images() -> None:
    x = torch.zeros(2, 3, 6, 6)
    x[0, 0] = 1.0  # all red
    x[1, :, :, 3:] = 1.0  # left half black, right half white
    f = pixel_features(x, grid=2)
    col = {n: i for i, n in enumerate(f.names)}
    assert f.values[0, col["red mean (top-left)"]] == 1.0 and f.values[0, col["green mean (top-left)"]] == 0.0
    assert f.values[1, col["blue mean (bottom-right)"]] == 1.0 and f.values[1, col["blue mean (top-left)"]] == 0.0
    assert f.values[0, col["contrast (top-left)"]] == 0.0 and f.values[0, col["edges (top-left)"]] == 0.0
    assert f.values[1, col["edges (top-left)"]] > 0  # the black-white border lies at its right edge
    with pytest.raises(InputError):
        pixel_features(x, grid=5)


def test_kd_loss_is_zero_when_the_student_copies_the_teacher() -> None:
    z = torch.randn(8, 5)
    hard = z.argmax(1)
    assert float(kd_loss(z, z, hard, 4.0, 1.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(kd_loss(z.flip(0), z, hard, 4.0, 1.0)) > 0
    # alpha 0 is the plain cross-entropy with the hard labels
    assert float(kd_loss(z, z, hard, 4.0, 0.0)) == pytest.approx(float(torch.nn.functional.cross_entropy(z, hard)))
    with pytest.raises(InputError):
        StudentSettings(temperature=0).check()


def test_a_tiny_student_learns_its_teacher() -> None:
    from xailab.models import create_model

    # the teacher: class 0 when the left half is bright, 1 when the top half is, else 2
    teacher = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    with torch.no_grad():
        teacher[2].weight.copy_(torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]]))
        teacher[2].bias.copy_(torch.tensor([0.0, 0.0, 2.2]))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 12, 12, generator=g)
    x[:32, :, :, :6] += 1.0
    x[32:64, :, :6] += 1.0
    torch.manual_seed(0)
    student = create_model("student_cnn_grey", num_classes=3, in_channels=1)
    t = predict_logits(teacher, x).argmax(1)
    assert t.tolist() == [0] * 32 + [1] * 32 + [2] * 32
    before = agreement(predict_logits(student, x).argmax(1).numpy(), t.numpy())
    distill_student(teacher, student, x, settings=StudentSettings(epochs=12, lr=5e-3, batch_size=32), log=lambda s: None)
    after = agreement(predict_logits(student, x).argmax(1).numpy(), t.numpy())
    assert before < 0.6 and after > 0.9
    assert not student.training
    maps = agreement_of_maps(teacher, student, x[:4], methods=("saliency",))
    assert len(maps) == 4 and maps["spearman"].between(-1, 1).all()


def test_unit_and_concept_features_read_the_layer(tiny_cnn: torch.nn.Module, images: torch.Tensor) -> None:
    from xailab.concepts.ice import explain_concepts, fit_concepts
    from xailab.distill import FeatureError, ice_features, unit_features

    f = unit_features(tiny_cnn, "features.3", [0, 4], ["red", "stripes"], images)
    with torch.no_grad():
        acts = tiny_cnn.features(images)
    assert np.allclose(f.values, acts.mean((2, 3))[:, [0, 4]].double().numpy(), atol=1e-6)
    assert f.names == ["unit 0 (red)", "unit 4 (stripes)"]
    with pytest.raises(FeatureError, match="another model"):
        unit_features(tiny_cnn, "features.3", [9], ["x"], images)  # the layer has 6 units
    with pytest.raises(FeatureError, match="does not have"):
        unit_features(tiny_cnn, "layer9", [0], ["x"], images)

    basis = fit_concepts(tiny_cnn, images, [2], layer="features.3", seed=0)[2]
    feats = ice_features(tiny_cnn, basis, images)
    assert np.allclose(feats.values, explain_concepts(tiny_cnn, basis, images).scores.double().numpy(), atol=1e-5)
    other = type(basis)("features.1", basis.directions, basis.clamp)  # a layer of 4 channels, not 6
    with pytest.raises(FeatureError, match="another model"):
        ice_features(tiny_cnn, other, images)
