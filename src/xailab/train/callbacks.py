"""The callback interface of the trainer, and the state it hands to callbacks.

A callback subclasses :class:`Callback` and overrides the moments it cares about::

    class PrintLoss(Callback):
        def on_epoch_end(self, epoch, model, state):
            print(epoch, state.metrics["train_loss"])

    Trainer(model, train_set, val_set, callbacks=[PrintLoss()]).fit()

Order at the end of epoch ``e``: the epoch's metrics are written, then every callback's
``on_epoch_end`` runs, then the checkpoint that commits the epoch is written. So whatever a
callback writes into the run during ``on_epoch_end`` belongs to epoch ``e``: if the process dies
before the commit, epoch ``e`` is trained again on resume and the callback is called again for it
(write parts named by epoch, so the second write replaces the first). ``on_train_begin`` sees
``state.epoch`` = the last committed epoch (0 on a fresh run): a callback that keeps records
should drop any it holds for later epochs there. Setting ``state.stop = True`` ends training
after the current epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from xailab.runs.store import Run
    from xailab.train.config import TrainConfig


@dataclass
class TrainState:
    """What the trainer knows; callbacks read it (and may set ``stop``)."""

    config: TrainConfig
    epochs: int
    device: torch.device
    optimizer: torch.optim.Optimizer
    run: Run | None = None
    epoch: int = 0                 # the last finished epoch (1-based); 0 before the first
    start_epoch: int = 0           # the committed epoch training (re)started from
    metrics: dict[str, float] = field(default_factory=dict)   # of the epoch just finished
    history: list[dict[str, float]] = field(default_factory=list)  # epochs of this process
    best_epoch: int = 0
    best_val_acc: float = float("-inf")
    stop: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free space for callbacks

    @property
    def resumed(self) -> bool:
        return self.start_epoch > 0


class Callback:
    """Base class: every hook does nothing. Override what you need."""

    def on_train_begin(self, model: nn.Module, state: TrainState) -> None:
        """Before the first epoch (also on resume, with ``state.epoch`` = last committed epoch)."""

    def on_epoch_begin(self, epoch: int, model: nn.Module, state: TrainState) -> None:
        """Before epoch ``epoch`` (1-based) is trained."""

    def on_batch_end(self, batch: int, model: nn.Module, state: TrainState) -> None:
        """After each optimizer step (``state.extra["batch_loss"]`` holds the batch loss)."""

    def on_epoch_end(self, epoch: int, model: nn.Module, state: TrainState) -> None:
        """After epoch ``epoch`` was trained and validated, before it is committed."""

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        """After the last epoch (not called when training fails)."""


class CallbackList(Callback):
    """Calls each callback in order."""

    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_begin(self, model: nn.Module, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_train_begin(model, state)

    def on_epoch_begin(self, epoch: int, model: nn.Module, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_epoch_begin(epoch, model, state)

    def on_batch_end(self, batch: int, model: nn.Module, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_batch_end(batch, model, state)

    def on_epoch_end(self, epoch: int, model: nn.Module, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_epoch_end(epoch, model, state)

    def on_train_end(self, model: nn.Module, state: TrainState) -> None:
        for c in self.callbacks:
            c.on_train_end(model, state)
