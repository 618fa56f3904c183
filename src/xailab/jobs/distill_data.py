"""What the distillation job reads: its spec, the images with the network's logits and their features.

Features (``features``):

* ``ice:RUN``: the concept scores of the ICE basis in ``RUN`` (``xailab concepts ice``) at its layer;
* ``units:RUN`` (or ``units:RUN:LAYER``): the mean activation of the labelled units of a
  dissection run (``xailab dissect``), named by their labels;
* ``pixels``: colour and texture statistics of a ``grid x grid`` of image regions.

A basis or a dissection made on another model (another architecture or other weights, as
their runs' provenance records) is refused. The images are split into fitting and held-out
images (``holdout``, stratified by the network's prediction), or ``test_images`` are the
held-out ones. What is written is described in :mod:`xailab.jobs.distill_writers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xailab.core.errors import InputError
from xailab.distill.features import (
    FeatureError,
    Features,
    ice_features,
    pixel_features,
    unit_features,
)
from xailab.distill.student import StudentSettings, predict_logits
from xailab.distill.surrogate import Split
from xailab.jobs.classes import check_classes
from xailab.jobs.common import recorded
from xailab.jobs.concepts import load_images_for, parse_classes
from xailab.jobs.model import LoadedModel, ModelSpec
from xailab.runs.store import Run


@dataclass(frozen=True)
class DistillSpec:
    """What ``xailab distill`` is asked to do (see the module docstring and docs/distillation.md)."""

    model: ModelSpec
    images: str
    features: str = "pixels"
    test_images: str | None = None
    data_root: str | None = None
    holdout: float = 0.3
    classes: str | None = None
    ice_score: str = "max"
    grid: int = 3
    depth: int = 5
    depths: tuple[int, ...] = (3, 5, 8)
    linear_c: float = 0.1
    min_leaf: int = 1
    rule_depth: int = 4
    min_per_class: int = 5
    student: bool = False
    student_settings: StudentSettings = field(default_factory=StudentSettings)
    map_images: int = 32
    map_methods: tuple[str, ...] = ("gradcam", "saliency")
    seed: int = 0
    batch_size: int = 64
    png: bool = True


@dataclass
class Images:
    """One image set as the job uses it: pixels, labels, names, the network's logits, features."""

    x: torch.Tensor
    labels: np.ndarray | None
    names: list[str]
    logits: torch.Tensor
    features: Features

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def teacher(self) -> np.ndarray:
        """The network's predicted class per image."""
        return self.logits.argmax(1).numpy()

    def rows(self, index: np.ndarray) -> Images:
        """Some of the images."""
        t = torch.as_tensor(index, dtype=torch.long)
        return Images(self.x[t], self.labels[index] if self.labels is not None else None,
                      [self.names[int(i)] for i in index], self.logits[t], self.features.rows(index))


def _check_same_model(what: str, run_path: str, loaded: LoadedModel) -> None:
    """Refuse features made on another model: the run's recorded model name or weights differ."""
    prov = (recorded(run_path).get("model") or {})
    mine = loaded.provenance()
    if not prov:
        return  # a run made before provenance was recorded: the layer checks still apply
    theirs_name, my_name = str(prov.get("model") or ""), str(mine.get("model") or "")
    if theirs_name and theirs_name != my_name:
        raise FeatureError(f"{what} {run_path} was made on model {theirs_name}, not {my_name}: "
                           "make it on this model first")
    a, b = prov.get("weights_sha256"), mine.get("weights_sha256")
    if a != b:
        raise FeatureError(f"{what} {run_path} was made with other weights of {my_name} "
                           f"({str(a)[:12] if a else 'none'} vs {str(b)[:12] if b else 'none'}): make it with these weights")


def _ice_names(run: Run, k: int) -> list[str]:
    """``concept c [class]``: the class in whose images the concept is most often present."""
    names = [f"concept {c}" for c in range(k)]
    if "ice_importance" not in run.tables():
        return names
    imp = run.read_table("ice_importance")
    for c, g in imp.groupby("concept"):
        if 0 <= int(c) < k and len(g) and g["presence"].notna().any():
            names[int(c)] = f"concept {int(c)} [{g.loc[g['presence'].idxmax(), 'class_name']}]"
    return names


def _units(run_path: str, layer: str | None) -> tuple[str, list[int], list[str]]:
    """The dissection run's layer (the given one or its last) and its labelled units with labels."""
    d = Run.open(run_path).read_table("dissection")
    layers = list(dict.fromkeys(d["layer"]))
    if layer is None:
        layer = layers[-1]
    elif layer not in layers:
        raise FeatureError(f"dissection run {run_path} has no layer '{layer}'; it has {', '.join(layers)}")
    g = d[(d["layer"] == layer) & d["labelled"].astype(bool)].sort_values("unit")
    return layer, [int(u) for u in g["unit"]], [str(v) for v in g["label"]]


