"""Instance flow: how predictions move between classes from one epoch to the next.

The view of InstanceFlow (Pühringer, Hinterreiter & Streit, "InstanceFlow: Visualizing the
Evolution of Classifier Confusion on the Instance Level", IEEE VIS 2020): one Sankey column per
epoch, one node per (epoch, predicted class), and a link ``(e, a) -> (e+1, b)`` whose width is

    count(e, a, b) = |{ n : predicted[n, e] = a  and  predicted[n, e+1] = b }|

split into bands by a colour group: the true class (``color_by="true"``) or the correctness of
the step (``color_by="correct"``: kept right, learned, forgotten, kept wrong). Counting is one
``np.bincount`` per step over the codes ``(a * K + b) * G + g``.

Beside the diagram, :func:`instance_table` summarises each instance's trajectory (changes,
first / last epoch right, forgetting events as in Toneva et al., ICLR 2019),
:func:`class_distribution` says where the instances of one true class go, epoch by epoch, and
:func:`confused_pairs` lists the most confused (true, predicted) pairs.

    h = select_history(run, true_classes=["cat"], epochs="1-6", changed_only=True)
    s = sankey(h, color_by="correct")
    s.top_flows(5)                      # cat -> dog at 3 -> 4: 41, ...
    instance_table(h).head()            # the cats that changed most often
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

from xailab.dynamics.history import TABLE, FlowError, History, load_history
from xailab.runs.store import Run

ColorBy = Literal["true", "correct"]
CORRECT_GROUPS = ("kept right", "learned", "forgotten", "kept wrong")
_CORRECT_LUT = np.array([3, 1, 2, 0], dtype=np.int64)  # index 2*right_before + right_after
_DENSE_BINS = 1 << 22  # above this many (a, b, g) cells, count with np.unique instead


@dataclass(frozen=True)
class Sankey:
    """Nodes and links of an instance-flow diagram.

    Attributes:
        epochs: ``[E]`` the epochs (columns).
        classes: class names.
        color_by: ``"true"`` or ``"correct"``.
        groups: names of the colour groups (the classes, or :data:`CORRECT_GROUPS`).
        nodes: one row per non-empty node: ``epoch, cls, count``.
        links: one row per non-empty band: ``epoch, next_epoch, source, target, group, count``.
        n_instances: instances in the diagram.
    """

    epochs: np.ndarray
    classes: tuple[str, ...]
    color_by: str
    groups: tuple[str, ...]
    nodes: pd.DataFrame
    links: pd.DataFrame
    n_instances: int

    def flows(self) -> pd.DataFrame:
        """Links summed over colour groups: ``epoch, next_epoch, source, target, count``."""
        keys = ["epoch", "next_epoch", "source", "target"]
        if self.links.empty:
            return pd.DataFrame({k: pd.Series(dtype=np.int64) for k in [*keys, "count"]})
        return self.links.groupby(keys, as_index=False, sort=True)["count"].sum()

    def top_flows(self, n: int = 10, changes_only: bool = True) -> pd.DataFrame:
        """The ``n`` widest flows (only those that change class, by default), with class names."""
        f = self.flows()
        if changes_only:
            f = f[f["source"] != f["target"]]
        f = f.sort_values(["count", "epoch", "source", "target"],
                          ascending=[False, True, True, True]).head(n).reset_index(drop=True)
        f.insert(4, "from", [self.classes[k] for k in f["source"]])
        f.insert(5, "to", [self.classes[k] for k in f["target"]])
        return f

    def count(self, epoch: int, source: int, target: int) -> int:
        """Instances predicted ``source`` at ``epoch`` and ``target`` at the next epoch."""
        li = self.links
        sel = (li["epoch"] == epoch) & (li["source"] == source) & (li["target"] == target)
        return int(li.loc[sel, "count"].sum())


def select_history(run: Run, *, true_classes: Iterable[str | int] | str | int | None = None,
                   epochs: str | tuple[int, int] | None = None, changed_only: bool = False,
                   misclassified: bool = False, classes: Sequence[str] | None = None,
                   table: str = TABLE) -> History:
    """Load a run's history with the flow filters applied.

    Args:
        true_classes: only instances of these true classes (names or indices).
        epochs: inclusive range ``"A-B"``; every recorded epoch if None.
        changed_only: only instances whose prediction changed at least once in the range.
        misclassified: only instances predicted wrong at the last epoch of the range.
        classes: class names, overriding the run's manifest.
        table: the prediction table to read.
    """
    h = load_history(run, epochs=epochs, true_classes=true_classes, classes=classes, table=table)
    if changed_only:
        h = h.changed()
    if misclassified:
        h = h.misclassified()
    return h


def link_groups(h: History, step: int, color_by: ColorBy) -> np.ndarray:
    """``[N]`` colour group of each instance on the link from epoch ``step`` to ``step + 1``."""
    if color_by == "true":
        return h.labels.astype(np.int64)
    if color_by == "correct":
        right = h.right
        return _CORRECT_LUT[2 * right[:, step].astype(np.int64) + right[:, step + 1]]
    raise FlowError(f"unknown colour scheme {color_by!r}: use 'true' or 'correct'")


def sankey(h: History, color_by: ColorBy = "true") -> Sankey:
    """Count the nodes and links of the flow diagram of history ``h`` (see the module doc)."""
    k = h.n_classes
    groups = tuple(h.classes) if color_by == "true" else CORRECT_GROUPS
    if color_by not in ("true", "correct"):
        raise FlowError(f"unknown colour scheme {color_by!r}: use 'true' or 'correct'")
    g_n = len(groups)
    node_rows: list[np.ndarray] = []
    for e in range(len(h.epochs)):
        p = h.predicted[:, e]
        c = np.bincount(p[p >= 0].astype(np.int64), minlength=k)
        nz = np.flatnonzero(c)
        node_rows.append(np.stack([np.full(len(nz), h.epochs[e]), nz, c[nz]], 1))
    link_rows: list[np.ndarray] = []
    cells = k * k * g_n
    for s in range(len(h.epochs) - 1):
        a = h.predicted[:, s].astype(np.int64)
        b = h.predicted[:, s + 1].astype(np.int64)
        g = link_groups(h, s, color_by)
        ok = (a >= 0) & (b >= 0)
        code = (a[ok] * k + b[ok]) * g_n + g[ok]
        if cells <= _DENSE_BINS:
            counts = np.bincount(code, minlength=cells)
            code = np.flatnonzero(counts)
            counts = counts[code]
        else:
            code, counts = np.unique(code, return_counts=True)
        ab, grp = np.divmod(code, g_n)
        src, dst = np.divmod(ab, k)
        link_rows.append(np.stack([np.full(len(code), h.epochs[s]),
                                   np.full(len(code), h.epochs[s + 1]), src, dst, grp, counts], 1))
    nodes = pd.DataFrame(np.concatenate(node_rows) if node_rows else np.empty((0, 3), np.int64),
                         columns=["epoch", "cls", "count"]).astype(np.int64)
    links = pd.DataFrame(np.concatenate(link_rows) if link_rows else np.empty((0, 6), np.int64),
                         columns=["epoch", "next_epoch", "source", "target", "group", "count"])
    return Sankey(h.epochs, h.classes, color_by, groups, nodes, links.astype(np.int64), len(h))


def flow_members(h: History, epoch: int, source: int, target: int,
                 group: int | None = None, color_by: ColorBy = "true") -> np.ndarray:
    """Instance ids on the link ``(epoch, source) -> (next epoch, target)`` [and colour group]."""
    where = np.flatnonzero(h.epochs == epoch)
    if len(where) == 0 or where[0] + 1 >= len(h.epochs):
        raise FlowError(f"no link leaves epoch {epoch} (epochs: {h.epochs.tolist()})")
    s = int(where[0])
    sel = (h.predicted[:, s] == source) & (h.predicted[:, s + 1] == target)
    if group is not None:
        sel &= link_groups(h, s, color_by) == group
    return h.instances[sel]


def instance_table(h: History, sort_by: str = "changes", ascending: bool | None = None) -> pd.DataFrame:
    """One row per instance: how its prediction moved over the epochs of ``h``.

    Columns: ``instance, label, true, changes`` (epoch-to-epoch prediction changes),
    ``forgotten`` (right -> wrong steps, Toneva et al.'s forgetting events), ``right_epochs``,
    ``first_right`` / ``last_right`` (epoch numbers, <NA> if never right), ``final``,
    ``predicted`` (final class name), ``confidence`` (at the last epoch), ``correct`` (final),
    ``learned_then_forgotten`` (right at some epoch, wrong at the last), ``trajectory`` (the
    predicted class per epoch, -1 where not recorded).

    Sorted by ``sort_by`` (descending for counts, ascending for ``instance``), then instance.
    """
    e = h.predicted.shape[1]
    right = h.right
    any_right = right.any(1)
    first = np.argmax(right, axis=1)
    last = e - 1 - np.argmax(right[:, ::-1], axis=1) if e else first
    final, conf = h.final()
    a, b = right[:, :-1], right[:, 1:]
    rec = h.recorded
    forgotten = (a & ~b & rec[:, 1:]).sum(1)
    names = np.array((*h.classes, "?"), dtype=object)
    df = pd.DataFrame({
        "instance": h.instances.astype(np.int64),
        "label": h.labels.astype(np.int64),
        "true": names[h.labels],
        "changes": h.n_changes().astype(np.int64),
        "forgotten": forgotten.astype(np.int64),
        "right_epochs": right.sum(1).astype(np.int64),
        "first_right": pd.array(h.epochs[first] if e else first, dtype="Int64"),
        "last_right": pd.array(h.epochs[last] if e else last, dtype="Int64"),
        "final": final.astype(np.int64),
        "predicted": names[final],
        "confidence": conf.astype(np.float64),
        "correct": (final == h.labels) & (final >= 0),
        "learned_then_forgotten": any_right & (final != h.labels),
        "trajectory": list(h.predicted.astype(np.int64)),
    })
    df.loc[~any_right, ["first_right", "last_right"]] = pd.NA
    if sort_by not in df.columns or sort_by == "trajectory":
        raise FlowError(f"cannot sort by {sort_by!r}; columns: "
                        f"{', '.join(c for c in df.columns if c != 'trajectory')}")
    if ascending is None:
        ascending = sort_by in ("instance", "label", "true", "predicted", "final", "first_right")
    if sort_by == "instance":
        return df.sort_values("instance", ascending=ascending, ignore_index=True)
    return df.sort_values([sort_by, "instance"], ascending=[ascending, True],
                          na_position="last", kind="stable", ignore_index=True)


def learned_then_forgotten(h: History) -> pd.DataFrame:
    """Rows of :func:`instance_table` that were right at some epoch but are wrong at the last."""
    t = instance_table(h, sort_by="last_right")
    return t[t["learned_then_forgotten"]].reset_index(drop=True)


def _confusion_at(h: History, e: int) -> np.ndarray:
    k = h.n_classes
    y = h.labels.astype(np.int64)
    p = h.predicted[:, e].astype(np.int64)
    ok = (p >= 0) & (y >= 0)
    return np.bincount(y[ok] * k + p[ok], minlength=k * k).reshape(k, k)


def confusion_by_epoch(h: History) -> np.ndarray:
    """``[E, K, K]`` counts: ``[e, y, p]`` instances of true class ``y`` predicted ``p`` at ``e``."""
    k = h.n_classes
    return np.stack([_confusion_at(h, e) for e in range(len(h.epochs))]) if len(h.epochs) \
        else np.zeros((0, k, k), np.int64)


def class_distribution(h: History, true_class: int) -> pd.DataFrame:
    """Where the instances of ``true_class`` go: rows epochs, columns predicted classes, counts."""
    if not 0 <= true_class < h.n_classes:
        raise FlowError(f"class {true_class} is out of range (0..{h.n_classes - 1})")
    p = h.predicted[h.labels == true_class].astype(np.int64)
    c = np.stack([np.bincount(p[:, e][p[:, e] >= 0], minlength=h.n_classes)
                  for e in range(p.shape[1])]) if p.shape[1] else np.zeros((0, h.n_classes), np.int64)
    return pd.DataFrame(c, index=pd.Index(h.epochs, name="epoch"), columns=list(h.classes))


def confused_pairs(h: History, epoch: int | None = None, top: int = 10) -> pd.DataFrame:
    """The most frequent (true, predicted) pairs with ``true != predicted`` at ``epoch``.

    ``epoch=None`` takes the last epoch of the range. Columns: ``true, predicted`` (indices),
    ``true_name, predicted_name, count, share`` (of that true class's instances at the epoch).
    """
    if len(h.epochs) == 0:
        cm = np.zeros((h.n_classes, h.n_classes), np.int64)
    elif epoch is None:
        cm = _confusion_at(h, len(h.epochs) - 1)
    else:
        where = np.flatnonzero(h.epochs == epoch)
        if len(where) == 0:
            raise FlowError(f"epoch {epoch} is not in the history (epochs: {h.epochs.tolist()})")
        cm = _confusion_at(h, int(where[0]))
    off = cm.copy()
    np.fill_diagonal(off, 0)
    flat = np.argsort(-off, axis=None, kind="stable")[:top]
    ys, ps = np.unravel_index(flat, off.shape)
    keep = off[ys, ps] > 0
    ys, ps = ys[keep], ps[keep]
    totals = cm.sum(1)
    return pd.DataFrame({
        "true": ys.astype(np.int64), "predicted": ps.astype(np.int64),
        "true_name": [h.classes[y] for y in ys], "predicted_name": [h.classes[p] for p in ps],
        "count": off[ys, ps].astype(np.int64),
        "share": off[ys, ps] / np.maximum(totals[ys], 1),
    })
