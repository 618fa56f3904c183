"""Explanations per checkpoint, as stored in a train run, and what they say about learning.

``xailab learning`` (:mod:`xailab.jobs.learning`) writes, per method ``M`` and epoch ``e``:

* chunk ``e`` of array ``learning-M``: ``float16 [N, h, w]``, each instance's map divided by
  its largest ``|value|`` (CAMs at the layer's resolution, before upsampling; other methods
  per pixel), and chunk ``e`` of ``learning-M-scale``: ``float32 [N]``, that largest value;
  the map chunk is written last and marks the (epoch, method) done;
* array ``learning-instances`` (chunk 0): the tracked instance ids explained, in row order.

This module reads them back (:func:`load_maps`) and turns them into tables
(:func:`analyse`): per (epoch, instance) drift and region mass, per instance the settling
epoch and its flips, per (class, epoch) the means.

    maps, epochs = load_maps(run, "gradcam")          # float32 [E, N, h, w]
    steps, per_instance, flips, summary = analyse(run, "gradcam", regions=["border:2"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from xailab.dynamics.drift import (
    SETTLE,
    WINDOW,
    drift_measures,
    flips_vs_changes,
    region_mask,
    region_mass,
    settling_epochs,
)
from xailab.runs.store import Run, RunError

INSTANCES = "learning-instances"


def maps_name(method: str) -> str:
    return f"learning-{method}"


def scale_name(method: str) -> str:
    return f"learning-{method}-scale"


def explained_epochs(run: Run, method: str) -> list[int]:
    """Epochs whose maps of ``method`` are stored, ascending."""
    return sorted(int(c) for c in run.array_chunks(maps_name(method)))


def instances(run: Run) -> np.ndarray:
    """The tracked instance ids the stored maps cover, in row order."""
    if not run.has_chunk(INSTANCES, 0):
        raise RunError(f"run {run.path} holds no explanations per checkpoint; run `xailab learning {run.path}` first")
    return run.read_array(INSTANCES)


def encode(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(float16 maps / max|map|, float32 max|map|)`` per row: float16 keeps ~3 significant
    digits of every pixel relative to the map's peak, whatever the map's own magnitude."""
    m = np.asarray(maps, np.float32)
    scale = np.abs(m.reshape(len(m), -1)).max(1) if m.size else np.zeros(len(m), np.float32)
    safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return (m / safe[:, None, None]).astype(np.float16), scale.astype(np.float32)


