"""Evaluation of a classifier: accuracy, per-class accuracy, confusion matrix, macro P/R/F1, loss.

With the confusion matrix ``C[i, j]`` = number of items of true class ``i`` predicted as ``j``::

    accuracy      = trace(C) / sum(C)
    recall_i      = C[i, i] / sum_j C[i, j]      (= per-class accuracy)
    precision_i   = C[i, i] / sum_j C[j, i]
    F1_i          = 2 P_i R_i / (P_i + R_i)
    macro X       = mean over all K classes of X_i     (a 0/0 counts as 0, as scikit-learn's
                                                       ``zero_division=0``)
    loss          = mean cross-entropy  -log softmax(z)_y

Macro averages run over all K classes of the dataset, also those absent from the evaluated
items (scikit-learn with ``labels=range(K)``).

    ev = evaluate(model, test_set)
    print(ev.format())                  # accuracy, F1, per-class table, confusion matrix
    save_evaluation(run, ev, "test")    # tables evaluation / per_class / confusion in the run
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from xailab.runs.store import Run
from xailab.train.batches import classes_of, predict_batches


def confusion_matrix(labels: Any, predicted: Any, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = count of items with label ``i`` predicted as ``j`` (int64, ``[K, K]``)."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    p = np.asarray(predicted, dtype=np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and predictions {p.shape} differ in length")
    return np.bincount(y * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class Evaluation:
    """Metrics of one model on one set of items; every figure derives from ``confusion``."""

    confusion: np.ndarray
    loss: float
    classes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.confusion) / max(1, self.n))

    @property
    def support(self) -> np.ndarray:
        return self.confusion.sum(axis=1)

    @property
    def recall(self) -> np.ndarray:
        return _ratio(np.diag(self.confusion).astype(np.float64), self.support.astype(np.float64))

    per_class_accuracy = recall

    @property
    def precision(self) -> np.ndarray:
        return _ratio(np.diag(self.confusion).astype(np.float64),
                      self.confusion.sum(axis=0).astype(np.float64))

    @property
    def f1(self) -> np.ndarray:
        p, r = self.precision, self.recall
        return _ratio(2 * p * r, p + r)

    @property
    def precision_macro(self) -> float:
        return float(self.precision.mean())

    @property
    def recall_macro(self) -> float:
        return float(self.recall.mean())

    @property
    def f1_macro(self) -> float:
        return float(self.f1.mean())

    def summary(self) -> dict[str, float | int]:
        return {"n": self.n, "accuracy": self.accuracy, "loss": self.loss,
                "precision_macro": self.precision_macro, "recall_macro": self.recall_macro,
                "f1_macro": self.f1_macro}

    def per_class(self) -> pd.DataFrame:
        names = self.classes or [str(i) for i in range(len(self.confusion))]
        return pd.DataFrame({"class": names, "index": np.arange(len(names)),
                             "support": self.support, "accuracy": self.recall,
                             "precision": self.precision, "f1": self.f1})

    def format(self, max_matrix: int = 20) -> str:
        """A plain-text report: summary line, per-class table, confusion matrix (if K <= max)."""
        lines = [f"accuracy {self.accuracy:.4f}   loss {self.loss:.4f}   macro F1 {self.f1_macro:.4f}"
                 f"   macro precision {self.precision_macro:.4f}   macro recall {self.recall_macro:.4f}"
                 f"   ({self.n} items)", "",
                 f"{'class':16s} {'support':>8s} {'accuracy':>9s} {'precision':>9s} {'F1':>7s}"]
        for r in self.per_class().itertuples():
            lines.append(f"{str(r[1])[:16]:16s} {r.support:8d} {r.accuracy:9.4f} {r.precision:9.4f} "
                         f"{r.f1:7.4f}")
        k = len(self.confusion)
        if k <= max_matrix:
            w = max(7, len(str(int(self.confusion.max(initial=0)))) + 1)
            names = [str(c)[: w - 1] for c in (self.classes or range(k))]
            lines += ["", "confusion matrix (rows: true class, columns: predicted)",
                      " " * 12 + "".join(f"{n:>{w}s}" for n in names)]
            for name, row in zip(self.classes or [str(i) for i in range(k)], self.confusion, strict=True):
                lines.append(f"{name[:11]:>11s} " + "".join(f"{int(v):>{w}d}" for v in row))
        return "\n".join(lines)


def evaluation_from_logits(logits: torch.Tensor, labels: torch.Tensor,
                           classes: list[str] | None = None) -> Evaluation:
    k = logits.shape[1]
    loss = float(F.cross_entropy(logits.double(), labels.long(), reduction="mean")) if len(labels) else 0.0
    cm = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), k)
    return Evaluation(cm, loss, list(classes) if classes else [])


def evaluate(model: nn.Module, dataset: Dataset[Any], *, batch_size: int = 512,
             device: torch.device | None = None, classes: list[str] | None = None,
             num_workers: int = 0, progress: bool = False) -> Evaluation:
    """Evaluate ``model`` (in eval mode, flag restored) on every item of ``dataset``
    (``progress``: a bar in images)."""
    from tqdm.auto import tqdm

    names = classes or classes_of(dataset)
    k = len(names)
    cm = np.zeros((k, k), dtype=np.int64)
    loss_sum, n = 0.0, 0
    with tqdm(total=len(dataset), desc="evaluate", unit="img", disable=not progress) as bar:  # type: ignore[arg-type]
        for logits, y in predict_batches(model, dataset, k, batch_size=batch_size, device=device,
                                         num_workers=num_workers):
            loss_sum += float(F.cross_entropy(logits.double(), y, reduction="sum"))
            cm += confusion_matrix(y.numpy(), logits.argmax(1).numpy(), k)
            n += len(y)
            bar.update(len(y))
    return Evaluation(cm, loss_sum / max(1, n), names)


def save_evaluation(run: Run, ev: Evaluation, name: str = "test") -> None:
    """Store ``ev`` in ``run``: one part ``name`` of tables ``evaluation`` (one summary row),
    ``per_class`` and ``confusion`` (long form: true, predicted, count), and
    ``manifest["evaluation"][name]``."""
    run.write_table("evaluation", pd.DataFrame([{"name": name, **ev.summary()}]), part=name)
    pc = ev.per_class()
    pc.insert(0, "name", name)
    run.write_table("per_class", pc, part=name)
    k = len(ev.confusion)
    t, p = np.divmod(np.arange(k * k), k)
    run.write_table("confusion", pd.DataFrame({"name": name, "true": t, "predicted": p,
                                               "count": ev.confusion.ravel()}), part=name)
    sections = dict(run.manifest.get("evaluation") or {})
    sections[name] = ev.summary()
    run.update_manifest("evaluation", sections)


def load_evaluation(run: Run, name: str = "test") -> Evaluation:
    """Read back an evaluation stored by :func:`save_evaluation`."""
    summ = run.read_table("evaluation", filters=[("name", "=", name)])
    pc = run.read_table("per_class", filters=[("name", "=", name)]).sort_values("index")
    cf = run.read_table("confusion", filters=[("name", "=", name)])
    k = len(pc)
    cm = np.zeros((k, k), dtype=np.int64)
    cm[cf["true"].to_numpy(), cf["predicted"].to_numpy()] = cf["count"].to_numpy()
    return Evaluation(cm, float(summ["loss"].iloc[0]), [str(c) for c in pc["class"]])
