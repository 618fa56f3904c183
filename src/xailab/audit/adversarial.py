"""Gradient attacks in pixel space: FGSM and PGD (L-infinity and L2), targeted or not.

Both maximise the cross-entropy of the true class (untargeted) or minimise that of a target class
(targeted) with steps of a normalised gradient, kept inside an ``eps``-ball around the clean image
and inside the valid range ``[0, 1]``:

* **FGSM** (Goodfellow et al. 2015, arXiv:1412.6572): one step,
  ``x' = clip_[0,1](x + s * eps * sign(grad_x CE(f(x), y)))`` with ``s = +1`` (untargeted; ``y``
  the label) or ``s = -1`` (targeted; ``y`` the target). ``norm="l2"`` is the fast gradient
  method with ``grad / ||grad||_2``.
* **PGD** (Madry et al. 2018, arXiv:1706.06083): from ``x_0 = x`` (or a uniform random point of
  the ball: ``x + U(-eps, eps)`` for L-inf, a uniform point of the L2 ball as Voelker et al. 2017
  sample it), ``steps`` times ``x <- clip_[0,1](P_eps(x + s * alpha * g(x)))`` where ``g`` is the
  sign of the gradient (L-inf) or the gradient over its L2 norm (L2), and ``P_eps`` projects onto
  the ball (clip ``x - x_clean`` to ``[-eps, eps]``, or scale it down to L2 norm ``eps``).
  The default step ``alpha = 2.5 * eps / steps`` (Madry et al.'s rule).

The order of operations (step, project, clip), the loss (summed cross-entropy of the logits of
the normalised image) and the final iterate as the answer are foolbox 3's, so both libraries give
the same adversarial images for the same start (tests/test_audit_reference.py). Each image draws
its random start from its own generator, seeded by ``seed`` and its index: the same images come
out whatever ``batch_size``. With ``restarts > 1`` each image keeps the first successful restart
(else the one with the highest loss).

    res = pgd(model, pixels, labels, eps=8 / 255, steps=20)     # pixels in [0, 1]
    res.success_rate, res.norms()                                # [N] linf, l2, pixels changed
    res = fgsm(model, pixels, labels, eps=0.1, target=3)        # targeted: aim at class 3
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from xailab.audit.descent import (
    ClassSpec,
    Norm,
    Setup,
    best_of_restarts,
    check_budget,
    descend,
    sample_start,
)
from xailab.audit.patch import patch_attack
from xailab.audit.result import AttackResult
from xailab.core.errors import InputError
from xailab.core.hooks import model_session
from xailab.data.transforms import Preprocessing

__all__ = ["ATTACKS", "ClassSpec", "Norm", "fgsm", "pgd", "run_attack", "sample_start"]

# -- the attacks ----------------------------------------------------------------------------------
def pgd(
    model: nn.Module,
    images: Tensor,
    labels: ClassSpec = None,
    *,
    eps: float,
    norm: Norm = "linf",
    steps: int = 40,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    target: ClassSpec = None,
    preprocessing: Preprocessing | str | None = "model",
    batch_size: int = 256,
    seed: int = 0,
) -> AttackResult:
    """Projected gradient descent (see the module docstring).

    Args:
        model: a classifier of normalised images (its preprocessing is applied to the pixels).
        images: pixels ``[N, C, H, W]`` in ``[0, 1]``.
        labels: the true classes (untargeted attacks move away from them); default: the clean
            predictions.
        eps: radius of the ball (L-inf: in pixel units, e.g. ``8/255``; L2: Euclidean norm).
        norm: ``"linf"`` or ``"l2"``.
        steps, step_size: number and size of steps (default ``2.5 * eps / steps``).
        random_start: start from a uniform random point of the ball.
        restarts: independent random starts; each image keeps its best.
        target: a class (or one per image) to aim at: a targeted attack.
        preprocessing: ``"model"`` (the model's recorded preprocessing), None or a Preprocessing.
        batch_size: images per forward/backward pass. seed: the random starts' seed.
    """
    check_budget(eps, steps, norm)
    if restarts < 1:
        raise InputError(f"restarts must be >= 1, got {restarts}")
    alpha = 2.5 * eps / steps if step_size is None else float(step_size)
    if not alpha > 0:
        raise InputError(f"step_size must be > 0, got {step_size}")
    t0 = time.perf_counter()
    s = Setup(model, images, labels, target, preprocessing, batch_size)
    params = {"eps": eps, "norm": norm, "steps": steps, "step_size": alpha, "random_start": random_start,
              "restarts": restarts, "seed": seed, "batch_size": batch_size}
    out = []
    with model_session(model):
        for lo in range(0, len(s.x), batch_size):
            x0, cls = s.x[lo : lo + batch_size], s.cls[lo : lo + batch_size]

            def attempt(r: int, x0: Tensor = x0, cls: Tensor = cls, lo: int = lo) -> Tensor:
                start = sample_start(x0, eps, norm, seed, lo, r) if random_start else None
                return descend(s.px, x0, cls, sign=s.sign, eps=eps, norm=norm, steps=steps, step_size=alpha,
                               start=start)

            out.append(best_of_restarts(s, x0, cls, lo, restarts, random_start, attempt))
    name = "pgd" if norm == "linf" else "pgd_l2"
    return s.result(torch.cat(out), name, params, t0)


def fgsm(
    model: nn.Module,
    images: Tensor,
    labels: ClassSpec = None,
    *,
    eps: float,
    norm: Norm = "linf",
    target: ClassSpec = None,
    preprocessing: Preprocessing | str | None = "model",
    batch_size: int = 256,
) -> AttackResult:
    """The fast gradient sign method: one step of size ``eps`` (deterministic). ``norm="l2"``:
    the fast gradient method, one step of L2 length ``eps``. Arguments as :func:`pgd`."""
    check_budget(eps, 1, norm)
    t0 = time.perf_counter()
    s = Setup(model, images, labels, target, preprocessing, batch_size)
    out = []
    with model_session(model):
        for lo in range(0, len(s.x), batch_size):
            x0, cls = s.x[lo : lo + batch_size], s.cls[lo : lo + batch_size]
            out.append(descend(s.px, x0, cls, sign=s.sign, eps=eps, norm=norm, steps=1, step_size=eps))
    params = {"eps": eps, "norm": norm, "batch_size": batch_size}
    return s.result(torch.cat(out), "fgsm" if norm == "linf" else "fgm_l2", params, t0)


ATTACKS = ("fgsm", "fgm_l2", "pgd", "pgd_l2", "patch")


def run_attack(name: str, model: nn.Module, images: Tensor, labels: ClassSpec = None, **params: Any) -> AttackResult:
    """One of :data:`ATTACKS` by name: ``run_attack("pgd", model, x, y, eps=0.03, steps=20)``."""
    key = name.strip().lower().replace("-", "_")
    if key == "fgsm":
        return fgsm(model, images, labels, **params)
    if key == "fgm_l2":
        return fgsm(model, images, labels, norm="l2", **params)
    if key == "pgd":
        return pgd(model, images, labels, **params)
    if key == "pgd_l2":
        return pgd(model, images, labels, norm="l2", **params)
    if key == "patch":
        return patch_attack(model, images, labels, **params)
    raise InputError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
