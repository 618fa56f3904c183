"""One contract for every backdoor detector: what it found per class, as one small result type.

A detector looks at a model (and, for most, its training data) and answers per class: a
**score** (higher = more suspicious), the **threshold** at which the class is flagged (a
calibrated value, documented beside the detector), a **p-value** where the detector's statistic
has one (``nan`` otherwise), and the **suspected items** (the dataset's rows it thinks carry a
trigger; none for detectors that need no data). A model's score is its most suspicious class's
``score / threshold`` (:attr:`DetectorResult.model_score`): above 1 means flagged.

Detectors register with :func:`register_detector` and are called through :func:`run_detector`
with an :class:`AuditData` (the model, the data, the classes, and a cache of the penultimate
activations that several detectors share); the ensemble rule (:mod:`xailab.audit.ensemble`)
combines their findings.

    @register_detector("spectral", needs_data=True, summary="outlier score of the top singular direction")
    def spectral_signatures(data: AuditData, **params) -> DetectorResult: ...

    result = run_detector("spectral", AuditData(model, train_set))
    result.flagged, result.table()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError


@dataclass(frozen=True)
class ClassFinding:
    """One detector's finding on one class.

    ``indices``: the dataset's items analysed (empty when the detector uses no data of the
    class); ``suspected``: bool ``[len(indices)]``, the items thought to carry a trigger (all
    False unless flagged); ``region``: (top, left, bottom, right), inclusive, where the detector
    locates the trigger, or None; ``extra``: detector-specific values (numbers or arrays).
    """

    label: int
    name: str
    score: float
    threshold: float
    flagged: bool
    p_value: float = math.nan
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    suspected: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    region: tuple[int, int, int, int] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.suspected) != len(self.indices):
            raise ValueError(f"suspected has {len(self.suspected)} entries for {len(self.indices)} items")

    @property
    def suspected_items(self) -> np.ndarray:
        """The dataset rows of the suspected items."""
        return np.asarray(self.indices)[np.asarray(self.suspected, dtype=bool)]


@dataclass(frozen=True)
class DetectorResult:
    """What one detector found: a :class:`ClassFinding` per class analysed, its settings, its seconds.

    ``evidence`` says in one line what the score measures (the CLI and report print it), and
    ``needs_data`` whether it looked at the training data (False: clean images or none).
    """

    detector: str
    findings: tuple[ClassFinding, ...]
    evidence: str
    needs_data: bool = True
    params: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def flagged(self) -> list[int]:
        return [f.label for f in self.findings if f.flagged]

    @property
    def model_score(self) -> float:
        """The most suspicious class's ``score / threshold`` (> 1: flagged); nan without classes."""
        vals = [f.score / f.threshold if f.threshold > 0 else f.score for f in self.findings if np.isfinite(f.score)]
        return float(max(vals)) if vals else math.nan

    def finding(self, label: int) -> ClassFinding:
        for f in self.findings:
            if f.label == label:
                return f
        raise InputError(f"{self.detector} did not analyse class {label}")

    def table(self) -> pd.DataFrame:
        """One row per class: detector, class, name, score, threshold, p_value, flagged, n, suspected_n."""
        return pd.DataFrame([{
            "detector": self.detector, "class": f.label, "name": f.name, "score": f.score,
            "threshold": f.threshold, "p_value": f.p_value, "flagged": f.flagged, "n": len(f.indices),
            "suspected_n": int(np.asarray(f.suspected, dtype=bool).sum()),
        } for f in self.findings])


