"""Our FGSM / PGD against foolbox 3 on the same model, inputs and epsilon.

foolbox runs the model through ``PyTorchModel(preprocessing=dict(mean, std, axis=-3),
bounds=(0, 1))``, i.e. on pixels with the normalisation inside, as :class:`PixelModel` does.
FGSM is deterministic: the adversarial images must be the same. PGD is compared without a
random start (deterministic) and with the *same* random start (foolbox's ``get_random_start``
replaced by ours), so every step can be checked, not only the success rate.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xailab.audit import fgsm, pgd
from xailab.audit.adversarial import sample_start
from xailab.data.transforms import Preprocessing

fb = pytest.importorskip("foolbox")
pytestmark = pytest.mark.reference

PREP = Preprocessing(mean=(0.3,), std=(0.4,), channels=1)


@pytest.fixture(scope="module")
def digits():
    """A small CNN trained for a moment on scikit-learn's 8x8 digits (real data, shipped with
    scikit-learn), in float64, and 64 held-out digits as pixels in [0, 1]."""
    from sklearn.datasets import load_digits

    n_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = load_digits()
        x = torch.tensor(d.images, dtype=torch.float64)[:, None] / 16.0
        y = torch.tensor(d.target)
        torch.manual_seed(0)
        m = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 32), nn.ReLU(), nn.Linear(32, 10)
        ).double()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(12):
            for i in range(0, 1500, 100):
                loss = F.cross_entropy(m(PREP.normalize(x[i : i + 100])), y[i : i + 100])
                opt.zero_grad()
                loss.backward()
                opt.step()
        m.eval()
        yield m, x[1600:1664], y[1600:1664]
    finally:
        torch.set_num_threads(n_threads)


def fmodel(m: nn.Module):
    # mean and std as float64 tensors: given as lists, foolbox keeps them in float32 and the
    # normalised inputs (so the L2 steps) differ from ours by ~1e-7
    stats = {k: torch.tensor(v, dtype=torch.float64) for k, v in (("mean", [0.3]), ("std", [0.4]))}
    return fb.PyTorchModel(m, bounds=(0, 1), preprocessing=dict(**stats, axis=-3))


def test_model_is_a_real_classifier(digits) -> None:
    m, x, y = digits
    acc = (m(PREP.normalize(x)).argmax(1) == y).double().mean()
    assert acc > 0.85


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3])
def test_fgsm_same_adversarial_images(digits, eps: float) -> None:
    m, x, y = digits
    ours = fgsm(m, x, y, eps=eps, preprocessing=PREP)
    _, theirs, success = fb.attacks.LinfFastGradientAttack()(fmodel(m), x, y, epsilons=eps)
    torch.testing.assert_close(ours.adversarial, theirs, rtol=0, atol=1e-12)
    assert torch.equal(ours.success, success)


def test_fgm_l2_same_adversarial_images(digits) -> None:
    m, x, y = digits
    ours = fgsm(m, x, y, eps=1.0, norm="l2", preprocessing=PREP)
    _, theirs, success = fb.attacks.L2FastGradientAttack()(fmodel(m), x, y, epsilons=1.0)
    torch.testing.assert_close(ours.adversarial, theirs, rtol=0, atol=1e-10)
    assert torch.equal(ours.success, success)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_without_random_start_is_the_same(digits, norm: str) -> None:
    m, x, y = digits
    eps = 0.05 if norm == "linf" else 0.5
    ours = pgd(m, x, y, eps=eps, norm=norm, steps=10, random_start=False, preprocessing=PREP)
    cls = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD
    attack = cls(abs_stepsize=ours.params["step_size"], steps=10, random_start=False)
    _, theirs, success = attack(fmodel(m), x, y, epsilons=eps)
    torch.testing.assert_close(ours.adversarial, theirs, rtol=0, atol=1e-9)
    assert ours.success_rate == float(success.double().mean())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_with_the_same_random_start_is_the_same(digits, norm: str) -> None:
    m, x, y = digits
    eps = 0.05 if norm == "linf" else 0.5
    ours = pgd(m, x, y, eps=eps, norm=norm, steps=10, preprocessing=PREP, seed=7)
    base = fb.attacks.LinfPGD if norm == "linf" else fb.attacks.L2PGD

    class SameStart(base):  # type: ignore[misc, valid-type]
        def get_random_start(self, x0, epsilon):
            return type(x0)(sample_start(x0.raw, epsilon, norm, seed=7, first=0))

    attack = SameStart(abs_stepsize=ours.params["step_size"], steps=10, random_start=True)
    _, theirs, success = attack(fmodel(m), x, y, epsilons=eps)
    torch.testing.assert_close(ours.adversarial, theirs, rtol=0, atol=1e-9)
    assert torch.equal(ours.success, success)


def test_pgd_own_random_start_agrees_in_distribution(digits) -> None:
    """With each library drawing its own start, success rates and norms agree closely."""
    m, x, y = digits
    eps = 0.08
    ours = pgd(m, x, y, eps=eps, steps=20, preprocessing=PREP, seed=0)
    torch.manual_seed(0)
    attack = fb.attacks.LinfPGD(abs_stepsize=ours.params["step_size"], steps=20, random_start=True)
    _, theirs, success = attack(fmodel(m), x, y, epsilons=eps)
    assert abs(ours.success_rate - float(success.double().mean())) <= 0.1
    l2_ours = ours.norms()[1].mean()
    l2_theirs = (theirs - x).flatten(1).norm(dim=1).mean()
    assert abs(float(l2_ours / l2_theirs) - 1) < 0.05


def test_targeted_pgd_is_the_same(digits) -> None:
    m, x, y = digits
    target = (y + 1) % 10
    ours = pgd(m, x, y, eps=0.1, steps=10, random_start=False, target=target, preprocessing=PREP)
    crit = fb.criteria.TargetedMisclassification(target)
    attack = fb.attacks.LinfPGD(abs_stepsize=ours.params["step_size"], steps=10, random_start=False)
    _, theirs, success = attack(fmodel(m), x, crit, epsilons=0.1)
    torch.testing.assert_close(ours.adversarial, theirs, rtol=0, atol=1e-9)
    assert torch.equal(ours.success, success)
