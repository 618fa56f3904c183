"""Prediction histories: which class the model predicted for each tracked instance, every epoch.

The trainer records, every epoch, one part of the run table ``predictions`` with the columns
``epoch, instance, label, predicted, confidence`` (and class probabilities, which are not read
here). This module reads the slice of that table a view needs, and no more, into a dense
:class:`History`: ``predicted[n, e]`` is the class predicted for instance ``instances[n]`` at
epoch ``epochs[e]`` (``-1`` where that epoch was not recorded for it).

Reading is bounded: only the needed columns are read, row groups outside the epoch range are
skipped by their Parquet statistics and rows of other true classes are dropped while streaming
(``pyarrow.dataset`` filters), so one class over ten epochs of a 50,000 x 120 history touches
5,000 x 10 rows.

    h = load_history(Run.open("runs/cifar"), epochs=(1, 6), true_classes=["cat"])
    h.predicted.shape           # (1000, 6): 1,000 cats, epochs 1..6
    h.changed().misclassified() # cats that changed prediction and are wrong at epoch 6
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from xailab.core.errors import XailabError
from xailab.runs.store import Run

TABLE = "predictions"
RECORD_HINT = (
    "record them while training (`xailab train ... --track test`, or a "
    "xailab.train.PredictionRecorder callback), or back-fill them from the run's per-epoch "
    "checkpoints with xailab.train.backfill_predictions(run, dataset, model)"
)


class FlowError(XailabError, ValueError):
    """A prediction history that is missing, or a filter (class, epochs) it cannot satisfy."""


@dataclass(frozen=True)
class History:
    """Predictions of ``N`` instances over ``E`` epochs.

    Attributes:
        epochs: ``[E]`` epoch numbers, increasing.
        instances: ``[N]`` instance ids (index in the tracked dataset), increasing.
        labels: ``[N]`` true class of each instance.
        predicted: ``[N, E]`` predicted class, ``-1`` where not recorded.
        confidence: ``[N, E]`` confidence of the prediction (NaN where not recorded), or None.
        classes: class names; index ``k`` names class ``k``.
    """

    epochs: np.ndarray
    instances: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray | None
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        n, e = len(self.instances), len(self.epochs)
        if self.predicted.shape != (n, e) or self.labels.shape != (n,):
            raise ValueError(f"predicted {self.predicted.shape} / labels {self.labels.shape} "
                             f"do not fit {n} instances x {e} epochs")
        if self.confidence is not None and self.confidence.shape != (n, e):
            raise ValueError(f"confidence {self.confidence.shape} does not fit ({n}, {e})")

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def recorded(self) -> np.ndarray:
        """``[N, E]`` bool: the prediction was recorded."""
        return self.predicted >= 0

    @property
    def right(self) -> np.ndarray:
        """``[N, E]`` bool: the prediction is the true class."""
        return self.predicted == self.labels[:, None]

    def final(self) -> tuple[np.ndarray, np.ndarray]:
        """``(predicted, confidence)`` at each instance's last recorded epoch of the range."""
        rec = self.recorded
        last = np.where(rec.any(1), self.predicted.shape[1] - 1 - np.argmax(rec[:, ::-1], axis=1), 0)
        rows = np.arange(len(self))
        pred = np.where(rec.any(1), self.predicted[rows, last], -1) if len(self) else last
        if self.confidence is None:
            conf = np.full(len(self), np.nan, dtype=np.float32)
        else:
            conf = np.where(rec.any(1), self.confidence[rows, last], np.nan)
        return pred, conf

    def n_changes(self) -> np.ndarray:
        """``[N]`` how often the prediction differs from the one of the epoch before."""
        a, b = self.predicted[:, :-1], self.predicted[:, 1:]
        return ((a != b) & (a >= 0) & (b >= 0)).sum(1)

    def select(self, mask: np.ndarray) -> History:
        """The instances where ``mask`` (``[N]`` bool or index array) holds."""
        return History(self.epochs, self.instances[mask], self.labels[mask], self.predicted[mask],
                       None if self.confidence is None else self.confidence[mask], self.classes)

    def changed(self) -> History:
        """Instances whose prediction changed at least once within the epoch range."""
        return self.select(self.n_changes() > 0)

    def misclassified(self) -> History:
        """Instances predicted wrong at the last epoch of the range."""
        pred, _ = self.final()
        return self.select((pred >= 0) & (pred != self.labels))

    @classmethod
    def from_frame(cls, df: pd.DataFrame, classes: Sequence[str] | None = None) -> History:
        """Build from rows ``epoch, instance, label, predicted[, confidence]`` (any order)."""
        cols = {c: df[c].to_numpy() for c in ("epoch", "instance", "label", "predicted")}
        if "confidence" in df:
            cols["confidence"] = df["confidence"].to_numpy()
        return _densify([cols], classes)


