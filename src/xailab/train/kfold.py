"""Stratified k-fold training: one model per fold, scored on its held-out fold.

The items are split into ``k`` folds keeping each class's share (``xailab.data.stratified_kfold``);
fold ``i`` trains a fresh model on the other ``k - 1`` folds and is scored, after its last epoch,
on fold ``i``: accuracy, cross-entropy loss, macro precision, recall and F1 (see
:mod:`xailab.train.evaluation`). The summary is the mean and the sample standard deviation
(``ddof=1``) over folds. Every fold is a complete run in ``RUN/folds/fold-<i>/`` (checkpoints,
metrics, its own resume); the parent run holds table ``kfold`` (one part per fold) and manifest
section ``kfold`` (mean and std). Rerunning resumes: finished folds are read back, an interrupted
fold resumes from its last committed epoch.

    result = train_kfold(lambda fold: create_model("binary_cnn"), cats_dogs, k=5,
                         config=TrainConfig(epochs=3), run="runs/cv")
    print(result.format())
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from xailab.core.errors import InputError
from xailab.runs.store import Run
from xailab.train.batches import classes_of, labels_of, subset
from xailab.train.callbacks import Callback
from xailab.train.config import TrainConfig
from xailab.train.evaluation import evaluate, save_evaluation
from xailab.train.trainer import Trainer, seed_everything

METRICS = ("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro")

Split = tuple[Sequence[int] | np.ndarray, Sequence[int] | np.ndarray]


@dataclass
class KFoldResult:
    """K-fold training: one row per fold (sizes, best epoch, metrics) and the parent run."""

    table: pd.DataFrame     # one row per fold: fold, n_train, n_val, best_epoch, METRICS
    run: Run | None

    @property
    def mean(self) -> pd.Series:
        return self.table[list(METRICS)].mean()

    @property
    def std(self) -> pd.Series:
        return self.table[list(METRICS)].std(ddof=1) if len(self.table) > 1 else self.mean * 0

    def summary(self) -> dict[str, dict[str, float]]:
        return {"mean": {k: float(v) for k, v in self.mean.items()},
                "std": {k: float(v) for k, v in self.std.items()}}

    def format(self) -> str:
        cols = ["accuracy", "loss", "f1_macro"]
        lines = [f"{'fold':>6s} {'n_train':>8s} {'n_val':>7s}" + "".join(f" {c:>17s}" for c in cols)]
        for r in self.table.itertuples():
            lines.append(f"{r.fold:6d} {r.n_train:8d} {r.n_val:7d}"
                         + "".join(f" {getattr(r, c):17.4f}" for c in cols))
        m, s = self.mean, self.std
        lines.append(f"{'mean ± std':>23s}" + "".join(f" {m[c]:8.4f} ± {s[c]:6.4f}" for c in cols))
        return "\n".join(lines)


def stratified_splits(labels: np.ndarray, k: int, seed: int) -> list[Split]:
    from xailab.data import stratified_kfold

    return list(stratified_kfold(labels, k=k, seed=seed))


def _stratified(labels: np.ndarray, k: int, seed: int) -> list[Split]:
    """``k`` stratified folds of ``labels``; refuses ``k < 2`` and a class with fewer than ``k`` items."""
    if k < 2:
        raise InputError(f"k-fold needs k >= 2 folds, got {k}")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < k:
        raise InputError(f"a class has only {counts[counts > 0].min()} items, fewer than k={k} folds")
    return list(stratified_splits(labels, k, seed))


def train_kfold(model_fn: Callable[[int], nn.Module], dataset: Dataset[Any], *, k: int = 5,
                splits: Sequence[Split] | None = None, config: TrainConfig | None = None,
                run: Run | str | os.PathLike[str] | None = None,
                eval_dataset: Dataset[Any] | None = None,
                callbacks_fn: Callable[[int], Sequence[Callback]] | None = None,
                track: Literal["val"] | None = None,
                fold_config: dict[str, Any] | None = None) -> KFoldResult:
    """Train and score one model per fold.

    Args:
        model_fn: ``fold -> fresh model`` (called after seeding with ``config.seed + fold``).
        dataset: all items (with augmentation, if wanted, for the training folds).
        k, splits: number of folds, or the ``(train_idx, val_idx)`` pairs themselves.
        eval_dataset: the same items without augmentation, for the held-out folds
            (default: ``dataset``).
        callbacks_fn: ``fold -> callbacks`` for each fold's trainer.
        track: ``"val"`` records each fold's held-out predictions per epoch (``instance`` = index
            in ``dataset``), ``None`` records none.
        fold_config: written (with ``fold``) as each fold run's manifest ``config``.
    """
    cfg = config or TrainConfig()
    if splits is None:
        splits = _stratified(labels_of(dataset), k, cfg.seed)
    held = eval_dataset if eval_dataset is not None else dataset
    classes = classes_of(dataset)
    parent = run if isinstance(run, Run) or run is None else Run.create(run, kind="kfold")
    rows: list[dict[str, Any]] = []
    for fold, (tr, va) in enumerate(splits, start=1):
        sub = None if parent is None else Run.create(parent.path / "folds" / f"fold-{fold}",
                                                     kind="train", config={**(fold_config or {}), "fold": fold})
        if parent is not None and sub is not None and parent.has_part("kfold", fold) \
                and (sub.manifest.get("status") or {}).get("state") == "finished":
            rows.append(parent.read_table("kfold", filters=[("fold", "=", fold)]).iloc[0].to_dict())
            continue
        seed_everything(cfg.seed + fold)
        model = model_fn(fold)
        val = subset(held, va)
        trainer = Trainer(model, subset(dataset, tr), val, config=cfg, run=sub, classes=classes,
                          callbacks=callbacks_fn(fold) if callbacks_fn else (),
                          track=held if track == "val" else None,  # instance = index in dataset
                          track_indices=np.asarray(va) if track == "val" else None)
        res = trainer.fit()
        ev = evaluate(res.model, val, batch_size=cfg.eval_batch_size, classes=classes)
        row = {"fold": fold, "n_train": len(tr), "n_val": len(va), "best_epoch": res.best_epoch,
               **{m: float(ev.summary()[m]) for m in METRICS}}
        if sub is not None and parent is not None:
            save_evaluation(sub, ev, "fold")
            sub.update_manifest("fold", {"fold": fold, "n_train": len(tr), "n_val": len(va)})
            sub.write_array("val_indices", np.asarray(va, dtype=np.int64))
            parent.write_table("kfold", pd.DataFrame([row]), part=fold)
        rows.append(row)
    table = pd.DataFrame(rows)
    for c in ("fold", "n_train", "n_val", "best_epoch"):
        table[c] = table[c].astype(int)
    result = KFoldResult(table, parent)
    if parent is not None:
        parent.update_manifest("kfold", {"k": len(table), **result.summary()})
        parent.update_manifest("status", {"state": "finished", "folds": len(table)})
    return result
