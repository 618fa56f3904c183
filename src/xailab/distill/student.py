"""A student network distilled from the teacher's soft labels (Hinton, Vinyals & Dean 2015).

The loss of a batch is ``alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) *
CE(z_s, hard)``: the teacher's logits ``z_t`` softened by temperature ``T`` (the ``T^2`` keeps the
gradient's scale as ``T`` changes), mixed with the cross-entropy to hard labels (the true labels
when known, else the teacher's predictions). Teacher logits are computed once, for each image
and its mirror image (with ``flip``, the student sees either at random).

    student = distill_student(teacher, StudentCNN(10, 3), x_fit, labels=y_fit, epochs=10)
    agreement_of_maps(teacher, student, x_test, methods=("gradcam", "saliency"))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.hooks import model_device, model_session


@dataclass(frozen=True)
class StudentSettings:
    """How the student is trained."""

    epochs: int = 10
    temperature: float = 4.0
    alpha: float = 0.9
    lr: float = 2e-3
    batch_size: int = 128
    flip: bool = True
    seed: int = 0

    def check(self) -> None:
        """Refuse settings that cannot train (one line each)."""
        if self.epochs < 1:
            raise InputError(f"student epochs must be at least 1, got {self.epochs}")
        if self.temperature <= 0:
            raise InputError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise InputError(f"alpha must lie in [0, 1], got {self.alpha}")


def predict_logits(model: nn.Module, x: Tensor, batch_size: int = 256) -> Tensor:
    """The model's logits for ``x`` in eval mode (flags restored), on the CPU."""
    device = model_device(model)
    out = []
    with model_session(model), torch.no_grad():
        for i in range(0, len(x), batch_size):
            out.append(model(x[i : i + batch_size].to(device)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, hard: Tensor, temperature: float, alpha: float) -> Tensor:
    """Hinton et al.'s distillation loss (see the module docstring)."""
    t = temperature
    soft = F.kl_div(F.log_softmax(student_logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                    reduction="batchmean", log_target=True) * (t * t)
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, hard)


def distill_student(teacher: nn.Module, student: nn.Module, x: Tensor, *, labels: Tensor | None = None,
                    settings: StudentSettings | None = None,
                    log: Callable[[str], None] = print) -> nn.Module:
    """Train ``student`` (in place, returned in eval mode) to mimic ``teacher`` on images ``x``."""
    s = settings or StudentSettings()
    s.check()
    if len(x) < 2:
        raise InputError("a student needs at least 2 images to learn from")
    device = model_device(teacher)
    student.to(device)
    z = predict_logits(teacher, x)
    z_flip = predict_logits(teacher, x.flip(-1)) if s.flip else z
    hard = labels.long().cpu() if labels is not None else z.argmax(1)
    g = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    opt = torch.optim.Adam(student.parameters(), lr=s.lr, weight_decay=5e-4)
    steps = s.epochs * ((len(x) + s.batch_size - 1) // s.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=s.lr, total_steps=steps)
    was = student.training
    student.train()
    try:
        for epoch in range(s.epochs):
            start, total = time.perf_counter(), 0.0
            for idx in torch.randperm(len(x), generator=g).split(s.batch_size):
                flip = (torch.rand(len(idx), generator=g) < 0.5) if s.flip else torch.zeros(len(idx), dtype=torch.bool)
                xb = torch.where(flip[:, None, None, None], x[idx].flip(-1), x[idx]).to(device)
                zb = torch.where(flip[:, None], z_flip[idx], z[idx]).to(device)
                loss = kd_loss(student(xb), zb, hard[idx].to(device), s.temperature, s.alpha)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            log(f"student epoch {epoch + 1}/{s.epochs}: loss {total / len(x):.4f} ({time.perf_counter() - start:.1f} s)")
    finally:
        student.train(was)
    return student.eval()


def agreement_of_maps(teacher: nn.Module, student: nn.Module, x: Tensor, *,
                      methods: Sequence[str] = ("gradcam", "saliency"), target: Tensor | None = None,
                      batch_size: int = 32) -> pd.DataFrame:
    """Per image and method: Spearman rank correlation of the teacher's and the student's maps.

    Both explain the same class per image (``target``, default the teacher's prediction), with
    each method's defaults (Grad-CAM on each network's own default layer); maps of other sizes
    are compared at the larger one (:func:`xailab.metrics.agreement.spearman`, absolute values).
    """
    from xailab.core.registry import create
    from xailab.metrics.agreement import spearman

    t = target if target is not None else predict_logits(teacher, x).argmax(1)
    rows = []
    for m in methods:
        et = create(m, teacher, batch_size=batch_size).explain(x, target=t)
        es = create(m, student, batch_size=batch_size).explain(x, target=t)
        rho = spearman(et, es).cpu().numpy()
        rows += [{"image": i, "method": m, "target": int(t[i]), "spearman": float(r)} for i, r in enumerate(rho)]
    return pd.DataFrame(rows)


def summarise_maps(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and share of positive rank correlations per method."""
    if not len(table):
        return pd.DataFrame(columns=["method", "images", "mean", "median", "positive"])
    g = table.groupby("method", sort=False)["spearman"]
    return pd.DataFrame({"images": g.count(), "mean": g.mean(), "median": g.median(),
                         "positive": g.apply(lambda v: float(np.mean(v > 0)))}).reset_index()
