"""FGSM / PGD on models where the answer is known by hand (float64), and their contracts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xailab.audit import AttackResult, PixelModel, fgsm, perturbation_norms, pgd, run_attack
from xailab.core.errors import InputError, TargetError
from xailab.core.hooks import count_hooks
from xailab.data.transforms import Preprocessing

PREP = Preprocessing(mean=(0.5,), std=(0.25,), channels=1)




def linear_model(classes: int = 2, size: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(size * size, classes)).double().eval()


def pixels(n: int = 5, size: int = 6, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g, dtype=torch.float64) * 0.8 + 0.1


def test_pixel_model_normalises_inside() -> None:
    m, x = linear_model(), pixels()
    torch.testing.assert_close(PixelModel(m, PREP)(x), m(PREP.normalize(x)))
    torch.testing.assert_close(PixelModel(m, None)(x), m(x))


def test_fgsm_two_class_linear_is_the_sign_of_the_weight_difference() -> None:
    # CE gradient of a 2-class linear model on normalised pixels, for label 0:
    # (p_1) * (w_1 - w_0) / std, so FGSM moves every pixel by eps * sign(w_1 - w_0).
    m, x = linear_model(), pixels()
    w = m[1].weight.detach()
    y = torch.zeros(len(x), dtype=torch.long)
    res = fgsm(m, x, y, eps=0.05, preprocessing=PREP)
    expected = (x + 0.05 * torch.sign(w[1] - w[0]).reshape(1, 1, 6, 6)).clamp(0, 1)
    torch.testing.assert_close(res.adversarial, expected, rtol=0, atol=1e-12)
    # targeted at class 1 is the same step (descend CE of class 1 = ascend CE of class 0)
    tgt = fgsm(m, x, y, eps=0.05, target=1, preprocessing=PREP)
    torch.testing.assert_close(tgt.adversarial, expected, rtol=0, atol=1e-12)
    linf, _, changed = res.norms()
    torch.testing.assert_close(linf, torch.full((5,), 0.05, dtype=torch.float64))
    assert (changed == 36).all()


def test_fgsm_respects_the_valid_range() -> None:
    m = linear_model()
    x = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    x[1] = 1.0
    res = fgsm(m, x, torch.tensor([0, 0]), eps=0.3, preprocessing=PREP)
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    w = m[1].weight.detach()
    up = (w[1] - w[0] > 0).reshape(6, 6)
    assert torch.equal(res.adversarial[0, 0] > 0, up)  # black pixels can only brighten


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball_and_in_range(norm: str) -> None:
    m, x = linear_model(classes=3), pixels(n=8)
    eps = 0.1 if norm == "linf" else 0.5
    res = pgd(m, x, eps=eps, norm=norm, steps=15, preprocessing=PREP, seed=3)
    linf, l2, _ = perturbation_norms(res.adversarial - res.clean)
    bound = linf if norm == "linf" else l2
    assert float(bound.max()) <= eps + 1e-9
    assert float(res.adversarial.min()) >= 0 and float(res.adversarial.max()) <= 1
    assert res.attack == ("pgd" if norm == "linf" else "pgd_l2")


def test_pgd_large_budget_always_succeeds_on_a_linear_model() -> None:
    m, x = linear_model(classes=3), pixels(n=6)
    res = pgd(m, x, eps=1.0, steps=30, step_size=0.1, preprocessing=PREP)
    assert res.success.all()
    tgt = pgd(m, x, eps=1.0, steps=30, step_size=0.1, target=2, preprocessing=PREP)
    assert (tgt.adv_pred == 2).all() and tgt.success_rate == 1.0


def test_pgd_batch_size_parity_with_random_start() -> None:
    m, x = linear_model(classes=3), pixels(n=7)
    a = pgd(m, x, eps=0.05, steps=5, batch_size=64, preprocessing=PREP, seed=4)
    b = pgd(m, x, eps=0.05, steps=5, batch_size=2, preprocessing=PREP, seed=4)
    c = pgd(m, x, eps=0.05, steps=5, batch_size=64, preprocessing=PREP, seed=5)
    torch.testing.assert_close(a.adversarial, b.adversarial, rtol=0, atol=0)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_restarts_never_lose_a_success() -> None:
    m, x = linear_model(classes=3), pixels(n=10)
    one = pgd(m, x, eps=0.03, steps=3, preprocessing=PREP, seed=0)
    many = pgd(m, x, eps=0.03, steps=3, restarts=4, preprocessing=PREP, seed=0)
    assert bool((many.success | ~one.success).all())


def test_labels_default_to_the_clean_prediction_and_success_counts() -> None:
    m, x = linear_model(classes=3), pixels(n=6)
    res = pgd(m, x, eps=1e-4, steps=1, random_start=False, preprocessing=PREP)
    assert torch.equal(res.labels, res.clean_pred)
    assert res.success_rate == 0.0  # a tiny step changes no prediction here
    t = res.table()
    assert list(t.columns[:4]) == ["image", "label", "target", "clean_pred"] and len(t) == 6
    s = res.summary()
    assert s["images"] == 6 and s["clean_accuracy"] == 1.0 and s["param.eps"] == 1e-4


def test_model_left_as_found(tiny_bn_cnn: nn.Module) -> None:
    m = tiny_bn_cnn.train()
    for p in m.parameters():
        p.grad = torch.full_like(p, 3.0)
    flags = {n: mod.training for n, mod in m.named_modules()}
    x = torch.rand(3, 3, 8, 8)
    pgd(m, x, eps=0.05, steps=2, preprocessing=None)
    assert {n: mod.training for n, mod in m.named_modules()} == flags
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in m.parameters())
    assert count_hooks(m) == 0


def test_model_preprocessing_is_used_by_default() -> None:
    from xailab.models import set_preprocessing

    m, x = linear_model(), pixels()
    set_preprocessing(m, PREP)
    a = fgsm(m, x, eps=0.05)
    b = fgsm(m, x, eps=0.05, preprocessing=PREP)
    torch.testing.assert_close(a.adversarial, b.adversarial, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda m, x: fgsm(m, x * 4 - 1, eps=0.1), "pixels in \\[0, 1\\]"),
        (lambda m, x: fgsm(m, x[0], eps=0.1), "batch"),
        (lambda m, x: fgsm(m, x, eps=0.0), "eps must be > 0"),
        (lambda m, x: pgd(m, x, eps=2.0), "above 1"),
        (lambda m, x: pgd(m, x, eps=0.1, norm="l1"), "norm"),
        (lambda m, x: pgd(m, x, eps=0.1, steps=0), "steps"),
        (lambda m, x: run_attack("cw", m, x, eps=0.1), "unknown attack"),
    ],
)
def test_bad_input_is_refused(call, error: str) -> None:
    with pytest.raises(InputError, match=error):
        call(linear_model(), pixels())


def test_bad_classes_are_refused() -> None:
    m, x = linear_model(), pixels()
    with pytest.raises(TargetError, match="out of range"):
        fgsm(m, x, eps=0.1, target=5, preprocessing=PREP)
    with pytest.raises(TargetError, match="got 3 labels for 5 images"):
        fgsm(m, x, torch.tensor([0, 1, 0]), eps=0.1, preprocessing=PREP)


def test_result_norms_and_rates_by_hand() -> None:
    clean = torch.zeros(2, 1, 2, 2)
    adv = clean.clone()
    adv[0, 0, 0, 0] = 0.3
    adv[0, 0, 1, 1] = -0.4 + 0.4  # unchanged
    adv[1, 0, 1, 0] = 0.5
    adv[1, 0, 0, 1] = 0.5
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    res = AttackResult(clean, adv, torch.tensor([0, 0]), None, logits,
                       torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "hand")
    linf, l2, changed = res.norms()
    torch.testing.assert_close(linf, torch.tensor([0.3, 0.5]))
    torch.testing.assert_close(l2, torch.tensor([0.3, 0.5 * 2**0.5]))
    assert changed.tolist() == [1, 2]
    assert res.success.tolist() == [True, False] and res.success_rate == 0.5
    assert res.success_rate_on_correct == 0.5
