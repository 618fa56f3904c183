"""Network dissection: label every unit of a layer with the concept its top activations cover.

Bau, Zhou, Khosla, Oliva, Torralba (2017), "Network Dissection: Quantifying Interpretability
of Deep Visual Representations". For unit ``k`` of a conv layer with activation maps ``A_k(x)``:

* ``T_k`` is the top-quantile threshold over the whole probe set: ``P(A_k > T_k) = q``
  (``q = 0.005`` by default), estimated by :class:`QuantileSketch` without keeping the maps;
* ``M_k(x) = S(A_k(x)) > T_k`` with ``S`` bilinear upsampling to the concept-mask resolution;
* ``IoU(k, c) = sum_x |M_k(x) & L_c(x)| / sum_x |M_k(x) | L_c(x)|``, sums over the images ``x``
  on which the category of concept ``c`` is annotated;
* the unit's label is ``argmax_c IoU(k, c)``; it counts as a detector when IoU >= 0.04.

Two passes stream the image set with one batch alive at a time: pass 1 fills the quantile
sketch and the unit's top images, pass 2 accumulates intersections and unions.
:func:`dissect_classes` is the class-level variant for any labelled image set (one pass).
Concept sources (colours from pixels, Broden masks) are in :mod:`.dissection_concepts`; tables,
figures and the run store in :mod:`.dissection_report`.

    res = dissect(model, images, ["layer2", "layer3"], ColourConcepts(prep.denormalize))
    res.table.head()   # layer, unit, label, category, score, labelled, runner_up, threshold
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.concepts.activations import (
    ImageSource,
    batch_indices,
    labels_of,
    model_device,
    num_images,
    take,
)
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import HookScope, model_session, resolve_layer

DEFAULT_QUANTILE = 0.005
DEFAULT_IOU_THRESHOLD = 0.04


# -- concepts -------------------------------------------------------------------------------------
@dataclass
class ConceptMasks:
    """Pixel labels of a batch: ``layers`` long ``[B, L, H, W]`` holds a concept index or -1
    (a pixel may carry up to ``L`` concepts); ``valid`` bool ``[B, K]`` says on which images
    concept ``k``'s category is annotated (``None``: all)."""

    layers: Tensor
    valid: Tensor | None = None


class ConceptSource(Protocol):
    """What :func:`dissect` needs from a concept set: names, categories and per-batch masks."""

    names: list[str]
    categories: list[str]

    def masks(self, index: Tensor, images: Tensor) -> ConceptMasks:
        """Masks of the images at ``index`` of the image set (``images``: those images)."""
        ...


