"""From names to objects: the datasets and model a ``train`` or ``evaluate`` command asks for.

Kept out of the CLI so that a notebook can do the same in two calls::

    data = prepare_data("cifar10", root="cifar10-jpg.tar.gz", augment=True, limit_train=5000)
    model = build_model("cifar_cnn", num_classes=len(data.classes), in_channels=data.channels)
    model = model_from_run("runs/c10")          # the best checkpoint of a finished run
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from xailab.runs.store import Run, RunError
from xailab.train.checkpoint import epoch_weights, load_weights


def stratified_sample(ds: Any, n: int | None, seed: int) -> Any:
    """A stratified sample of ``n`` items (all of them when ``n`` is None or >= len)."""
    from xailab.data import train_val_split

    if n is None or n >= len(ds):
        return ds
    if n < 1:
        from xailab.core.errors import InputError

        raise InputError(f"a limit must be >= 1, got {n}")
    _, keep = train_val_split(ds.targets, val_fraction=n / len(ds), seed=seed)
    return ds.subset(keep)


def _same_items(a: Any, b: Any) -> bool:
    return len(a) == len(b) and list(getattr(a, "names", [])) == list(getattr(b, "names", [None]))


@dataclass
class TrainData:
    """The datasets of one training run (``val``/``test`` may be None)."""

    full: Any                 # the (limited) training split, augmented if asked: k-fold uses it
    plain: Any                # the same items without augmentation
    train: Any                # full minus the validation items
    val: Any | None
    test: Any | None
    classes: list[str]
    channels: int
    notes: list[str] = field(default_factory=list)

    def normalized(self, mean: Any, std: Any) -> TrainData:
        """The same items normalised with another ``mean`` / ``std``."""
        def f(ds: Any) -> Any:
            return None if ds is None else ds.with_options(mean=tuple(mean), std=tuple(std))

        return TrainData(f(self.full), f(self.plain), f(self.train), f(self.val), f(self.test),
                         self.classes, self.channels, self.notes)

    def describe(self, name: str, root: str | None) -> dict[str, Any]:
        ds = self.full
        return {"name": name, "root": root, "source": getattr(ds, "source", None),
                "train_size": len(self.train), "val_size": len(self.val) if self.val is not None else 0,
                "test_size": len(self.test) if self.test is not None else 0,
                "channels": self.channels, "image_size": list(getattr(ds, "image_size", ())),
                "mean": list(getattr(ds, "mean", ())), "std": list(getattr(ds, "std", ())),
                "augment": bool(getattr(ds, "augment", False))}


def prepare_data(name: str, root: str | Path | None = None, *, augment: bool = False,
                 limit_train: int | None = None, limit_test: int | None = None,
                 val_fraction: float = 0.1, seed: int = 0, test: bool = True) -> TrainData:
    """Load the training split (a stratified ``limit_train`` sample), split off a stratified
    validation set (never augmented), and load the test split (``limit_test`` sample).

    An image folder without a separate ``test/`` folder serves the same images for every split;
    then ``test`` is None and a note says so.
    """
    from xailab.data import load_dataset, train_val_split

    everything = load_dataset(name, "train", root, augment=augment)
    full = stratified_sample(everything, limit_train, seed)
    plain = full.with_options(augment=False) if augment else full
    notes: list[str] = []
    if val_fraction > 0:
        tr, va = train_val_split(full.targets, val_fraction=val_fraction, seed=seed)
        train, val = full.subset(tr), plain.subset(va)
    else:
        train, val = full, None
    test_ds = None
    if test:
        test_ds = load_dataset(name, "test", root)
        if _same_items(test_ds, everything):
            notes.append(f"{name} has no separate test split; there is no test evaluation "
                         "(the validation split chooses and scores the model)")
            test_ds = None
        else:
            test_ds = stratified_sample(test_ds, limit_test, seed)
    x0 = full[0][0]
    return TrainData(full, plain, train, val, test_ds, list(full.classes), int(x0.shape[0]), notes)


def build_model(name: str, *, num_classes: int, in_channels: int, weights: str | None = None) -> nn.Module:
    """A model sized for the data: a zoo name, a TorchScript file or ``package.module:factory``
    (see :func:`xailab.models.load_model`), with its weights file if given.

    A model whose outputs do not match ``num_classes`` is refused with a ModelError, weights
    that do not fit with a CheckpointError.
    """
    from xailab.models import load_model

    return load_model(name, weights, num_classes=num_classes, in_channels=in_channels)


def model_normalization(model: nn.Module, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the model's weights expect (recorded by ``xailab.models``), if known."""
    from xailab.models import get_preprocessing

    prep = get_preprocessing(model)
    if prep is None or prep.channels != channels:
        return None
    return tuple(prep.mean), tuple(prep.std)


def checkpoint_file(run: Run, which: str = "best") -> Path:
    """``best``, ``last`` or an epoch number -> the weights file in ``run/checkpoints``."""
    ck = run.path / "checkpoints"
    epochs = epoch_weights(ck)
    if which == "best":
        p = ck / "best.safetensors"
        if p.is_file():
            return p
        which = "last"
    if which == "last":
        if not epochs:
            raise RunError(f"run {run.path} has no checkpoints (was it trained?)")
        return epochs[max(epochs)]
    try:
        e = int(which)
    except ValueError:
        raise RunError(f"checkpoint must be 'best', 'last' or an epoch number, got {which!r}") from None
    if e not in epochs:
        raise RunError(f"run {run.path} has no checkpoint for epoch {e} (has {sorted(epochs)})")
    return epochs[e]


def model_from_run(run: Run | str | os.PathLike[str], checkpoint: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained run's model (from its manifest) and load a checkpoint.

    Returns the model (eval mode) and the checkpoint's metadata (epoch, metrics).
    """
    r = run if isinstance(run, Run) else Run.open(run)
    m = r.manifest
    cfg, info = m.get("config") or {}, m.get("model") or {}
    name = info.get("name") or cfg.get("model")
    if not name or "num_outputs" not in info:
        raise RunError(f"run {r.path} does not say which model it trained (manifest 'model' section); "
                       "use --model and --weights instead")
    from xailab.models import load_model

    model = load_model(name, num_classes=int(info["num_outputs"]),
                       in_channels=int(info.get("in_channels") or (m.get("dataset") or {}).get("channels") or 3))
    meta = load_weights(checkpoint_file(r, checkpoint), model)
    return model.eval(), meta


def stratified_indices(labels: Any, n: int | None, seed: int) -> np.ndarray | None:
    """``n`` stratified indices of ``labels`` (sorted), or None for all."""
    from xailab.data import train_val_split

    y = np.asarray(labels)
    if n is None or n >= len(y):
        return None
    _, keep = train_val_split(y, val_fraction=n / len(y), seed=seed)
    return np.asarray(keep)