def _universe(values: list[np.ndarray]) -> np.ndarray:
    """The sorted distinct values of several int arrays (a presence map when they are dense ids,
    the usual case, which needs no sort of all rows)."""
    nonempty = [v for v in values if len(v)]
    if not nonempty:
        return np.empty(0, np.int64)
    lo = min(int(v.min()) for v in nonempty)
    hi = max(int(v.max()) for v in nonempty)
    total = sum(len(v) for v in nonempty)
    if lo >= 0 and hi < 4 * total + 1024:
        present = np.zeros(hi + 1, dtype=bool)
        for v in nonempty:
            present[v] = True
        return np.flatnonzero(present).astype(np.int64)
    return np.unique(np.concatenate(nonempty).astype(np.int64))


def _densify(batches: list[dict[str, np.ndarray]], classes: Sequence[str] | None,
             epochs: np.ndarray | None = None) -> History:
    """Scatter row batches (``epoch, instance, label, predicted[, confidence]``) into a History;
    each batch is released once scattered, so the peak is the rows plus the dense matrices."""
    if epochs is None:
        epochs = _universe([b["epoch"] for b in batches])
    instances = _universe([b["instance"] for b in batches])
    top = max([int(b[c].max(initial=-1)) for b in batches for c in ("label", "predicted")],
              default=-1) + 1
    dtype = np.int16 if max(top, len(classes or ())) < 2**15 else np.int32
    predicted = np.full((len(instances), len(epochs)), -1, dtype=dtype)
    labels = np.full(len(instances), -1, dtype=dtype)
    with_conf = bool(batches) and all("confidence" in b for b in batches)
    confidence = np.full(predicted.shape, np.nan, np.float32) if with_conf else None
    flat_pred = predicted.reshape(-1)
    flat_conf = None if confidence is None else confidence.reshape(-1)
    while batches:
        b = batches.pop(0)
        ii = np.searchsorted(instances, b["instance"])
        flat = ii * len(epochs) + np.searchsorted(epochs, b["epoch"])
        flat_pred[flat] = b["predicted"]
        labels[ii] = b["label"]
        if flat_conf is not None:
            flat_conf[flat] = b["confidence"]
    return History(np.asarray(epochs, np.int64), instances, labels, predicted, confidence,
                   _names(classes, top))


def _names(classes: Sequence[str] | None, needed: int) -> tuple[str, ...]:
    names = [str(c) for c in (classes or ())]
    return tuple(names + [str(k) for k in range(len(names), needed)])


# -- the run's side -------------------------------------------------------------------------------
def prediction_files(run: Run, table: str = TABLE) -> list[Path]:
    """The parts of the run's prediction table; :class:`FlowError` if there are none."""
    files = [run.table_dir(table) / f"{p}.parquet" for p in run.table_parts(table)]
    if not files:
        have = ", ".join(run.tables()) or "none"
        raise FlowError(f"run {run.path} has no recorded predictions (no table '{table}'; "
                        f"tables: {have}); {RECORD_HINT}")
    return files


def class_names(run: Run, classes: Sequence[str] | None = None,
                table: str = TABLE) -> tuple[str, ...]:
    """Class names: ``classes`` if given, else the first list found in the run's manifest.

    Looks at ``manifest["predictions"][table]["classes"]`` (written by the trainer's recorder),
    then ``manifest["classes"]``, then ``"classes"`` / ``"class_names"`` inside any section
    (``config``, ``train``, ``data``, ...), two levels deep. Empty if none is found
    (classes are then named by their index).
    """
    if classes is not None:
        return tuple(str(c) for c in classes)
    m = run.manifest
    section = (m.get("predictions") or {}).get(table) if isinstance(m.get("predictions"), dict) else None
    found = _find_classes(section, depth=1) or _find_classes(m, depth=3)
    return tuple(found) if found else ()


def _find_classes(node: Any, depth: int) -> list[str] | None:
    if not isinstance(node, dict) or depth == 0:
        return None
    for key in ("classes", "class_names"):
        v = node.get(key)
        if isinstance(v, list) and v and all(isinstance(c, (str, int)) for c in v):
            return [str(c) for c in v]
    for v in node.values():
        found = _find_classes(v, depth - 1)
        if found:
            return found
    return None


def recorded_epochs(run: Run, table: str = TABLE) -> np.ndarray:
    """The epochs present in the prediction table, from Parquet statistics where they suffice."""
    seen: set[int] = set()
    for f in prediction_files(run, table):
        meta = pq.ParquetFile(f).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if "epoch" not in names:
            raise FlowError(f"{f} has no 'epoch' column (columns: {', '.join(names)})")
        col = names.index("epoch")
        spans = []
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(col).statistics
            spans.append((st.min, st.max) if st is not None and st.has_min_max else None)
        if spans and all(s is not None and s[0] == s[1] for s in spans):
            seen.update(int(s[0]) for s in spans if s is not None)
        elif meta.num_rows:
            seen.update(np.unique(pq.read_table(f, columns=["epoch"])["epoch"].to_numpy()).tolist())
    return np.array(sorted(seen), dtype=np.int64)


