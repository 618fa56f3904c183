"""Per-epoch predictions of a tracked set of instances (the raw material of instance flow).

Each recorded epoch ``e`` adds, to the run:

* part ``e`` of table ``predictions``: one row per tracked instance, in tracking order, with
  columns ``epoch`` (int32), ``instance`` (int64, index in the tracked dataset), ``label``,
  ``predicted`` (int32), ``confidence`` (float32, the top probability) and ``p_label``
  (float32, the probability given to the true label);
* chunk ``e`` of array ``probabilities``: ``float32 [N, K]``, row ``i`` = softmax of instance
  row ``i`` of the same part (with ``top_k``: ``[N, k]`` probabilities plus int32 ``[N, k]``
  classes in array ``probabilities_classes``).

Why arrays and not a list column: a list column of 50,000 x 120 rows converts to 6 million
Python objects in pandas (slow, large), while ``.npy`` chunks load (or memory-map) straight into
one numpy array: 50,000 instances x 10 classes x 120 epochs is 240 MB of float32, one 2 MB file
an epoch, readable a few epochs at a time. The scalar table stays small (about 1.5 MB an epoch
as Parquet) and filters by epoch or instance without touching the probabilities. The array chunk
is written before the table part, so a part that exists always has its probabilities.

In a trainer (on by default, see :class:`~xailab.train.trainer.Trainer`), or in your own loop::

    rec = PredictionRecorder(Run.create("runs/mine", kind="train"), test_set)
    for epoch in range(1, 11):
        train_one_epoch(model)
        rec.record(model, epoch)

For a run trained without recording: ``backfill_predictions(run, test_set, model)`` replays the
saved per-epoch checkpoints.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from xailab.core.errors import InputError
from xailab.runs.store import Run, RunError
from xailab.train.batches import classes_of, predict_batches, subset
from xailab.train.callbacks import Callback, TrainState
from xailab.train.checkpoint import epoch_weights, load_weights


def probabilities_name(table: str) -> str:
    """Array name holding the probabilities of prediction table ``table``."""
    return "probabilities" if table == "predictions" else f"{table}_probabilities"


class PredictionRecorder(Callback):
    """Record the predictions of ``model`` on ``dataset`` (or ``dataset[indices]``) per epoch.

    Args:
        run: the run (or its path) to write into.
        dataset: the tracked items, ``(x, y)`` pairs, without augmentation.
        indices: track only these items; the ``instance`` column keeps their index in ``dataset``.
        name: table name (``predictions``); its probabilities go to ``probabilities_name(name)``.
        top_k: keep only the ``k`` largest probabilities per instance (for many classes), or all.
        every: record every ``every``-th epoch (and the last of ``config.epochs``).
        batch_size, device: of the forward passes (device: the model's own by default).
    """

    def __init__(self, run: Run | str | os.PathLike[str], dataset: Dataset[Any], *, indices: Sequence[int] | np.ndarray | None = None,
                 name: str = "predictions", top_k: int | None = None, every: int = 1,
                 batch_size: int = 512, device: torch.device | str | None = None) -> None:
        self.run = run if isinstance(run, Run) else Run.create(run, kind="train")
        n = len(dataset)  # type: ignore[arg-type]
        if indices is not None:
            idx = np.asarray(list(indices), dtype=np.int64)
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise InputError(f"tracked indices must lie in [0, {n}); got {idx.min()}..{idx.max()}")
            self.instances = idx
            self.dataset = subset(dataset, idx)
        else:
            self.instances = np.arange(n, dtype=np.int64)
            self.dataset = dataset
        if len(self.instances) == 0:
            raise InputError("the tracked set is empty")
        if top_k is not None and top_k < 1:
            raise InputError("top_k must be >= 1")
        if every < 1:
            raise InputError("every must be >= 1")
        self.classes = classes_of(dataset)
        self.name, self.top_k, self.every = name, top_k, every
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else None
        self._last_epoch: int | None = None

    # -- the three-line API ---------------------------------------------------------------------
    @torch.no_grad()
    def record(self, model: nn.Module, epoch: int) -> pd.DataFrame:
        """Predict every tracked instance and write epoch ``epoch``'s part; returns the rows."""
        k = len(self.classes)
        probs, labels = [], []
        for logits, y in predict_batches(model, self.dataset, k, batch_size=self.batch_size,
                                         device=self.device):
            probs.append(torch.softmax(logits, dim=1))
            labels.append(y)
        p = torch.cat(probs).numpy().astype(np.float32, copy=False)
        lab = torch.cat(labels).numpy()
        pred = p.argmax(1)
        rows = pd.DataFrame({
            "epoch": np.full(len(lab), epoch, dtype=np.int32),
            "instance": self.instances,
            "label": lab.astype(np.int32),
            "predicted": pred.astype(np.int32),
            "confidence": p[np.arange(len(lab)), pred],
            "p_label": p[np.arange(len(lab)), lab],
        })
        arr = probabilities_name(self.name)
        if self.top_k is not None and self.top_k < k:
            top = np.argsort(-p, axis=1, kind="stable")[:, : self.top_k]
            self.run.write_array(f"{arr}_classes", top.astype(np.int32), chunk=epoch)
            self.run.write_array(arr, np.take_along_axis(p, top, axis=1), chunk=epoch)
        else:
            self.run.write_array(arr, p, chunk=epoch)
        self.run.write_table(self.name, rows, part=epoch)  # last: the part marks the epoch done
        self._describe()
        return rows

    def _describe(self) -> None:
        sections = dict(self.run.manifest.get("predictions") or {})
        if self.name in sections:
            return
        sections[self.name] = {
            "instances": len(self.instances),
            "classes": self.classes,
            "array": probabilities_name(self.name),
            "top_k": self.top_k,
            "layout": "table part per epoch (epoch, instance, label, predicted, confidence, "
                      "p_label); array chunk per epoch float32 [instances, classes], same row order",
        }
        self.run.update_manifest("predictions", sections)

    def drop_after(self, epoch: int) -> None:
        """Remove recorded epochs after ``epoch`` (used on resume: they were never committed)."""
        arr = probabilities_name(self.name)
        for part in self.run.table_parts(self.name):
            if int(part) > epoch:
                (self.run.table_dir(self.name) / f"{part}.parquet").unlink(missing_ok=True)
        for a in (arr, f"{arr}_classes"):
            for chunk in self.run.array_chunks(a):
                if int(chunk) > epoch:
                    (self.run.array_dir(a) / f"{chunk}.npy").unlink(missing_ok=True)

    # -- callback ---------------------------------------------------------------------------------
    def on_train_begin(self, model: nn.Module, state: TrainState) -> None:
        self.drop_after(state.epoch)

    def on_epoch_end(self, epoch: int, model: nn.Module, state: TrainState) -> None:
        if epoch % self.every == 0 or epoch == state.epochs:
            self.record(model, epoch)


def _open(run: Run | str | os.PathLike[str]) -> Run:
    return run if isinstance(run, Run) else Run.open(run)


def recorded_epochs(run: Run | str | os.PathLike[str], name: str = "predictions") -> list[int]:
    """Epochs with a complete record in table ``name``, ascending."""
    return sorted(int(p) for p in _open(run).table_parts(name))


def read_predictions(run: Run | str | os.PathLike[str], name: str = "predictions", *,
                     epochs: Sequence[int] | None = None,
                     instances: Sequence[int] | None = None) -> pd.DataFrame:
    """The prediction rows, all epochs or those asked for (Parquet filters, no full scan)."""
    r = _open(run)
    filters: list[Any] = []
    if epochs is not None:
        filters.append(("epoch", "in", [int(e) for e in epochs]))
    if instances is not None:
        filters.append(("instance", "in", [int(i) for i in instances]))
    return r.read_table(name, filters=filters or None)


def read_probabilities(run: Run | str | os.PathLike[str], name: str = "predictions", *,
                       epochs: Sequence[int] | None = None, mmap: bool = True) -> np.ndarray:
    """Probabilities as ``float32 [epochs, instances, K]`` (``K`` = top_k when that was set).

    Epochs are those recorded (ascending) or ``epochs``; chunks are memory-mapped when read.
    """
    r = _open(run)
    have = recorded_epochs(r, name)
    want = have if epochs is None else [int(e) for e in epochs]
    missing = sorted(set(want) - set(have))
    if missing:
        raise RunError(f"run {r.path} has no recorded predictions for epochs {missing} "
                       f"(recorded: {have})")
    arr = probabilities_name(name)
    return np.stack([r.read_array(arr, chunks=[f"{e:08d}"], mmap=mmap) for e in want])


def backfill_predictions(run: Run | str | os.PathLike[str], dataset: Dataset[Any], model: nn.Module, *,
                         indices: Sequence[int] | np.ndarray | None = None, name: str = "predictions",
                         epochs: Sequence[int] | None = None, top_k: int | None = None,
                         batch_size: int = 512, device: torch.device | str | None = None,
                         overwrite: bool = False) -> list[int]:
    """Compute the per-epoch records from a run's saved per-epoch checkpoints.

    ``model`` gives the architecture (a copy is loaded with each epoch's weights; ``model``
    itself is not changed). Epochs already recorded are skipped unless ``overwrite``. Returns the
    epochs written.
    """
    r = _open(run)
    ckpts = epoch_weights(r.path / "checkpoints")
    if not ckpts:
        raise RunError(f"run {r.path} has no per-epoch checkpoints (checkpoints/epoch-NNNN.safetensors)")
    todo = sorted(ckpts) if epochs is None else [int(e) for e in epochs]
    missing = [e for e in todo if e not in ckpts]
    if missing:
        raise RunError(f"run {r.path} has no checkpoint for epochs {missing} (has {sorted(ckpts)})")
    done = set() if overwrite else set(recorded_epochs(r, name))
    work = copy.deepcopy(model)
    if device is not None:
        work.to(device)
    rec = PredictionRecorder(r, dataset, indices=indices, name=name, top_k=top_k,
                             batch_size=batch_size, device=device)
    written = []
    for e in todo:
        if e in done:
            continue
        load_weights(ckpts[e], work)
        rec.record(work, e)
        written.append(e)
    return written