def decode(maps16: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return np.asarray(maps16, np.float32) * np.asarray(scale, np.float32)[:, None, None]


def load_maps(run: Run, method: str, epochs: Sequence[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """``(float32 [E, N, h, w], epochs)`` of ``method`` (every stored epoch, or ``epochs``)."""
    have = explained_epochs(run, method)
    want = have if epochs is None else [int(e) for e in epochs]
    missing = sorted(set(want) - set(have))
    if not want or missing:
        raise RunError(f"run {run.path} has no maps of {method!r} for epochs {missing or want} (has {have})")
    out = [decode(run.read_array(maps_name(method), chunks=[f"{e:08d}"]),
                  run.read_array(scale_name(method), chunks=[f"{e:08d}"])) for e in want]
    return np.stack(out), want


def predictions_at(run: Run, ids: np.ndarray, epochs: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(predicted [N, E], confidence [N, E], labels [N])`` of instances ``ids`` from the flow
    (``-1`` / NaN where an epoch was not recorded)."""
    df = run.read_table("predictions", columns=["epoch", "instance", "label", "predicted", "confidence"],
                        filters=[("epoch", "in", [int(e) for e in epochs])])
    pos = {int(i): k for k, i in enumerate(ids)}
    col = {int(e): k for k, e in enumerate(epochs)}
    pred = np.full((len(ids), len(epochs)), -1, np.int64)
    conf = np.full((len(ids), len(epochs)), np.nan, np.float32)
    labels = np.full(len(ids), -1, np.int64)
    keep = df["instance"].isin(list(pos))
    df = df[keep]
    r = df["instance"].map(pos).to_numpy()
    c = df["epoch"].map(col).to_numpy()
    pred[r, c] = df["predicted"].to_numpy()
    conf[r, c] = df["confidence"].to_numpy()
    labels[r] = df["label"].to_numpy()
    return pred, conf, labels


def interest(pred: np.ndarray, labels: np.ndarray, epochs: Sequence[int]) -> pd.DataFrame:
    """Per instance: flips, the last flip's epoch, right at the end, and ``forgotten`` (right at
    some epoch, wrong at the last), the kinds the Learning page shows first."""
    right = pred == labels[:, None]
    flips = (pred[:, 1:] != pred[:, :-1]) & (pred[:, 1:] >= 0) & (pred[:, :-1] >= 0)
    ep = np.asarray(epochs, np.int64)
    last_flip = np.where(flips.any(1), ep[1:][len(ep) - 2 - np.argmax(flips[:, ::-1], axis=1)], -1) if len(ep) > 1 \
        else np.full(len(pred), -1)
    return pd.DataFrame({"flips": flips.sum(1), "last_flip_epoch": last_flip, "right_final": right[:, -1],
                         "forgotten": right.any(1) & ~right[:, -1]})


def analyse(run: Run, method: str, *, regions: Sequence[str] = (), image_size: tuple[int, int] | None = None,
            top: float = 0.1, settle: float = SETTLE, window: int = WINDOW
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The tables of one method: steps (epoch x instance), instances, flips, and a summary."""
    maps, epochs = load_maps(run, method)
    ids = instances(run)
    pred, conf, labels = predictions_at(run, ids, epochs)
    d = drift_measures(maps, top=top)
    e_n = (len(epochs), len(ids))
    steps = pd.DataFrame({
        "method": method, "epoch": np.repeat(np.asarray(epochs, np.int32), len(ids)),
        "instance": np.tile(ids, len(epochs)), "label": np.tile(labels, len(epochs)).astype(np.int32),
        "predicted": pred.T.reshape(-1).astype(np.int32), "confidence": conf.T.reshape(-1),
        **{k: v.reshape(-1) for k, v in d.items()}})
    size = image_size or maps.shape[-2:]
    for spec in regions:
        mask = region_mask(spec, (int(size[0]), int(size[1])))
        steps[f"mass {spec}"] = np.stack([region_mass(maps[i], mask) for i in range(e_n[0])]).reshape(-1)
    change = 1.0 - d["rank_prev"]
    flips, numbers = flips_vs_changes(pred, change, epochs, window=window)
    summary: dict[str, Any] = dict(numbers)
    flips.insert(0, "instance", ids[flips["row"].to_numpy()] if len(flips) else np.empty(0, np.int64))
    flips = flips.drop(columns="row")
    flips.insert(0, "method", method)
    biggest = np.asarray(epochs)[1 + np.argmax(np.nan_to_num(change[1:], nan=0.0), axis=0)] if len(epochs) > 1 \
        else np.full(len(ids), epochs[0])
    per = pd.concat([pd.DataFrame({"method": method, "instance": ids, "label": labels,
                                   "settle_epoch": settling_epochs(d["rank_last"], epochs, settle),
                                   "largest_change_epoch": biggest}), interest(pred, labels, epochs)], axis=1)
    summary.update({"epochs": [int(e) for e in epochs], "instances": len(ids), "settle": settle, "window": window,
                    "top": top, "median_settle_epoch": float(np.median(per["settle_epoch"])),
                    "map_shape": [int(s) for s in maps.shape[-2:]]})
    return steps, per, flips, summary


def class_curves(steps: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Per (method, class, epoch): the mean of every measure of ``steps`` over the class's instances."""
    value_cols = [c for c in steps.columns if c in ("rank_prev", "iou_prev", "rank_last", "iou_last")
                  or c.startswith("mass ")]
    g = steps.groupby(["method", "label", "epoch"], sort=True)[value_cols].mean().reset_index()
    g.insert(2, "class", [classes[k] if 0 <= k < len(classes) else str(k) for k in g["label"]])
    return g
