"""Training settings (one frozen dataclass; stored in the run's manifest as section ``train``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import torch
from torch import nn

from xailab.core.errors import InputError

# settings that may change between the first run and a resume without changing what is trained
RESUMABLE = frozenset({"epochs", "device", "quiet", "num_workers", "eval_batch_size",
                       "keep_optimizer_states"})


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Args:
        epochs: passes over the training set.
        batch_size: items per optimizer step (the last batch of an epoch may be smaller).
        lr: learning rate (the peak of the schedule).
        optimizer: ``"adam"`` (Kingma & Ba 2015), ``"adamw"`` (Adam with decoupled weight decay,
            Loshchilov & Hutter 2019: the usual choice for vision transformers) or ``"sgd"``
            (with ``momentum``, Nesterov off).
        momentum: SGD momentum (ignored by Adam).
        weight_decay: L2 penalty added to the gradient (``torch.optim`` semantics); with AdamW
            the decoupled decay ``w <- w - lr * weight_decay * w``.
        schedule: the learning rate per optimizer step: ``"constant"`` or ``"cosine"`` (from
            ``lr`` down to 0 at the last step, Loshchilov & Hutter 2017, without restarts).
        warmup_epochs: the first ``warmup_epochs`` epochs (counted in steps; may be fractional)
            raise the rate linearly from ``lr / warmup_steps`` to ``lr`` (Goyal et al. 2017).
            The rate of a step is a function of the step alone, so a resume repeats it exactly.
        label_smoothing: the cross-entropy's target is ``(1 - s) * onehot + s / K``
            (Szegedy et al. 2016; ``torch.nn.functional.cross_entropy`` semantics).
        seed: every random choice derives from it: epoch ``e`` reseeds torch, numpy and
            ``random`` with ``seed * 1_000_003 + e`` before shuffling, augmenting and dropout, so
            a resumed run repeats an uninterrupted one exactly (on the same device).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        num_workers: DataLoader worker processes (0: load in the training process).
        eval_batch_size: items per forward pass when validating and recording.
        quiet: no progress bars.
        keep_optimizer_states: how many of the newest epochs keep their optimizer file (needed
            only to resume); ``None`` keeps all. Weights of every epoch are always kept.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    eval_batch_size: int = 512
    quiet: bool = False
    keep_optimizer_states: int | None = 1

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise InputError(f"epochs must be >= 0, got {self.epochs}")
        if self.batch_size < 1 or self.eval_batch_size < 1:
            raise InputError("batch sizes must be >= 1")
        if not self.lr > 0:
            raise InputError(f"the learning rate must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise InputError(f"weight decay must be >= 0, got {self.weight_decay}")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise InputError(f"unknown optimizer {self.optimizer!r}; use 'adam', 'adamw' or 'sgd'")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"unknown schedule {self.schedule!r}; use 'constant' or 'cosine'")
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise InputError(f"warmup epochs must be between 0 and the epochs ({self.epochs}), "
                             f"got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise InputError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.keep_optimizer_states is not None and self.keep_optimizer_states < 1:
            raise InputError("keep_optimizer_states must be >= 1 or None")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise InputError("the model has no trainable parameters")
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum,
                               weight_decay=self.weight_decay)

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based, counted over all epochs)."""
        warmup = round(self.warmup_epochs * steps_per_epoch)
        if step < warmup:
            return self.lr * (step + 1) / warmup
        if self.schedule == "constant":
            return self.lr
        total = max(1, self.epochs * steps_per_epoch - warmup)
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(step - warmup, total) / total))

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Settings (other than those in RESUMABLE) where ``other`` differs from this config.

        A setting missing from ``other`` (a run made before it existed) counts as its default;
        with a schedule other than constant, ``epochs`` shapes every step's rate and must match.
        """
        mine, defaults = self.to_dict(), TrainConfig().to_dict()
        free = RESUMABLE if self.schedule == "constant" else RESUMABLE - {"epochs"}
        return [f"{k}: {other.get(k, defaults[k])!r} -> {v!r}" for k, v in mine.items()
                if k not in free and other.get(k, defaults[k]) != v]