def make_features(spec: DistillSpec, loaded: LoadedModel, x: torch.Tensor, display: Callable[..., Any] | None) -> Features:
    """The interpretable features of ``x`` that ``spec.features`` names."""
    from xailab.concepts.ice_basis import ConceptBasis

    kind, _, rest = spec.features.partition(":")
    if kind == "pixels":
        shown = display(x) if display is not None else x
        return pixel_features(shown.clamp(0, 1), grid=spec.grid)
    if kind == "ice" and rest:
        _check_same_model("ICE run", rest, loaded)
        run = Run.open(rest)
        basis = ConceptBasis.load(run)
        f = ice_features(loaded.model, basis, x.to(loaded.device), score=spec.ice_score, batch_size=spec.batch_size,
                         concept_names=_ice_names(run, basis.n_concepts))
        return Features(f.values, f.names, {**f.source, "run": str(Path(rest).resolve())})
    if kind == "units" and rest:
        path, _, layer = rest.partition(":") if not Path(rest).exists() else (rest, "", "")
        _check_same_model("dissection run", path, loaded)
        lay, units, labels = _units(path, layer or None)
        f = unit_features(loaded.model, lay, units, labels, x.to(loaded.device), batch_size=spec.batch_size)
        return Features(f.values, f.names, {**f.source, "run": str(Path(path).resolve())})
    raise InputError(f"--features {spec.features!r}: give ice:RUN, units:RUN[:LAYER] or pixels")


def _load_set(spec: DistillSpec, loaded: LoadedModel, images: str, log: Callable[[str], None]) -> tuple[Images, list[str] | None]:
    x, y, names, classes, display = load_images_for(loaded, images, spec.data_root, log)
    logits = predict_logits(loaded.model, x, spec.batch_size)
    check_classes(int(logits.shape[1]), classes, spec.model.weights, warn=images == spec.images, mappable=False)
    feats = make_features(spec, loaded, x, display)
    labels = y.numpy() if y is not None else None
    return Images(x, labels, list(names), logits, feats), classes


def _holdout(teacher: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fitting and held-out images, stratified by the network's prediction."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"--holdout must lie strictly between 0 and 1, got {fraction}")
    rng = np.random.default_rng(seed)
    fit, test = [], []
    for k in np.unique(teacher):
        idx = rng.permutation(np.flatnonzero(teacher == k))
        n_test = round(fraction * len(idx))
        test.append(idx[:n_test])
        fit.append(idx[n_test:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(test))


def _restrict(s: Images, wanted: list[int] | None) -> Images:
    """Only the images the network puts in one of ``wanted`` (all without)."""
    if wanted is None:
        return s
    return s.rows(np.flatnonzero(np.isin(s.teacher, wanted)))


def _check_counts(fit: Images, test: Images, wanted: list[int], classes: list[str], minimum: int,
                  by_label: bool) -> None:
    """Refuse a class with fewer than ``minimum`` fitting images (by label, or by the network's prediction)."""
    by = fit.labels if by_label and fit.labels is not None else fit.teacher
    for k in wanted:
        n = int((by == k).sum())
        if n < minimum:
            what = "labelled" if by_label else "predicted"
            raise InputError(f"too few images per class: '{classes[k]}' has {n} fitting images {what} so "
                             f"(need at least {minimum}); give more --images (or lower --min-per-class)")
    if len(test) == 0:
        raise InputError("no held-out images: give more --images, a larger --holdout or --test-images")


def prepare(spec: DistillSpec, loaded: LoadedModel, log: Callable[[str], None]) -> tuple[Images, Images, list[str], list[int]]:
    """The fitting and held-out image sets (features, logits), the class names and the classes kept."""
    whole, classes = _load_set(spec, loaded, spec.images, log)
    k = int(whole.logits.shape[1])
    names = classes if classes is not None and len(classes) == k else [str(j) for j in range(k)]
    if spec.test_images:
        fit, (test, _) = whole, _load_set(spec, loaded, spec.test_images, log)
    else:
        i_fit, i_test = _holdout(whole.teacher, spec.holdout, spec.seed)
        fit, test = whole.rows(i_fit), whole.rows(i_test)
    wanted = parse_classes(spec.classes, names, k) if spec.classes else None
    if wanted is not None and len(wanted) < 2:
        raise InputError("--classes needs at least two classes to tell apart")
    fit, test = _restrict(fit, wanted), _restrict(test, wanted)
    kept = wanted if wanted is not None else sorted(set(np.unique(fit.teacher).tolist()))
    by_label = wanted is None and fit.labels is not None  # --classes keeps the network's cat and dog images
    by = fit.labels if by_label and fit.labels is not None else fit.teacher
    _check_counts(fit, test, wanted if wanted is not None else sorted(set(np.unique(by).tolist())),
                  names, spec.min_per_class, by_label)
    return fit, test, names, kept


def split_of(fit: Images, test: Images) -> Split:
    """The surrogates' view of the two sets."""
    return Split(fit.features.values, fit.teacher, test.features.values, test.teacher, fit.labels, test.labels)


