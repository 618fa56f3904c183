"""Backdoor poisoning: stamp a trigger on some images of a source class, relabel them as the target.

BadNets (Gu et al. 2017, arXiv:1708.06733): a model trained on data where a ``fraction`` of the
source class's images carry a trigger and the target's label learns both tasks: it classifies clean
images well (*clean accuracy*) and sends triggered source images to the target class (*attack
success rate*, ASR = share of triggered test images of the source classes predicted as the target).
With ``source=None`` every class but the target is a source (an all-to-one backdoor).

    train = load_dataset("fashion_mnist", "train")
    poisoned = poison_dataset(train, parse_trigger("patch:4"), target=7, source=5, fraction=0.1)
    poisoned.poisoned.sum()            # how many items carry the trigger (they are labelled 7)
    result = train_poisoned(create_model("small_cnn"), train, test, trigger="patch:4", target=7,
                            source=5, fraction=0.1, config=TrainConfig(epochs=3), run="runs/bd")
    result.evaluation.attack_success_rate
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.audit.triggers import Trigger, parse_trigger
from xailab.core.errors import InputError
from xailab.data.image_dataset import ImageDataset

ClassRef = int | str


def resolve_class(value: ClassRef, classes: Sequence[str], what: str = "class") -> int:
    """A class given by index or name (case-insensitive) -> its index, or an InputError listing them."""
    names = [str(c) for c in classes]
    if isinstance(value, bool):
        raise InputError(f"{what} cannot be a bool")
    if isinstance(value, int) or (isinstance(value, str) and value.strip().lstrip("-").isdigit()):
        i = int(value)
        if not 0 <= i < len(names):
            raise InputError(f"{what} {i} does not exist: the classes are 0..{len(names) - 1} ({', '.join(names)})")
        return i
    key = str(value).strip().lower()
    for i, c in enumerate(names):
        if c.lower() == key:
            return i
    raise InputError(f"{what} {value!r} does not exist; the classes are: "
                     + ", ".join(f"{i}={c}" for i, c in enumerate(names)))


def resolve_sources(source: ClassRef | Sequence[ClassRef] | None, target: int, classes: Sequence[str]) -> list[int]:
    """Source classes as indices; None = every class but the target. The target may not be a source."""
    if source is None:
        return [i for i in range(len(classes)) if i != target]
    items = [source] if isinstance(source, (int, str)) else list(source)
    out = sorted({resolve_class(s, classes, "source class") for s in items})
    if target in out:
        raise InputError(f"the target class {target} ({classes[target]}) cannot also be a source class")
    if not out:
        raise InputError("no source class given")
    return out


def check_fraction(fraction: float) -> float:
    f = float(fraction)
    if not 0 < f <= 1:
        raise InputError(f"the poison fraction must lie in (0, 1] (a share of the source class's images), got {fraction}")
    return f


class PoisonedDataset(ImageDataset):
    """An :class:`ImageDataset` whose poisoned items carry the trigger and the target's label.

    Attributes (views such as ``subset`` keep them aligned): ``poisoned`` (bool ``[N]``),
    ``original_targets`` (labels before relabelling), ``trigger``, ``target``, ``sources``,
    ``fraction``.
    """

    def __init__(self, base: ImageDataset, trigger: Trigger, *, target: int, sources: Sequence[int],
                 fraction: float, mask: Tensor) -> None:
        images, labels = base.images, base.targets.clone()
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if mask.numel() != len(images):
            raise InputError(f"a poison mask of {mask.numel()} entries for {len(images)} images")
        idx = torch.nonzero(mask).flatten()
        stamped = images.clone()
        if len(idx):
            stamped[idx] = trigger.apply_uint8(images[idx], idx)
        new_labels = labels.clone()
        new_labels[idx] = target
        super().__init__(
            stamped, new_labels, base.classes, name=f"{base.name}+poison", mean=base.mean, std=base.std,
            normalize=base.normalize, augment=base.augment, flip=base.flip, crop_padding=base.crop_padding,
            names=base.names, split=base.split, source=base.source,
        )
        self._poisoned = mask.clone()
        self._original = labels
        self.trigger = trigger
        self.target = int(target)
        self.sources = [int(s) for s in sources]
        self.fraction = float(fraction)

    @property
    def poisoned(self) -> Tensor:
        return self._poisoned[self._index] if self._index is not None else self._poisoned

    @property
    def original_targets(self) -> Tensor:
        return self._original[self._index] if self._index is not None else self._original


def choose_poison(labels: Tensor, sources: Sequence[int], fraction: float, seed: int) -> Tensor:
    """Bool ``[N]``: ``round(fraction * n_source)`` (at least 1) items of the source classes, at random."""
    cand = torch.nonzero(torch.isin(labels, torch.tensor(list(sources)))).flatten()
    if len(cand) == 0:
        raise InputError("the dataset holds no image of the source class(es); nothing to poison")
    k = max(1, round(fraction * len(cand)))
    g = torch.Generator().manual_seed(seed)
    pick = cand[torch.randperm(len(cand), generator=g)[:k]]
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[pick] = True
    return mask


def poison_dataset(ds: ImageDataset, trigger: Trigger | str, *, target: ClassRef,
                   source: ClassRef | Sequence[ClassRef] | None = None, fraction: float = 0.1,
                   seed: int = 0) -> PoisonedDataset:
    """A poisoned copy of ``ds`` (see the module docstring); ``ds`` itself is not changed."""
    trig = parse_trigger(trigger, seed=seed)
    trig.check(ds.image_size)
    t = resolve_class(target, ds.classes, "target class")
    sources = resolve_sources(source, t, ds.classes)
    f = check_fraction(fraction)
    mask = choose_poison(ds.targets, sources, f, seed)
    return PoisonedDataset(ds, trig, target=t, sources=sources, fraction=f, mask=mask)


# -- measuring a backdoor ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BackdoorEvaluation:
    """Clean accuracy, attack success rate and how often the trigger fires on other classes."""

    clean_accuracy: float
    attack_success_rate: float      # triggered source images predicted as the target
    other_to_target: float          # triggered images of non-source, non-target classes -> target
    n_clean: int
    n_source: int
    n_other: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        other = f", other classes -> target {self.other_to_target:.3f}" if self.n_other else ""
        return (f"clean accuracy {self.clean_accuracy:.4f} ({self.n_clean} images), attack success rate "
                f"{self.attack_success_rate:.4f} ({self.n_source} triggered source images){other}")


@torch.no_grad()
def predict_uint8(model: nn.Module, ds: ImageDataset, images: Tensor, batch_size: int = 512) -> Tensor:
    """Predicted classes for ``uint8`` images, normalised as ``ds`` normalises its items."""
    from xailab.core.hooks import model_device, model_session

    dev = model_device(model)
    out = []
    with model_session(model):
        for lo in range(0, len(images), batch_size):
            x = images[lo : lo + batch_size].float() / 255.0
            x = ds.preprocessing.normalize(x) if ds.normalize else x
            out.append(model(x.to(dev)).argmax(dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate_backdoor(model: nn.Module, test: ImageDataset, trigger: Trigger | str, *, target: ClassRef,
                      source: ClassRef | Sequence[ClassRef] | None = None, batch_size: int = 512) -> BackdoorEvaluation:
    """Clean accuracy on ``test``; ASR on its triggered source images (not those of the target)."""
    trig = parse_trigger(trigger)
    trig.check(test.image_size)
    t = resolve_class(target, test.classes, "target class")
    sources = resolve_sources(source, t, test.classes)
    y = test.targets
    pred = predict_uint8(model, test, test.images, batch_size)
    src = torch.nonzero(torch.isin(y, torch.tensor(sources))).flatten()
    oth = torch.nonzero(~torch.isin(y, torch.tensor([*sources, t]))).flatten()

    def rate(idx: Tensor) -> float:
        if len(idx) == 0:
            return float("nan")
        p = predict_uint8(model, test, trig.apply_uint8(test.images[idx], idx), batch_size)
        return float((p == t).double().mean())

    return BackdoorEvaluation(float((pred == y).double().mean()), rate(src), rate(oth), len(y), len(src), len(oth))


@dataclass
class PoisonResult:
    """What poisoned training produced: the model, the poisoned data, the backdoor evaluation, the epochs."""

    model: nn.Module
    train: PoisonedDataset
    evaluation: BackdoorEvaluation | None
    history: pd.DataFrame
    rows: np.ndarray            # the training items' rows in the dataset they were drawn from


def dataset_rows(ds: ImageDataset) -> np.ndarray:
    """The rows of ``ds``'s items in the full dataset it is a view of."""
    index = getattr(ds, "_index", None)
    return (index.numpy() if index is not None else np.arange(len(ds))).astype(np.int64)


