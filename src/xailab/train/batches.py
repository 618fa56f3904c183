"""Datasets in batches, their labels and class names, the device: what the trainer, the recorder and evaluation share (plain torch datasets welcome)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from xailab.core.errors import DataError, ModelError
from xailab.core.hooks import model_device


def labels_of(ds: Dataset[Any]) -> np.ndarray:
    """Integer labels of every item, from ``.targets`` when the dataset has it (no decoding)."""
    if isinstance(ds, Subset):
        return labels_of(ds.dataset)[np.asarray(ds.indices, dtype=np.int64)]
    t = getattr(ds, "targets", None)
    if t is not None:
        return np.asarray(t.cpu() if isinstance(t, Tensor) else t, dtype=np.int64)
    return np.asarray([int(ds[i][1]) for i in range(len(ds))], dtype=np.int64)  # type: ignore[arg-type]


def classes_of(ds: Dataset[Any], labels: np.ndarray | None = None) -> list[str]:
    """Class names (``.classes``), else ``"0".."K-1"`` from the largest label."""
    if isinstance(ds, Subset):
        return classes_of(ds.dataset)
    c = getattr(ds, "classes", None)
    if c is not None:
        return [str(x) for x in c]
    lab = labels_of(ds) if labels is None else labels
    return [str(i) for i in range(int(lab.max()) + 1 if len(lab) else 0)]


def subset(ds: Dataset[Any], indices: Sequence[int] | np.ndarray | Tensor) -> Dataset[Any]:
    """``ds.subset(indices)`` when the dataset offers it (keeps classes/targets), else a Subset."""
    idx = [int(i) for i in (indices.tolist() if isinstance(indices, np.ndarray | Tensor) else indices)]
    sub = getattr(ds, "subset", None)
    return sub(idx) if callable(sub) else Subset(ds, idx)


def as_logits(out: Any, num_classes: int) -> Tensor:
    """Model output as ``[B, K]`` logits; a single logit for two classes becomes ``[0, z]``.

    ``softmax([0, z]) = (1 - sigmoid(z), sigmoid(z))``, so cross-entropy on it is the binary
    cross-entropy of the single-logit model.
    """
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ModelError(f"the model returned {shape}; it must return logits of shape [batch, classes]")
    if out.shape[1] == 1 and num_classes == 2:
        return torch.cat([torch.zeros_like(out), out], dim=1)
    if out.shape[1] != num_classes:
        raise ModelError(f"the model has {out.shape[1]} outputs but the dataset has {num_classes} "
                         "classes; create the model with num_classes set to the number of classes")
    return out


def check_model_fits(model: nn.Module, ds: Dataset[Any], num_classes: int,
                     device: torch.device | None = None) -> None:
    """Run one item through ``model`` and check it gives ``num_classes`` logits (else ModelError)."""
    if len(ds) == 0:  # type: ignore[arg-type]
        raise DataError("the dataset is empty")
    x = ds[0][0]
    if not isinstance(x, Tensor):
        raise DataError(f"dataset items must be (tensor, label) pairs, got {type(x).__name__}")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[None].to(device or model_device(model)))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"the model cannot take this dataset's inputs of shape {tuple(x.shape)}: "
                         f"{first}") from None
    finally:
        model.train(was)
    as_logits(out, num_classes)


def loader(ds: Dataset[Any], batch_size: int, *, shuffle: bool = False, seed: int = 0,
           num_workers: int = 0, device: torch.device | None = None) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=g,
                      num_workers=num_workers, pin_memory=bool(device and device.type == "cuda"),
                      persistent_workers=False)


def n_batches(ds: Dataset[Any], batch_size: int) -> int:
    return -(-len(ds) // batch_size)  # type: ignore[arg-type]


def batches(ds: Dataset[Any], batch_size: int, *, shuffle: bool = False, seed: int = 0,
            train: bool = False, num_workers: int = 0,
            device: torch.device | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """``(x, y)`` batches of ``ds``; the order (and augmentation) depends on ``seed`` only.

    Datasets offering ``get_batch(indices, augment=..., generator=...)`` (``xailab.data``'s
    ImageDataset) are sliced a batch at a time, with no DataLoader and no per-item Python work;
    evaluation batches (``train=False``) are then never augmented. Other datasets go through a
    DataLoader (augmentation drawn from torch's global generator, which the trainer seeds).
    """
    get_batch = getattr(ds, "get_batch", None)
    if callable(get_batch) and num_workers == 0:
        g = torch.Generator().manual_seed(seed)
        n = len(ds)  # type: ignore[arg-type]
        order = torch.randperm(n, generator=g) if shuffle else torch.arange(n)
        for s in range(0, n, batch_size):
            idx = order[s: s + batch_size]
            if train:
                yield get_batch(idx, generator=g)
            else:
                yield get_batch(idx, augment=False)
        return
    yield from loader(ds, batch_size, shuffle=shuffle, seed=seed, num_workers=num_workers, device=device)


@torch.no_grad()
def predict_batches(model: nn.Module, ds: Dataset[Any], num_classes: int, *, batch_size: int = 512,
                    device: torch.device | None = None,
                    num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(logits [b, K] float32 on CPU, labels [b])`` over ``ds`` in order, in eval mode.

    The model's ``training`` flag is restored afterwards.
    """
    dev = device or model_device(model)
    was = model.training
    model.eval()
    try:
        for x, y in batches(ds, batch_size, num_workers=num_workers, device=dev):
            logits = as_logits(model(x.to(dev, non_blocking=True)), num_classes)
            yield logits.float().cpu(), torch.as_tensor(y).long().cpu()
    finally:
        model.train(was)
