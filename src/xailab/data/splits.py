"""Deterministic, stratified splits of a labelled dataset.

Both return sorted index arrays and depend only on the labels and the seed, so a run can be
repeated (and resumed) exactly.

    train_idx, val_idx = train_val_split(ds.targets, val_fraction=0.1, seed=0)
    train, val = ds.subset(train_idx), ds.subset(val_idx)
    for fit_idx, held_idx in stratified_kfold(ds.targets, k=5): ...
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from xailab.core.errors import DataError


def _labels(labels: Sequence[int] | np.ndarray | Tensor) -> np.ndarray:
    y = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if y.ndim != 1:
        raise DataError(f"labels must be one-dimensional, got shape {y.shape}")
    return y


def train_val_split(
    labels: Sequence[int] | np.ndarray | Tensor, val_fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split into training and validation indices.

    Each class ``c`` with ``n_c`` images gives ``round(val_fraction * n_c)`` images to the
    validation set (largest-remainder rounding so the total is ``round(val_fraction * N)``),
    drawn with ``numpy.random.default_rng(seed)``. ``val_fraction = 0`` gives an empty
    validation set.
    """
    y = _labels(labels)
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * val_fraction
    take = np.floor(exact).astype(int)
    short = round(val_fraction * len(y)) - int(take.sum())
    if short > 0:  # hand the remaining places to the largest remainders (ties: class order)
        order = np.argsort(-(exact - take), kind="stable")[:short]
        take[order] += 1
    val: list[np.ndarray] = []
    for c, t in zip(classes, take, strict=True):
        idx = np.nonzero(y == c)[0]
        val.append(rng.permutation(idx)[:t])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(y), dtype=bool)
    mask[val_idx] = False
    return np.nonzero(mask)[0].astype(np.int64), val_idx.astype(np.int64)


def stratified_kfold(
    labels: Sequence[int] | np.ndarray | Tensor, k: int = 5, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, held-out) index pairs; the held-out folds partition the data and each keeps
    the class proportions (scikit-learn's ``StratifiedKFold(shuffle=True, random_state=seed)``).
    """
    from sklearn.model_selection import StratifiedKFold

    y = _labels(labels)
    if k < 2:
        raise DataError(f"k must be at least 2, got {k}")
    _, counts = np.unique(y, return_counts=True)
    if len(y) and counts.min() < k:
        raise DataError(f"every class needs at least k={k} images for {k}-fold; the smallest has {counts.min()}")
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [
        (np.sort(a).astype(np.int64), np.sort(b).astype(np.int64))
        for a, b in skf.split(np.zeros(len(y)), y)
    ]