def parse_epochs(spec: str | tuple[int, int] | None, available: np.ndarray) -> tuple[int, int]:
    """``"1-6"``, ``"3"``, ``"3-"``, ``"-6"`` or ``(1, 6)`` -> an inclusive range inside the run."""
    if len(available) == 0:
        raise FlowError("the run's predictions table is empty")
    lo_have, hi_have = int(available[0]), int(available[-1])
    if spec is None or spec == "":
        return lo_have, hi_have
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*(\d+)?\s*(?:(-|:|\.\.)\s*(\d+)?)?\s*", spec)
        if not m or (m.group(1) is None and m.group(3) is None):
            raise FlowError(f"cannot read epoch range {spec!r}: write it as A-B, e.g. 1-6")
        lo = int(m.group(1)) if m.group(1) is not None else lo_have
        hi = int(m.group(3)) if m.group(3) is not None else (hi_have if m.group(2) else lo)
    else:
        lo, hi = int(spec[0]), int(spec[1])
    if lo > hi:
        raise FlowError(f"epoch range {lo}-{hi} is empty (first epoch after the last)")
    inside = available[(available >= lo) & (available <= hi)]
    if lo < lo_have or hi > hi_have or len(inside) == 0:
        raise FlowError(f"epochs {lo}-{hi} are outside the run: it recorded epochs "
                        f"{lo_have}-{hi_have} ({len(available)} epochs)")
    return lo, hi


def resolve_classes(spec: Iterable[str | int] | str | int | None, classes: Sequence[str]) -> list[int]:
    """Class names or indices -> indices; :class:`FlowError` listing the known names otherwise."""
    if spec is None:
        return []
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    out = []
    lower = {c.lower(): k for k, c in enumerate(classes)}
    for item in items:
        s = str(item).strip()
        if s in classes:
            out.append(list(classes).index(s))
        elif s.lower() in lower:
            out.append(lower[s.lower()])
        elif s.lstrip("-").isdigit() and (not classes or 0 <= int(s) < len(classes)):
            out.append(int(s))
        else:
            known = ", ".join(classes) if classes else "none recorded (use class indices)"
            raise FlowError(f"unknown class {s!r}; known classes: {known}")
    return sorted(set(out))


def load_history(run: Run, *, epochs: str | tuple[int, int] | None = None,
                 true_classes: Iterable[str | int] | str | int | None = None,
                 classes: Sequence[str] | None = None, confidence: bool = True,
                 table: str = TABLE) -> History:
    """Read the predictions of the instances of ``true_classes`` over ``epochs`` (inclusive).

    Args:
        run: the run that holds the ``predictions`` table.
        epochs: ``"A-B"`` or ``(A, B)``; None for every recorded epoch.
        true_classes: names or indices; only instances of these true classes. None for all.
        classes: class names, overriding the ones in the manifest.
        confidence: also read the confidence column (when the table has one).
        table: the prediction table (``predictions``; the recorder can write others).
    """
    files = prediction_files(run, table)
    names = class_names(run, classes, table)
    available = recorded_epochs(run, table)
    lo, hi = parse_epochs(epochs, available)
    wanted = resolve_classes(true_classes, names)
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    have = set(dataset.schema.names)
    need = {"epoch", "instance", "label", "predicted"}
    if need - have:
        raise FlowError(f"the predictions table lacks columns {sorted(need - have)} "
                        f"(it has {sorted(have)})")
    columns = ["epoch", "instance", "label", "predicted"]
    if confidence and "confidence" in have:
        columns.append("confidence")
    expr = (ds.field("epoch") >= lo) & (ds.field("epoch") <= hi)
    if wanted:
        expr = expr & ds.field("label").isin(wanted)
    small = {"epoch": np.int32, "instance": np.int64, "label": np.int32, "predicted": np.int32,
             "confidence": np.float32}
    batches = []
    for batch in dataset.to_batches(columns=columns, filter=expr, batch_size=1 << 18):
        if batch.num_rows == 0:
            continue
        cols = {}
        for c in columns:
            arr = batch.column(c)
            if arr.null_count:
                arr = pc.fill_null(arr, -1 if c != "confidence" else np.nan)
            cols[c] = arr.to_numpy(zero_copy_only=False).astype(small[c], copy=False)
        batches.append(cols)
    return _densify(batches, names, epochs=available[(available >= lo) & (available <= hi)])
