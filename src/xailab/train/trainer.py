"""The trainer: epochs of mini-batch cross-entropy training, checkpoints, records and resume.

Per epoch ``e`` (1-based): reseed from ``(seed, e)``, one pass over the shuffled training set
(cross-entropy ``-log softmax(z)_y``, optionally label-smoothed; Adam, AdamW or SGD; the
learning rate set before every step by the config's schedule), a validation pass, then into the run:
part ``e`` of table ``metrics`` (train/val loss and accuracy, learning rate, seconds), the
callbacks' records (by default the per-epoch predictions of the tracked set), the weights
``checkpoints/epoch-000e.safetensors`` (and ``best.safetensors`` when validation accuracy
improved), and last the optimizer state ``epoch-000e.optim.safetensors``, which commits the
epoch. Rerunning on the same run directory resumes after the last committed epoch and gives the
same numbers as an uninterrupted run (CPU; on GPU up to cuDNN's nondeterminism).

    trainer = Trainer(model, train_set, val_set, config=TrainConfig(epochs=5), run="runs/c10")
    result = trainer.fit()
    result.history          # DataFrame, one row per epoch
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor, nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from xailab.core.errors import DataError, ModelError
from xailab.core.hooks import resolve_device
from xailab.runs.store import Run, RunError, atomic_write
from xailab.train.batches import (
    as_logits,
    batches,
    check_model_fits,
    classes_of,
    n_batches,
)
from xailab.train.callbacks import Callback, CallbackList, TrainState
from xailab.train.checkpoint import (
    committed_epochs,
    epoch_weights,
    load_optimizer,
    load_weights,
    optimizer_path,
    save_optimizer,
    save_weights,
    weights_path,
)
from xailab.train.config import TrainConfig
from xailab.train.evaluation import evaluate
from xailab.train.recorder import PredictionRecorder


def record_preprocessing(model: nn.Module, data: Dataset[Any]) -> None:
    """Record the training data's normalisation as the model's preprocessing (kept beside the
    model by :func:`xailab.models.set_preprocessing`, saved into every checkpoint)."""
    from xailab.data.transforms import Preprocessing
    from xailab.models import set_preprocessing

    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if not mean or not std or len(mean) != len(std):
        return
    size = getattr(data, "image_size", None)
    set_preprocessing(model, Preprocessing(
        mean=tuple(mean), std=tuple(std), channels=len(mean),
        input_size=tuple(size) if size else None,
    ))


def epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def merge_section(run: Run, section: str, values: dict[str, Any]) -> None:
    """``manifest[section].update(values)`` (keys already there from the caller are kept)."""
    old = run.manifest.get(section)
    run.update_manifest(section, {**values, **(old if isinstance(old, dict) else {})})


@dataclass
class TrainResult:
    """What training produced: the model, its run, the per-epoch history and the best epoch."""

    model: nn.Module
    run: Run | None
    history: pd.DataFrame       # one row per epoch (all committed epochs when there is a run)
    best_epoch: int
    best_val_acc: float | None
    epochs_done: int
    resumed_from: int           # 0 for a fresh run

    @property
    def last(self) -> dict[str, float]:
        return self.history.iloc[-1].to_dict() if len(self.history) else {}


class Trainer:
    """Train ``model`` on ``train_data`` (items ``(x, y)``), validating on ``val_data``.

    Args:
        model: any ``nn.Module`` returning ``[B, K]`` logits (or ``[B, 1]`` for two classes).
        train_data, val_data: datasets; ``val_data`` chooses the best checkpoint (without it the
            last epoch is the best).
        config: a :class:`TrainConfig`.
        run: run directory (a path or :class:`Run`) for checkpoints, records and resume; ``None``
            trains in memory only.
        callbacks: extra :class:`Callback` objects.
        track: the per-epoch prediction recorder's dataset: ``"val"`` (default, the validation
            set), any dataset, or ``None`` (off). Needs a run.
        track_indices: record only these items of the tracked dataset.
        classes: class names; default ``train_data.classes`` or the labels' range.
    """

    def __init__(self, model: nn.Module, train_data: Dataset[Any], val_data: Dataset[Any] | None = None,
                 *, config: TrainConfig | None = None, run: Run | str | os.PathLike[str] | None = None,
                 callbacks: Sequence[Callback] = (),
                 track: Dataset[Any] | Literal["val"] | None = "val",
                 track_indices: Sequence[int] | np.ndarray | None = None,
                 classes: Sequence[str] | None = None) -> None:
        self.model, self.train_data, self.val_data = model, train_data, val_data
        self.config = config or TrainConfig()
        # a run given as a path is created in fit(), once data and model are known to fit
        self._run_path = None if isinstance(run, Run) or run is None else run
        self.run: Run | None = run if isinstance(run, Run) else None
        self.classes = list(classes) if classes is not None else classes_of(train_data)
        self.tracked = val_data if isinstance(track, str) and track == "val" else track
        self.track_indices = track_indices
        self.callbacks = CallbackList(list(callbacks))

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg, model = self.config, self.model
        if len(self.train_data) == 0:  # type: ignore[arg-type]
            raise DataError("the training set is empty")
        dev = resolve_device(cfg.device)
        model.to(dev)
        k = len(self.classes)
        check_model_fits(model, self.train_data, k, dev)
        record_preprocessing(model, self.train_data)
        optimizer = cfg.make_optimizer(model)
        if self._run_path is not None:
            self.run, self._run_path = Run.create(self._run_path, kind="train"), None
        if self.run is not None and self.tracked is not None:
            self.callbacks.callbacks.insert(0, PredictionRecorder(
                self.run, self.tracked, indices=self.track_indices,
                batch_size=cfg.eval_batch_size))
            self.tracked = None  # added once, also if fit() is called again
        state = TrainState(config=cfg, epochs=cfg.epochs, device=dev, optimizer=optimizer, run=self.run)
        if self.run is not None:
            self._begin_run(model, optimizer, state)
        was_training = model.training
        self.callbacks.on_train_begin(model, state)
        try:
            for epoch in range(state.epoch + 1, cfg.epochs + 1):
                self._epoch(epoch, model, optimizer, state)
                if state.stop:
                    break
            self.callbacks.on_train_end(model, state)
        except BaseException as e:
            if self.run is not None:
                self._status(state, "interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                             error=f"{type(e).__name__}: {e}")
            raise
        finally:
            model.train(was_training)  # the caller's mode back (zoo models come in eval mode)
        if self.run is not None:
            self._status(state, "finished")
        return TrainResult(model, self.run, self.history(state), state.best_epoch,
                           state.best_val_acc if self.val_data is not None and state.best_epoch else None,
                           state.epoch, state.start_epoch)

    def _train_batches(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                       seed: int) -> tuple[Tensor, Tensor, int]:
        """One pass over the training data: summed loss (float64), correct predictions, items seen."""
        cfg, k = self.config, len(self.classes)
        model.train()
        nb = n_batches(self.train_data, cfg.batch_size)
        dl = batches(self.train_data, cfg.batch_size, shuffle=True, seed=seed, train=True,
                     num_workers=cfg.num_workers, device=state.device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=state.device)
        correct = torch.zeros((), dtype=torch.int64, device=state.device)
        n = 0
        bar = tqdm(total=nb, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                   disable=cfg.quiet, file=sys.stderr, dynamic_ncols=True, mininterval=1.0)
        try:
            for b, (x, y) in enumerate(dl):
                x = x.to(state.device, non_blocking=True)
                y = torch.as_tensor(y).to(state.device, non_blocking=True).long()
                optimizer.zero_grad(set_to_none=True)
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr_at((epoch - 1) * nb + b, nb)
                logits = as_logits(model(x), k)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                loss.backward()
                optimizer.step()
                d = loss.detach()
                loss_sum += d.double() * len(y)
                correct += (logits.detach().argmax(1) == y).sum()
                n += len(y)
                state.extra["batch_loss"] = d
                self.callbacks.on_batch_end(b, model, state)
                bar.update(1)
                if b % 20 == 0 or b == nb - 1:
                    bar.set_postfix(loss=f"{float(loss_sum) / n:.4f}", acc=f"{int(correct) / n:.4f}")
        finally:
            bar.close()
        return loss_sum, correct, n

    def _epoch(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
               state: TrainState) -> None:
        cfg = self.config
        seed = epoch_seed(cfg.seed, epoch)
        seed_everything(seed)
        self.callbacks.on_epoch_begin(epoch, model, state)
        t0 = time.perf_counter()
        loss_sum, correct, n = self._train_batches(epoch, model, optimizer, state, seed)
        train_loss = float(loss_sum) / max(1, n)
        if not np.isfinite(train_loss):
            raise ModelError(f"the training loss became {train_loss} in epoch {epoch}; lower the "
                             "learning rate (--lr) or check the inputs for NaN")
        train_seconds = time.perf_counter() - t0
        val_loss = val_acc = float("nan")
        if self.val_data is not None:
            ev = evaluate(model, self.val_data, batch_size=cfg.eval_batch_size, device=state.device,
                          classes=self.classes, num_workers=cfg.num_workers)
            val_loss, val_acc = ev.loss, ev.accuracy
        metrics = {"epoch": epoch, "train_loss": train_loss, "train_acc": int(correct) / max(1, n),
                   "val_loss": val_loss, "val_acc": val_acc, "lr": float(optimizer.param_groups[0]["lr"]),
                   "train_seconds": train_seconds, "seconds": time.perf_counter() - t0}
        improved = self.val_data is None or val_acc > state.best_val_acc
        if improved:
            state.best_epoch, state.best_val_acc = epoch, (val_acc if self.val_data is not None else float("nan"))
        state.epoch, state.metrics = epoch, metrics
        if self.run is not None:
            self.run.write_table("metrics", pd.DataFrame([metrics]), part=epoch)
        self.callbacks.on_epoch_end(epoch, model, state)
        if self.run is not None:
            self._commit(epoch, model, optimizer, state, improved)
        state.history.append(metrics)
        if not cfg.quiet:
            v = f"  val loss {val_loss:.4f} acc {val_acc:.4f}" if self.val_data is not None else ""
            tqdm.write(f"epoch {epoch}/{cfg.epochs}  train loss {train_loss:.4f} acc "
                       f"{metrics['train_acc']:.4f}{v}  {metrics['seconds']:.1f} s", file=sys.stderr)

    # -- the run ----------------------------------------------------------------------------------
    def _trainer_state(self, state: TrainState) -> dict[str, Any]:
        best = state.best_val_acc if np.isfinite(state.best_val_acc) else None
        return {"epoch": state.epoch, "best_epoch": state.best_epoch, "best_val_acc": best}

    def _commit(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                state: TrainState, improved: bool) -> None:
        ck = self.run.path / "checkpoints"  # type: ignore[union-attr]
        ts = self._trainer_state(state)
        save_weights(weights_path(ck, epoch), model, {"epoch": epoch, **state.metrics})
        if improved:
            save_weights(ck / "best.safetensors", model, {"epoch": epoch, **state.metrics})
        save_optimizer(optimizer_path(ck, epoch), optimizer, ts)  # the commit marker
        keep = self.config.keep_optimizer_states
        if keep is not None:
            for old in committed_epochs(ck)[:-keep]:
                optimizer_path(ck, old).unlink(missing_ok=True)
        self._status(state, "running")

    def _status(self, state: TrainState, status: str, error: str | None = None) -> None:
        assert self.run is not None
        value = {"state": status, **self._trainer_state(state), "epochs": state.epochs,
                 "updated": datetime.now(UTC).isoformat(timespec="seconds")}
        if error:
            value["error"] = error[:500]
        self.run.update_manifest("status", value)

    def _begin_run(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
        run, cfg = self.run, self.config
        assert run is not None
        ck = run.path / "checkpoints"
        done = committed_epochs(ck)
        prev = run.manifest.get("train")
        if done and isinstance(prev, dict):
            diffs = cfg.differences(prev)
            if diffs:
                raise RunError(f"run {run.path} was trained with other settings ({'; '.join(diffs)}); "
                               "rerun with the same settings to resume, or use a new run directory")
        last = done[-1] if done else 0
        if last:
            load_weights(weights_path(ck, last), model)
            ts = load_optimizer(optimizer_path(ck, last), optimizer)
            state.best_epoch = int(ts.get("best_epoch") or 0)
            best = ts.get("best_val_acc")
            state.best_val_acc = float(best) if best is not None else float("-inf")
            self._repair_best(ck, state.best_epoch)
        # records of epochs that never committed are dropped; those epochs are trained again
        for part in run.table_parts("metrics"):
            if int(part) > last:
                (run.table_dir("metrics") / f"{part}.parquet").unlink(missing_ok=True)
        for e, p in epoch_weights(ck).items():
            if e > last:
                p.unlink(missing_ok=True)
                optimizer_path(ck, e).unlink(missing_ok=True)
        state.epoch = state.start_epoch = last
        run.update_manifest("train", cfg.to_dict())
        run.update_manifest("classes", self.classes)
        n_params = sum(p.numel() for p in model.parameters())
        merge_section(run, "model", {"class": type(model).__name__, "parameters": n_params,
                                     "num_outputs": len(self.classes)})
        merge_section(run, "dataset", {"train_size": len(self.train_data),  # type: ignore[arg-type]
                                       "val_size": len(self.val_data) if self.val_data is not None else 0})  # type: ignore[arg-type]
        self._status(state, "running")

    @staticmethod
    def _repair_best(ck: Path, best_epoch: int) -> None:
        """Make best.safetensors hold ``best_epoch`` (it may come from an uncommitted epoch)."""
        best, src = ck / "best.safetensors", weights_path(ck, best_epoch)
        if not best_epoch or not src.is_file():
            return
        epoch = None
        try:
            with safe_open(str(best), framework="pt") as f:
                epoch = json.loads((f.metadata() or {}).get("xailab", "{}")).get("epoch")
        except Exception:
            epoch = None
        if epoch != best_epoch:
            atomic_write(best, lambda tmp: shutil.copyfile(src, tmp))

    def history(self, state: TrainState) -> pd.DataFrame:
        if self.run is not None and self.run.table_parts("metrics"):
            return self.run.read_table("metrics").sort_values("epoch").reset_index(drop=True)
        return pd.DataFrame(state.history)

