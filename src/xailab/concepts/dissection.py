"""Network dissection: label every unit of a layer with the concept its top activations cover.

Bau, Zhou, Khosla, Oliva, Torralba (2017), "Network Dissection: Quantifying Interpretability
of Deep Visual Representations". For unit ``k`` of a conv layer with activation maps ``A_k(x)``:

* ``T_k`` is the top-quantile threshold over the whole probe set: ``P(A_k > T_k) = q``
  (``q = 0.005`` by default), estimated by :class:`QuantileSketch` without keeping the maps;
* ``M_k(x) = S(A_k(x)) > T_k`` with ``S`` bilinear upsampling to the concept-mask resolution;
* ``IoU(k, c) = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|``, sums over the images ``x``
  on which the category of concept ``c`` is annotated;
* the unit's label is ``argmax_c IoU(k, c)``; it counts as a detector when IoU >= 0.04.

Two passes stream the image set with one batch alive at a time (:mod:`.dissection_passes`):
pass 1 fills the quantile sketch (:mod:`.quantile_sketch`) and the unit's top images, pass 2
accumulates intersections and unions.
:func:`dissect_classes` is the class-level variant for any labelled image set (one pass).
Concept sources (colours from pixels, Broden masks) are in :mod:`.dissection_concepts`; tables,
figures and the run store in :mod:`.dissection_report`.

    res = dissect(model, images, ["layer2", "layer3"], ColourConcepts(prep.denormalize))
    res.table.head()   # layer, unit, label, category, score, labelled, runner_up, threshold
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.concepts.activations import ImageSource, batch_indices, labels_of, num_images, take
from xailab.concepts.dissection_passes import (
    ConceptMasks,
    ConceptSource,
    UnitStats,
    first_pass,
    iou_pass,
    resolve_layers,
    sketch_pass,
    stream_layers,
)
from xailab.concepts.quantile_sketch import QuantileSketch
from xailab.core.errors import InputError

__all__ = [
    "DEFAULT_IOU_THRESHOLD", "DEFAULT_QUANTILE", "ConceptMasks", "ConceptSource", "Dissection",
    "QuantileSketch", "UnitStats", "class_selectivity", "dissect", "dissect_classes", "first_pass",
    "iou_pass", "resolve_layers", "sketch_pass", "stream_layers",
]

DEFAULT_QUANTILE = 0.005
DEFAULT_IOU_THRESHOLD = 0.04
#: class selectivity from which a unit is named after its class: 0.3 means the unit's mean response
#: to its class is almost twice its mean response to the other classes ((mu - mu') / (mu + mu'))
DEFAULT_SELECTIVITY_THRESHOLD = 0.3


# -- result ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dissection:
    """Result of :func:`dissect` or :func:`dissect_classes`.

    ``table``: one row per unit with ``layer, unit, label, category, score, labelled,
    runner_up, threshold`` (score = IoU, or the class-selectivity index for ``kind="classes"``;
    ``threshold`` = the unit's activation threshold ``T_k``). ``scores[layer]`` is the full
    ``[units, concepts]`` matrix (IoU, or mean max-activation per class); ``top_images[layer]``
    the ``[units, k]`` indices of the images that activate each unit most (by spatial max).
    """

    kind: str
    table: pd.DataFrame
    concepts: list[str]
    scores: dict[str, Tensor]
    thresholds: dict[str, Tensor]
    top_images: dict[str, Tensor]
    top_values: dict[str, Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> pd.DataFrame:
        """Per layer: units, labelled units, share labelled, distinct labels, top labels."""
        rows = []
        for layer, g in self.table.groupby("layer", sort=False):
            lab = g[g["labelled"]]
            counts = lab["label"].value_counts()
            rows.append({
                "layer": layer, "units": len(g), "labelled": len(lab),
                "share": len(lab) / max(len(g), 1), "distinct": int(counts.size),
                "top_labels": ", ".join(f"{k} ({v})" for k, v in counts.head(5).items()),
            })
        return pd.DataFrame(rows)


def _runner_up(scores: Tensor, names: list[str], order: Tensor, n: int, fmt: str) -> list[str]:
    out = []
    for u in range(scores.shape[0]):
        parts = [f"{names[int(c)]} ({float(scores[u, c]):{fmt}})" for c in order[u, 1 : 1 + n]]
        out.append("; ".join(parts))
    return out


def _table(
    layer: str, scores: Tensor, unit_score: Tensor, names: list[str], categories: list[str],
    threshold: float, thresholds: Tensor, runner_ups: int,
) -> pd.DataFrame:
    order = scores.argsort(1, descending=True)
    best = order[:, 0]
    return pd.DataFrame({
        "layer": layer,
        "unit": np.arange(scores.shape[0]),
        "label": [names[int(c)] for c in best],
        "category": [categories[int(c)] for c in best],
        "score": unit_score.double().numpy(),
        "labelled": (unit_score >= threshold).numpy(),
        "runner_up": _runner_up(scores, names, order, runner_ups, ".3f"),
        "threshold": thresholds.double().numpy(),
    })


# -- concept dissection ---------------------------------------------------------------------------
def dissect(
    model: nn.Module,
    images: ImageSource,
    layers: str | Sequence[str],
    concepts: ConceptSource,
    *,
    quantile: float = DEFAULT_QUANTILE,
    threshold: float = DEFAULT_IOU_THRESHOLD,
    batch_size: int = 64,
    top_images: int = 8,
    bins: int = 2048,
    runner_ups: int = 2,
    max_elements: int = 2**24,
    exact_range: bool = False,
    passes: Any = None,
) -> Dissection:
    """Network dissection of ``layers`` against pixel-level ``concepts`` (Bau et al. 2017).

    Args:
        model: the classifier (run in eval mode; flags restored afterwards).
        images: a tensor ``[N, C, H, W]`` prepared for the model, or a Dataset.
        layers: names (list or ``"layer1,layer2"``) of layers that output ``[N, C, h, w]``.
        concepts: a :class:`ConceptSource` (``ColourConcepts``, ``BrodenDataset``, your own).
        quantile: ``q`` of the unit threshold ``T_k`` (value exceeded by ``q`` of activations).
        threshold: IoU from which a unit counts as a detector of its best concept.
        batch_size: images per forward pass.
        top_images: images kept per unit (by spatial max activation) for galleries.
        bins: bins of the per-unit quantile histogram (memory ``units x bins``).
        max_elements: upsampled activations held at once in the IoU pass (memory bound).
        exact_range: one more pass first, for each unit's min and max: the sketch bins that
            range (error <= one bin of it), and the result is the one the Ray backend gives.
        passes: where the passes run (None: here; :mod:`xailab.distributed.dissection` gives
            Ray's, an object with ``first_pass`` and ``iou_pass`` like :func:`first_pass`).

        res = dissect(model, x, "layer3", ColourConcepts(prep.denormalize))
    """
    t0 = time.perf_counter()
    modules = resolve_layers(model, layers)
    K = len(concepts.names)
    if K == 0:
        raise InputError("the concept set has no concepts")
    if passes is None:
        state = first_pass(model, modules, images, batch_size, top_images, bins, exact_range=exact_range)
    else:
        state = passes.first_pass(model, modules, images, batch_size, top_images, bins)
    thresholds = {name: s.sketch.upper(quantile).float() for name, s in state.items()}
    run_iou = iou_pass if passes is None else passes.iou_pass
    inter, area_a, area_c = run_iou(model, modules, images, concepts, thresholds, batch_size, max_elements)
    scores, table = _iou_tables(modules, inter, area_a, area_c, concepts, thresholds, threshold, runner_ups)
    return Dissection(
        kind="concepts", table=table, concepts=list(concepts.names),
        scores=scores, thresholds={k: v.cpu() for k, v in thresholds.items()},
        top_images={k: s.top_i.cpu() for k, s in state.items()},
        top_values={k: s.top_v.cpu() for k, s in state.items()},
        params={"quantile": quantile, "threshold": threshold, "bins": bins, "images": num_images(images),
                "layers": [n for n, _ in modules], "concept_source": type(concepts).__name__,
                **_range_param(exact_range, passes)},
        seconds=time.perf_counter() - t0,
    )


def _iou_tables(modules: list[tuple[str, nn.Module]], inter: dict[str, Tensor], area_a: dict[str, Tensor],
                area_c: Tensor, concepts: ConceptSource, thresholds: dict[str, Tensor], threshold: float,
                runner_ups: int) -> tuple[dict[str, Tensor], pd.DataFrame]:
    """Per layer the IoU matrix ``[units, K]`` from the IoU pass's sums, and the units' table."""
    K = len(concepts.names)
    frames, scores = [], {}
    for name, _ in modules:
        i = inter[name][:, :K]
        union = area_a[name] + area_c[None] - i
        iou = torch.where(union > 0, i / union.clamp_min(1e-12), torch.zeros_like(i)).float().cpu()
        scores[name] = iou
        frames.append(_table(name, iou, iou.max(1).values, concepts.names, concepts.categories,
                             threshold, thresholds[name].cpu(), runner_ups))
    return scores, pd.concat(frames, ignore_index=True)


def _range_param(exact_range: bool, passes: Any) -> dict[str, Any]:
    if passes is not None:
        return {"exact_range": True, "backend": getattr(passes, "name", type(passes).__name__)}
    return {"exact_range": True} if exact_range else {}


# -- class-level dissection -----------------------------------------------------------------------
def class_selectivity(class_means: Tensor) -> tuple[Tensor, Tensor]:
    """``(best class [units], selectivity [units])`` of per-class mean activations ``[units, K]``.

    Selectivity index (Morcos et al. 2018, "On the importance of single directions for
    generalization"): ``(mu_max - mu_rest) / (mu_max + mu_rest)`` with ``mu_max`` the highest
    class mean and ``mu_rest`` the mean of the other classes' means; 0 = no preference,
    1 = fires for one class only. Meant for non-negative (post-ReLU) activations; negative
    means are clamped to 0.
    """
    m = class_means.double().clamp_min(0)
    best = m.argmax(1)
    top = m.gather(1, best[:, None]).squeeze(1)
    k = m.shape[1]
    rest = (m.sum(1) - top) / max(k - 1, 1)
    sel = torch.where(top + rest > 0, (top - rest) / (top + rest).clamp_min(1e-12), torch.zeros_like(top))
    return best, sel.float()


def _class_labels(images: ImageSource, n: int, labels: Tensor | None,
                  class_names: Sequence[str] | None) -> tuple[Tensor, list[str], int]:
    """The images' labels (given, the Dataset's, or read from it), class names, number of classes."""
    if n == 0:
        raise InputError("the image set is empty: give at least one image to dissect")
    if labels is None:
        labels = labels_of(images)
    if labels is None:
        parts = [take(images, i)[1] for i in batch_indices(n, 1024)]
        if any(p is None for p in parts):
            raise InputError("class-level dissection needs labels: give labels= or a labelled dataset")
        labels = torch.cat([p for p in parts if p is not None])
    labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
    if len(labels) != n:
        raise InputError(f"{len(labels)} labels for {n} images")
    n_classes = max(int(labels.max()) + 1, len(class_names) if class_names is not None else 0)
    if n_classes == 0:
        raise InputError("cannot tell the number of classes: give class_names=")
    names = list(class_names) if class_names is not None else [str(c) for c in range(n_classes)]
    if len(names) < n_classes:
        raise InputError(f"{len(names)} class names for labels up to {n_classes - 1}")
    return labels, names, n_classes


def dissect_classes(
    model: nn.Module,
    images: ImageSource,
    layers: str | Sequence[str],
    *,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = DEFAULT_SELECTIVITY_THRESHOLD,
    quantile: float = DEFAULT_QUANTILE,
    batch_size: int = 64,
    top_images: int = 8,
    bins: int = 2048,
    runner_ups: int = 2,
    exact_range: bool = False,
    passes: Any = None,
) -> Dissection:
    """Class-level dissection: the class whose images activate each unit most.

    Per unit ``k`` and class ``c``: ``mu_kc`` = mean over the images of class ``c`` of the
    unit's spatial max activation; label = ``argmax_c mu_kc``; score = the class-selectivity
    index (:func:`class_selectivity`); ``labelled`` = score >= ``threshold`` (default
    :data:`DEFAULT_SELECTIVITY_THRESHOLD`; 0 gives every unit its class, however unselective). One streaming pass; ``T_k`` (``quantile``) is computed too, for the
    galleries. ``exact_range`` and ``passes`` as for :func:`dissect`.

        res = dissect_classes(model, x, "layer1,layer2,layer3", labels=y, class_names=names)
    """
    t0 = time.perf_counter()
    modules = resolve_layers(model, layers)
    n = num_images(images)
    labels, names, n_classes = _class_labels(images, n, labels, class_names)
    counts = torch.bincount(labels, minlength=n_classes).double()
    if passes is None:
        state = first_pass(model, modules, images, batch_size, top_images, bins, labels, n_classes,
                            exact_range=exact_range)
    else:
        state = passes.first_pass(model, modules, images, batch_size, top_images, bins, labels, n_classes)
    present = counts > 0
    frames, scores = [], {}
    for name, _ in modules:
        s = state[name]
        means = (s.class_sum.cpu() / counts.clamp_min(1)[None])[:, present].float()
        kept = [nm for nm, p in zip(names[:n_classes], present.tolist(), strict=True) if p]
        _, sel = class_selectivity(means)
        scores[name] = means
        frames.append(_table(name, means, sel, kept, ["class"] * len(kept), threshold,
                             s.sketch.upper(quantile).float().cpu(), runner_ups))
    return Dissection(
        kind="classes", table=pd.concat(frames, ignore_index=True),
        concepts=[nm for nm, p in zip(names[:n_classes], present.tolist(), strict=True) if p],
        scores=scores, thresholds={k: s.sketch.upper(quantile).float().cpu() for k, s in state.items()},
        top_images={k: s.top_i.cpu() for k, s in state.items()},
        top_values={k: s.top_v.cpu() for k, s in state.items()},
        params={"quantile": quantile, "threshold": threshold, "bins": bins, "images": n,
                "layers": [nm for nm, _ in modules], "score": "class selectivity index",
                **_range_param(exact_range, passes)},
        seconds=time.perf_counter() - t0,
    )