# -- quantile sketch ------------------------------------------------------------------------------
class QuantileSketch:
    """Per-unit streaming histogram for upper quantiles with bounded memory (``units x bins``).

    Each unit has ``bins`` equal bins over ``[lo, hi)``; ``lo``/``hi`` come from the first
    batch, and whenever a value reaches ``hi`` the range doubles (``hi = lo + 2 (hi - lo)``)
    and neighbouring bins are merged pairwise, which is exact. Values below ``lo`` fall in the
    first bin, so only quantiles above the first batch's minimum are resolved, which is what
    dissection asks for (the top 0.5 %). :meth:`upper` interpolates linearly inside the bin
    where the count from the top reaches ``q * total``: the error is at most one bin width,
    ``(hi - lo) / bins <= 2 (max - lo) / bins`` (0.1 % of the range with 2048 bins).

    A fixed range (``lo``/``hi``, both ``[units]``, e.g. :meth:`spanning` the global min and max
    from a pre-pass) makes the bins independent of the order of the values: sketches of parts
    of a set then :meth:`merge` (``a + b``) into exactly the sketch of the whole set (counts add),
    and the error bound becomes one bin of the true range, ``(max - min) / bins``.

        sk = QuantileSketch(64); sk.update(acts.transpose(0, 1).flatten(1)); sk.upper(0.005)
        whole = QuantileSketch.spanning(vmin, vmax); part_a + part_b   # a mergeable pair
    """

    def __init__(self, units: int, bins: int = 2048, device: torch.device | str = "cpu", *,
                 lo: Tensor | None = None, hi: Tensor | None = None) -> None:
        if bins < 2 or bins % 2:
            raise InputError(f"bins must be an even number >= 2, got {bins}")
        if (lo is None) != (hi is None) or (lo is not None and hi is not None and (
                lo.shape != (units,) or hi.shape != (units,) or not bool((hi > lo).all()))):
            raise InputError(f"a fixed range needs lo and hi of shape [{units}] with hi > lo")
        self.units, self.bins = units, bins
        self.counts = torch.zeros(units, bins, dtype=torch.float64, device=device)
        self.lo = None if lo is None else lo.to(device, torch.float64)
        self.hi = None if hi is None else hi.to(device, torch.float64)
        self.total = 0
        self.max = torch.full((units,), -float("inf"), dtype=torch.float64, device=device)

    def update(self, values: Tensor) -> None:
        """Add ``values [units, n]``."""
        v = values.detach().to(torch.float64)
        if v.shape[0] != self.units:
            raise InputError(f"expected {self.units} units, got {v.shape[0]}")
        if v.shape[1] == 0:
            return
        vmax = v.max(1).values
        if self.lo is None or self.hi is None:
            self.lo, self.hi = _span(v.min(1).values, vmax)
        while True:
            grow = vmax >= self.hi
            if not bool(grow.any()):
                break
            c = self.counts[grow]
            merged = torch.zeros_like(c)
            merged[:, : self.bins // 2] = c.view(-1, self.bins // 2, 2).sum(2)
            self.counts[grow] = merged
            self.hi = torch.where(grow, self.lo + 2 * (self.hi - self.lo), self.hi)
        width = (self.hi - self.lo) / self.bins
        idx = ((v - self.lo[:, None]) / width[:, None]).floor().clamp(0, self.bins - 1).long()
        self.counts.scatter_add_(1, idx, torch.ones_like(v))
        self.total += v.shape[1]
        self.max = torch.maximum(self.max, vmax)

    @classmethod
    def spanning(cls, vmin: Tensor, vmax: Tensor, bins: int = 2048) -> QuantileSketch:
        """A sketch whose fixed range just covers ``[vmin, vmax]`` per unit (the range the
        default sketch takes from a first batch holding every value: the same bins)."""
        lo, hi = _span(vmin.double(), vmax.double())
        return cls(len(lo), bins, lo.device, lo=lo, hi=hi)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """The sketch of both value sets: counts and totals add, maxima take the larger. Exact,
        and refused unless both have the same bins over the same range (e.g. one :meth:`spanning`)."""
        if self.total == 0 and self.lo is None:
            return other.copy()
        if other.total == 0 and other.lo is None:
            return self.copy()
        if (self.units, self.bins) != (other.units, other.bins) or self.lo is None or other.lo is None \
                or self.hi is None or other.hi is None or not (torch.equal(self.lo, other.lo.to(self.lo.device))
                                                           and torch.equal(self.hi, other.hi.to(self.hi.device))):
            raise InputError("only sketches with the same units, bins and range merge: give both the "
                             "same fixed range (QuantileSketch.spanning of the global min and max)")
        out = self.copy()
        out.counts += other.counts.to(out.counts.device)
        out.total += other.total
        out.max = torch.maximum(out.max, other.max.to(out.max.device))
        return out

    __add__ = merge

    def copy(self) -> QuantileSketch:
        out = QuantileSketch(self.units, self.bins, self.counts.device)
        out.counts, out.total, out.max = self.counts.clone(), self.total, self.max.clone()
        out.lo = None if self.lo is None else self.lo.clone()
        out.hi = None if self.hi is None else self.hi.clone()
        return out

    def upper(self, q: float) -> Tensor:
        """Per unit the value exceeded by a fraction ``q`` of the values seen (``[units]``)."""
        if self.lo is None or self.hi is None or self.total == 0:
            raise InputError("the quantile sketch has seen no values")
        if not 0.0 < q < 1.0:
            raise InputError(f"quantile must be in (0, 1), got {q}")
        rank = q * self.total
        top = self.counts.flip(1)  # bin 0 = highest
        cum = top.cumsum(1)
        j = torch.searchsorted(cum, torch.full((self.units, 1), rank, dtype=cum.dtype, device=cum.device))
        j = j.clamp(max=self.bins - 1)
        before = torch.where(j > 0, cum.gather(1, (j - 1).clamp_min(0)), torch.zeros_like(j, dtype=cum.dtype))
        inbin = top.gather(1, j).clamp_min(1e-12)
        width = (self.hi - self.lo) / self.bins
        upper_edge = self.hi[:, None] - j * width[:, None]
        value = upper_edge - ((rank - before) / inbin).clamp(0, 1) * width[:, None]
        return torch.minimum(value.squeeze(1), self.max)


def _span(vmin: Tensor, vmax: Tensor) -> tuple[Tensor, Tensor]:
    """Bin range ``[lo, hi)`` over values from ``vmin`` to ``vmax`` (``vmax`` falls inside)."""
    span = (vmax - vmin).clamp_min(1e-6 * vmin.abs().clamp_min(1.0))
    return vmin, vmin + span * (1 + 1e-9)


# -- streaming several layers at once -------------------------------------------------------------
def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` for a comma-separated string or a list; unknown names list candidates."""
    names = [s.strip() for s in layers.split(",")] if isinstance(layers, str) else list(layers)
    names = [n for n in names if n]
    if not names:
        raise LayerError("give at least one layer to dissect (e.g. layer1,layer2,layer3)")
    return [resolve_layer(model, n) for n in names]


def stream_layers(
    model: nn.Module, modules: Sequence[tuple[str, nn.Module]], images: ImageSource, batch_size: int
) -> Iterator[tuple[Tensor, Tensor, Tensor | None, dict[str, Tensor]]]:
    """Yield ``(index, images, labels, {layer: activations [B, C, h, w]})`` per batch.

    One forward pass per batch with a hook on every layer (removed at the end, also on error).
    A layer whose output is not a 4-D map raises :class:`LayerError`.
    """
    n = num_images(images)
    if n == 0:
        raise InputError("the image set is empty: give at least one image to dissect")
    device = model_device(model)
    seen: dict[str, Tensor] = {}

    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(out, Tensor) or out.dim() != 4:
                shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise LayerError(
                    f"layer '{name}' outputs {shape}, not spatial maps [N, C, h, w]: dissection "
                    "needs a conv layer or block (e.g. layer3, features.5)"
                )
            seen[name] = out.detach()

        return hook

    with model_session(model), HookScope() as hooks, torch.no_grad():
        for name, module in modules:
            hooks.add(module.register_forward_hook(hook_for(name)))
        for idx in batch_indices(n, batch_size):
            x, y = take(images, idx)
            seen.clear()
            model(x.to(device))
            missing = [name for name, _ in modules if name not in seen]
            if missing:
                raise LayerError(f"layer(s) {', '.join(missing)} not called in the forward pass")
            yield idx, x, y, dict(seen)


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


class _Pass1:
    """Per layer: quantile sketch, running top images by spatial max, class sums (optional).

    With ``sketch=False`` (the exact-range pre-pass) it keeps each unit's min and max instead
    of a sketch; :meth:`merge` joins the states of two parts of the image set."""

    def __init__(self, units: int, k: int, bins: int, n_classes: int, device: torch.device,
                 sketch: bool = True) -> None:
        self.sketch = QuantileSketch(units, bins, device)
        self.track = not sketch
        self.vmin = torch.full((units,), float("inf"), dtype=torch.float64, device=device)
        self.vmax = -self.vmin
        self.k = k
        self.top_v = torch.empty(units, 0, device=device)
        self.top_i = torch.empty(units, 0, dtype=torch.long, device=device)
        self.class_sum = torch.zeros(units, n_classes, dtype=torch.float64, device=device)

    def update(self, idx: Tensor, acts: Tensor, labels: Tensor | None) -> None:
        flat = acts.transpose(0, 1).flatten(1)
        if self.track:
            self.vmin = torch.minimum(self.vmin, flat.amin(1).double())
            self.vmax = torch.maximum(self.vmax, flat.amax(1).double())
        else:
            self.sketch.update(flat)
        peak = acts.flatten(2).amax(2).T  # [C, B]
        self._top(peak, idx.to(peak.device)[None].expand_as(peak))
        if labels is not None and self.class_sum.shape[1]:
            self.class_sum.index_add_(1, labels.to(peak.device), peak.double())

    def _top(self, values: Tensor, index: Tensor) -> None:
        v = torch.cat([self.top_v, values], 1)
        i = torch.cat([self.top_i, index], 1)
        keep = v.topk(min(self.k, v.shape[1]), 1)
        self.top_v, self.top_i = keep.values, i.gather(1, keep.indices)

    def merge(self, other: _Pass1) -> None:
        """Add the state of another part of the image set (exact but for class-sum rounding)."""
        self.vmin = torch.minimum(self.vmin, other.vmin.to(self.vmin.device))
        self.vmax = torch.maximum(self.vmax, other.vmax.to(self.vmax.device))
        self._top(other.top_v.to(self.top_v.device), other.top_i.to(self.top_i.device))
        self.class_sum += other.class_sum.to(self.class_sum.device)


def _first_pass(
    model: nn.Module, modules: list[tuple[str, nn.Module]], images: ImageSource, batch_size: int,
    top_images: int, bins: int, labels: Tensor | None = None, n_classes: int = 0, *,
    exact_range: bool = False, sketch: bool = True, index_base: int = 0,
) -> dict[str, _Pass1]:
    """One streaming pass (two with ``exact_range``: min/max, then sketches over that range).
    ``sketch=False``: the min/max pass only; ``index_base``: global index of ``images[0]``."""
    state: dict[str, _Pass1] = {}
    for idx, _, y, acts in stream_layers(model, modules, images, batch_size):
        lab = labels[idx] if labels is not None else y
        if n_classes and lab is None:
            raise InputError("class-level dissection needs labels: give labels= or a labelled dataset")
        for name, a in acts.items():
            if name not in state:
                state[name] = _Pass1(a.shape[1], top_images, bins, n_classes, a.device,
                                     sketch=sketch and not exact_range)
            state[name].update(idx + index_base, a, lab)
    if exact_range and sketch:
        ranges = {name: (s.vmin, s.vmax) for name, s in state.items()}
        for name, sk in _sketch_pass(model, modules, images, batch_size, ranges, bins).items():
            state[name].sketch = sk
    return state


def _sketch_pass(
    model: nn.Module, modules: list[tuple[str, nn.Module]], images: ImageSource, batch_size: int,
    ranges: dict[str, tuple[Tensor, Tensor]], bins: int,
) -> dict[str, QuantileSketch]:
    """Per layer a sketch over the fixed range ``ranges[layer] = (min, max)`` of every unit
    (values above ``max``, which a nondeterministic device might give, count as ``max``)."""
    sketches: dict[str, QuantileSketch] = {}
    for _, _, _, acts in stream_layers(model, modules, images, batch_size):
        for name, a in acts.items():
            lo, hi = (r.to(a.device, torch.float64) for r in ranges[name])
            if name not in sketches:
                sketches[name] = QuantileSketch.spanning(lo, hi, bins)
            sketches[name].update(torch.minimum(a.transpose(0, 1).flatten(1).double(), hi[:, None]))
    return sketches


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
            Ray's, an object with ``first_pass`` and ``iou_pass`` like :func:`_first_pass`).

        res = dissect(model, x, "layer3", ColourConcepts(prep.denormalize))
    """
    t0 = time.perf_counter()
    modules = resolve_layers(model, layers)
    K = len(concepts.names)
    if K == 0:
        raise InputError("the concept set has no concepts")
    if passes is None:
        state = _first_pass(model, modules, images, batch_size, top_images, bins, exact_range=exact_range)
    else:
        state = passes.first_pass(model, modules, images, batch_size, top_images, bins)
    thresholds = {name: s.sketch.upper(quantile).float() for name, s in state.items()}
    run_iou = _iou_pass if passes is None else passes.iou_pass
    inter, area_a, area_c = run_iou(model, modules, images, concepts, thresholds, batch_size, max_elements)
    frames, scores = [], {}
    for name, _ in modules:
        i = inter[name][:, :K]
        union = area_a[name] + area_c[None] - i
        iou = torch.where(union > 0, i / union.clamp_min(1e-12), torch.zeros_like(i)).float().cpu()
        scores[name] = iou
        frames.append(_table(name, iou, iou.max(1).values, concepts.names, concepts.categories,
                             threshold, thresholds[name].cpu(), runner_ups))
    return Dissection(
        kind="concepts", table=pd.concat(frames, ignore_index=True), concepts=list(concepts.names),
        scores=scores, thresholds={k: v.cpu() for k, v in thresholds.items()},
        top_images={k: s.top_i.cpu() for k, s in state.items()},
        top_values={k: s.top_v.cpu() for k, s in state.items()},
        params={"quantile": quantile, "threshold": threshold, "bins": bins, "images": num_images(images),
                "layers": [n for n, _ in modules], "concept_source": type(concepts).__name__,
                **_range_param(exact_range, passes)},
        seconds=time.perf_counter() - t0,
    )


def _range_param(exact_range: bool, passes: Any) -> dict[str, Any]:
    if passes is not None:
        return {"exact_range": True, "backend": getattr(passes, "name", type(passes).__name__)}
    return {"exact_range": True} if exact_range else {}


def _iou_pass(
    model: nn.Module, modules: list[tuple[str, nn.Module]], images: ImageSource, concepts: ConceptSource,
    thresholds: dict[str, Tensor], batch_size: int, max_elements: int, index_base: int = 0,
) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
    """The IoU pass: per layer intersections ``[units, K + 1]`` and unit areas ``[units, K]``
    (pixels, float64), and concept areas ``[K]``; they add over parts of the image set."""
    K = len(concepts.names)
    inter: dict[str, Tensor] = {}
    area_a: dict[str, Tensor] = {}
    area_c: Tensor | None = None
    for idx, x, _, acts in stream_layers(model, modules, images, batch_size):
        cm = concepts.masks(idx + index_base, x)
        lab = cm.layers.to(next(iter(acts.values())).device).long()
        B, _, H, W = lab.shape
        valid = (cm.valid if cm.valid is not None else torch.ones(B, K, dtype=torch.bool)).to(lab.device)
        flat = torch.where(lab >= 0, lab, K).permute(1, 0, 2, 3).reshape(lab.shape[1], -1)  # [L, B*P]
        per_img = torch.zeros(B, K + 1, dtype=torch.float64, device=lab.device)
        for row in flat:
            per_img.scatter_add_(1, row.view(B, -1), torch.ones(B, H * W, dtype=torch.float64, device=lab.device))
        area_c = per_img[:, :K].sum(0) if area_c is None else area_c + per_img[:, :K].sum(0)
        for name, a in acts.items():
            C = a.shape[1]
            if name not in inter:
                inter[name] = torch.zeros(C, K + 1, dtype=torch.float64, device=a.device)
                area_a[name] = torch.zeros(C, K, dtype=torch.float64, device=a.device)
            step = max(1, max_elements // max(B * H * W, 1))
            if B * H * W >= 2**24:
                raise InputError(f"batch of {B} masks of {H}x{W} is too large: lower batch_size")
            for lo in range(0, C, step):
                up = F.interpolate(a[:, lo : lo + step].float(), size=(H, W), mode="bilinear", align_corners=False)
                # float32 is exact here: a batch adds at most B * H * W (< 2^24) per cell
                m = (up > thresholds[name][lo : lo + step, None, None].to(up.device)).float()  # [B, c, H, W]
                src = m.transpose(0, 1).reshape(m.shape[1], -1)  # [c, B*P]
                part = torch.zeros(m.shape[1], K + 1, device=m.device)
                for row in flat:
                    part.index_add_(1, row, src)
                inter[name][lo : lo + step] += part.double()
                area_a[name][lo : lo + step] += (m.sum((2, 3)).T @ valid.float()).double()
    assert area_c is not None
    return inter, area_a, area_c


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


def dissect_classes(
    model: nn.Module,
    images: ImageSource,
    layers: str | Sequence[str],
    *,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.0,
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
    index (:func:`class_selectivity`); ``labelled`` = score >= ``threshold`` (default 0: every
    unit gets its class). One streaming pass; ``T_k`` (``quantile``) is computed too, for the
    galleries. ``exact_range`` and ``passes`` as for :func:`dissect`.

        res = dissect_classes(model, x, "layer1,layer2,layer3", labels=y, class_names=names)
    """
    t0 = time.perf_counter()
    modules = resolve_layers(model, layers)
    n = num_images(images)
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
    counts = torch.bincount(labels, minlength=n_classes).double()
    if passes is None:
        state = _first_pass(model, modules, images, batch_size, top_images, bins, labels, n_classes,
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
