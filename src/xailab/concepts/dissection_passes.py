"""The passes of network dissection (:mod:`.dissection`), one public phase each.

Each pass streams the image set with one batch alive at a time, and its result adds up over
parts of the image set, so the same functions serve the local :func:`~.dissection.dissect` and
the shards of :mod:`xailab.distributed.dissection`:

* :func:`first_pass`: per layer a :class:`UnitStats` (quantile sketch, top images by spatial
  max, per-class sums); with ``sketch=False`` the exact min/max pre-pass;
* :func:`sketch_pass`: per layer a :class:`QuantileSketch` over a fixed range (mergeable);
* :func:`iou_pass`: per layer intersections and unions of unit and concept masks.

``index_base`` is the global index of ``images[0]`` when the images are a shard of a larger set.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.concepts.activations import ImageSource, batch_indices, model_device, num_images, take
from xailab.concepts.quantile_sketch import QuantileSketch
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import HookScope, model_session, resolve_layer
from xailab.core.tokens import as_map, token_grid_of


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
    A transformer block's tokens ``[B, T, D]`` are read as maps ``[B, D, h, w]`` on the patch
    grid (prefix tokens dropped, :mod:`xailab.core.tokens`); any other output that is not a 4-D
    map raises :class:`LayerError`.
    """
    n = num_images(images)
    if n == 0:
        raise InputError("the image set is empty: give at least one image to dissect")
    device = model_device(model)
    seen: dict[str, Tensor] = {}
    with model_session(model):
        grid = token_grid_of(model, take(images, torch.arange(1))[0].to(device))

    def hook_for(name: str) -> Any:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, Tensor):
                out = as_map(out, grid, name)  # a transformer's tokens on the patch grid
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



class UnitStats:
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

    def merge(self, other: UnitStats) -> None:
        """Add the state of another part of the image set (exact but for class-sum rounding)."""
        self.vmin = torch.minimum(self.vmin, other.vmin.to(self.vmin.device))
        self.vmax = torch.maximum(self.vmax, other.vmax.to(self.vmax.device))
        self._top(other.top_v.to(self.top_v.device), other.top_i.to(self.top_i.device))
        self.class_sum += other.class_sum.to(self.class_sum.device)


def first_pass(
    model: nn.Module, modules: list[tuple[str, nn.Module]], images: ImageSource, batch_size: int,
    top_images: int, bins: int, labels: Tensor | None = None, n_classes: int = 0, *,
    exact_range: bool = False, sketch: bool = True, index_base: int = 0,
) -> dict[str, UnitStats]:
    """One streaming pass (two with ``exact_range``: min/max, then sketches over that range).
    ``sketch=False``: the min/max pass only; ``index_base``: global index of ``images[0]``."""
    state: dict[str, UnitStats] = {}
    for idx, _, y, acts in stream_layers(model, modules, images, batch_size):
        lab = labels[idx] if labels is not None else y
        if n_classes and lab is None:
            raise InputError("class-level dissection needs labels: give labels= or a labelled dataset")
        for name, a in acts.items():
            if name not in state:
                state[name] = UnitStats(a.shape[1], top_images, bins, n_classes, a.device,
                                     sketch=sketch and not exact_range)
            state[name].update(idx + index_base, a, lab)
    if exact_range and sketch:
        ranges = {name: (s.vmin, s.vmax) for name, s in state.items()}
        for name, sk in sketch_pass(model, modules, images, batch_size, ranges, bins).items():
            state[name].sketch = sk
    return state


def sketch_pass(
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



def iou_pass(
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