class AuditData:
    """What detectors look at: the model, the data, the classes to analyse and their items.

    ``dataset`` holds items as the model takes them (normalised), an ``ImageDataset`` or any
    dataset of ``(x, y)``; ``None`` for detectors that need no data. Items of a class are a seeded
    sample of at most ``max_per_class``. Inputs and penultimate activations are computed once per
    class and cached (:meth:`inputs`, :meth:`activations`), so detectors share them.
    """

    def __init__(self, model: nn.Module, dataset: Any = None, *, classes: Sequence[Any] | None = None,
                 class_names: Sequence[str] | None = None, max_per_class: int | None = 500,
                 layer: str | None = "auto", batch_size: int = 128, seed: int = 0) -> None:
        from xailab.audit.backdoor import resolve_class
        from xailab.audit.detection import class_indices

        self.model, self.dataset = model, dataset
        self.layer, self.batch_size, self.seed, self.max_per_class = layer, batch_size, seed, max_per_class
        if dataset is not None:
            from xailab.train.batches import classes_of, labels_of

            labels = torch.as_tensor(labels_of(dataset))
            self.names = [str(c) for c in classes_of(dataset, labels.numpy())]
        elif class_names is not None:
            labels, self.names = None, [str(c) for c in class_names]
        else:
            raise InputError("give the class names when no dataset is given")
        self.labels = [resolve_class(c, self.names) for c in classes] if classes is not None else list(
            range(len(self.names)))
        self.indices: dict[int, np.ndarray] = (
            {c: class_indices(labels, c, max_per_class, seed) for c in self.labels} if labels is not None
            else {c: np.zeros(0, dtype=np.int64) for c in self.labels})
        self._inputs: dict[int, Tensor] = {}
        self._acts: dict[int, np.ndarray] = {}

    def inputs(self, label: int) -> Tensor:
        """The items of class ``label`` as the model takes them."""
        from xailab.audit.detection import dataset_items

        if self.dataset is None:
            raise InputError("this detector needs the training data; none was given")
        if label not in self._inputs:
            self._inputs[label] = dataset_items(self.dataset, self.indices[label])
        return self._inputs[label]

    def activations(self, label: int) -> np.ndarray:
        """``[n, d]`` float64 penultimate activations of class ``label``'s items (see ``detection.penultimate``)."""
        from xailab.audit.detection import penultimate

        if label not in self._acts:
            x = self.inputs(label)
            self._acts[label] = penultimate(self.model, x, layer=self.layer,
                                            batch_size=self.batch_size).double().numpy()
        return self._acts[label]


Detector = Callable[..., DetectorResult]


@dataclass(frozen=True)
class DetectorInfo:
    """A registered detector: its function, whether it needs the training data, one line on it."""

    name: str
    fn: Detector
    needs_data: bool
    summary: str


DETECTORS: dict[str, DetectorInfo] = {}


def register_detector(name: str, *, needs_data: bool, summary: str) -> Callable[[Detector], Detector]:
    """Register ``fn(data: AuditData, **params) -> DetectorResult`` under ``name``."""

    def wrap(fn: Detector) -> Detector:
        DETECTORS[name] = DetectorInfo(name, fn, needs_data, summary)
        return fn

    return wrap


def available_detectors() -> list[str]:
    _load_builtin()
    return sorted(DETECTORS)


def detector_info(name: str) -> DetectorInfo:
    _load_builtin()
    if name not in DETECTORS:
        raise InputError(f"unknown detector {name!r}; available: {', '.join(sorted(DETECTORS))}")
    return DETECTORS[name]


def run_detector(name: str, data: AuditData, **params: Any) -> DetectorResult:
    """Run the detector ``name`` on ``data``; refuses one that needs data when none is given."""
    info = detector_info(name)
    if info.needs_data and data.dataset is None:
        raise InputError(f"the {name} detector needs the training data (--data); it has none")
    return info.fn(data, **params)


def _load_builtin() -> None:
    """Import the modules whose detectors register themselves (lazily: no import cycle)."""
    import importlib

    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)


BUILTIN_MODULES: list[str] = ["xailab.audit.spectral", "xailab.audit.scan", "xailab.audit.classic", "xailab.audit.knn",
                              "xailab.audit.cleanse_detector"]