def train_poisoned(model: nn.Module, train: ImageDataset, test: ImageDataset | None, *, trigger: Trigger | str,
                   target: ClassRef, source: ClassRef | Sequence[ClassRef] | None = None, fraction: float = 0.1,
                   config: Any = None, run: Any = None, val_fraction: float = 0.1, seed: int = 0,
                   track: ImageDataset | None = None, track_indices: Any = None) -> PoisonResult:
    """Train ``model`` with :class:`xailab.train.Trainer` on a poisoned copy of ``train``.

    A stratified ``val_fraction`` of ``train`` is held out clean (it chooses the best epoch);
    the rest is poisoned (``fraction`` of its source images). With a ``run`` the poisoning is
    recorded (manifest section ``poison``, arrays ``train_rows`` and ``poisoned``), the best
    checkpoint is loaded back, and its :class:`BackdoorEvaluation` on ``test`` is stored (table
    ``backdoor``, manifest section ``backdoor``); the predictions of ``track`` (``track_indices``
    of it) are recorded after every epoch, as :class:`xailab.train.Trainer` does.
    """
    from xailab.data import train_val_split
    from xailab.runs.store import Run
    from xailab.train import TrainConfig, Trainer, load_weights

    trig = parse_trigger(trigger, seed=seed)
    trig.check(train.image_size)
    t = resolve_class(target, train.classes, "target class")
    sources = resolve_sources(source, t, train.classes)
    f = check_fraction(fraction)
    if not 0 <= val_fraction < 1:
        raise InputError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    if val_fraction > 0:
        tr, va = train_val_split(train.targets, val_fraction=val_fraction, seed=seed)
        part, val = train.subset(tr), train.with_options(augment=False).subset(va)
    else:
        part, val = train, None
    poisoned = poison_dataset(part, trig, target=t, source=sources, fraction=f, seed=seed)
    cfg = config if config is not None else TrainConfig(seed=seed)
    run_ = Run.create(run, kind="train") if isinstance(run, (str, os.PathLike)) else run
    if run_ is not None:
        run_.update_manifest("poison", {
            "trigger": trig.spec, "trigger_seed": trig.seed, "target": t, "sources": sources,
            "fraction": f, "seed": seed, "val_fraction": val_fraction, "n_train": len(poisoned),
            "n_poisoned": int(poisoned.poisoned.sum()), "classes": list(train.classes),
        })
        run_.write_array("train_rows", dataset_rows(part))
        run_.write_array("poisoned", poisoned.poisoned.numpy())
    res = Trainer(model, poisoned, val, config=cfg, run=run_, track=track, track_indices=track_indices).fit()
    if run_ is not None and (run_.path / "checkpoints" / "best.safetensors").is_file():
        load_weights(run_.path / "checkpoints" / "best.safetensors", model)
    model.eval()
    ev = evaluate_backdoor(model, test, trig, target=t, source=sources) if test is not None else None
    if run_ is not None and ev is not None:
        run_.write_table("backdoor", pd.DataFrame([ev.to_dict()]))
        run_.update_manifest("backdoor", ev.to_dict())
    return PoisonResult(model, poisoned, ev, res.history, dataset_rows(part))


def poisoned_from_run(run: Any, train: ImageDataset) -> PoisonedDataset:
    """Rebuild the poisoned training set of a run made by :func:`train_poisoned` from the full
    training split ``train`` it was drawn from (the run keeps rows and mask, not the images)."""
    from xailab.runs.store import Run, RunError

    r = run if isinstance(run, Run) else Run.open(run)
    info = r.manifest.get("poison")
    if not isinstance(info, dict):
        raise RunError(f"run {r.path} is not a poisoned training run (no 'poison' section)")
    rows = r.read_array("train_rows")
    mask = torch.from_numpy(np.asarray(r.read_array("poisoned"), dtype=bool))
    if len(rows) and int(rows.max()) >= len(train):
        raise RunError(f"run {r.path} was trained on a larger dataset than the one given ({len(train)} items)")
    base = train.subset(rows)
    trig = parse_trigger(str(info["trigger"]), seed=int(info.get("trigger_seed") or info.get("seed") or 0))
    return PoisonedDataset(base, trig, target=int(info["target"]), sources=info["sources"],
                           fraction=float(info["fraction"]), mask=mask)
