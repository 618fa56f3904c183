"""What every counterfactual search shares: the pixel space, the targets, the counted model, the result.

A counterfactual of an image ``x`` for a target class ``t`` is a nearby image ``x'`` that the
model classifies as ``t`` (Wachter et al. 2017). The searches of this package take images as the
model takes them (normalised, like :meth:`xailab.Explainer.explain`), change them in pixels
(``[0, 1]``, through the model's recorded preprocessing, :mod:`xailab.core.pixels`), and measure
every distance in pixels, so an L2 of 1.0 means the same on every model.

Targets: any spec of :mod:`xailab.core.targets` (``"top2"``, ``"least"``, a class index, one per
image) or ``"other"``: any class but the current one (the nearest decision boundary).

    space = PixelMap.for_model(model)        # pixels <-> inputs
    counted = CountedModel(model)            # counts model evaluations per image
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, TargetError
from xailab.core.targets import TargetPlan, TargetSpec
from xailab.methods.gradient.baselines import PixelSpace

#: a pixel counts as changed when some channel moved by more than this (one grey level)
CHANGE_TOL = 1.0 / 255.0
#: the target of "any class but the current one"
OTHER = -1
#: the status of an image whose target is the class it already has (nothing to search)
ALREADY = "already the target class"


class PixelMap:
    """``inputs <-> pixels``: ``input = (pixel - mean) / std`` (or a range), identity when nothing
    is recorded (the model takes pixels in ``[0, 1]``)."""

    def __init__(self, space: PixelSpace) -> None:
        self.space = space

    @classmethod
    def for_model(cls, model: nn.Module) -> PixelMap:
        """The pixel space recorded for ``model`` (:mod:`xailab.core.pixels`), else ``[0, 1]``."""
        return cls(PixelSpace.for_model(model))

    def _scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lo, hi = self.space.bounds(x)  # input values of pixel 0 and pixel 1
        return lo, hi - lo

    def to_pixels(self, x: Tensor) -> Tensor:
        """Model inputs -> pixels (``[0, 1]`` for inputs the model could get from an image)."""
        lo, span = self._scale(x)
        return (x - lo) / span

    def to_inputs(self, p: Tensor) -> Tensor:
        """Pixels -> what the model takes."""
        lo, span = self._scale(p)
        return p * span + lo

    def describe(self) -> dict[str, Any]:
        """The space as a run records it."""
        return self.space.describe() or {"pixel_range": [0.0, 1.0]}


class CountedModel:
    """``model(x)`` that counts evaluations (images through the network) per image of the call."""

    def __init__(self, model: nn.Module, n: int) -> None:
        self.model = model
        self.evaluations = torch.zeros(n, dtype=torch.long)

    def __call__(self, x: Tensor, owners: Tensor | int) -> Tensor:
        """The logits of ``x``, each row counted to image ``owners`` (one index, or one per row)."""
        out = self.model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise InputError("the model must return logits [N, classes]")
        if isinstance(owners, int):
            self.evaluations[owners] += len(x)
        else:
            self.evaluations.index_add_(0, owners.cpu(), torch.ones(len(owners), dtype=torch.long))
        return out


def check_images(images: Tensor) -> Tensor:
    """``images`` detached, or an InputError unless a finite float batch ``[N, C, H, W]``."""
    if not isinstance(images, Tensor) or images.dim() != 4 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise InputError(f"images must be a non-empty batch [N, C, H, W], got {shape}")
    if not images.is_floating_point() or not torch.isfinite(images).all():
        raise InputError("images must be finite float tensors (as the model takes them)")
    return images.detach()


def resolve_counterfactual_targets(spec: TargetSpec, logits: Tensor, labels: Tensor | None = None) -> Tensor:
    """One target class per image (``OTHER`` = any class but the current one), ``LongTensor [N]``.

    A target equal to every image's current class is refused (there is nothing to change);
    images whose target is their current class get that target and are reported as such.
    """
    pred = logits.argmax(1)
    if isinstance(spec, str) and spec.lower() in ("other", "any", "any_other"):
        return torch.full_like(pred, OTHER)
    plan = TargetPlan(spec, len(logits), labels)
    if plan.n_targets != 1:
        raise TargetError("a counterfactual takes one target per image: top2, least, a class index, or 'other'")
    target = plan.resolve(logits)[0][:, 0]
    if bool((target == pred).all()):
        raise TargetError(
            f"target {spec!r} is the class the model already predicts for every image: choose another class, "
            "'top2', 'least' or 'other'")
    return target


def reached(logits: Tensor, original: Tensor, target: Tensor) -> Tensor:
    """Per row: is the decision the target (or, for ``OTHER``, any class but the original)?"""
    pred = logits.argmax(1)
    return torch.where(target == OTHER, pred != original, pred == target)


def margin(logits: Tensor, original: Tensor, target: Tensor) -> Tensor:
    """How far past the boundary (> 0: flipped): ``z_t - max_{j != t} z_j``; for ``OTHER``,
    ``max_{j != original} z_j - z_original``."""
    other = target == OTHER
    t = torch.where(other, original, target)
    zt = logits.gather(1, t[:, None])[:, 0]
    rest = logits.scatter(1, t[:, None], float("-inf")).amax(1)
    return torch.where(other, rest - zt, zt - rest)


def pixel_distances(delta: Tensor, tol: float = CHANGE_TOL) -> dict[str, Tensor]:
    """Per image of ``delta [N, C, H, W]`` (pixels): L1, L2, L-inf and changed pixels (a position
    counts when some channel moved by more than ``tol``) and their share (``sparsity``)."""
    flat = delta.detach().double().flatten(1)
    changed = (delta.detach().abs().amax(1) > tol).flatten(1).sum(1)
    hw = delta.shape[-2] * delta.shape[-1]
    return {"l1": flat.abs().sum(1), "l2": flat.norm(dim=1), "linf": flat.abs().amax(1),
            "changed_pixels": changed, "sparsity": changed.double() / hw}


@dataclass(frozen=True)
class Counterfactuals:
    """The counterfactuals of one search over ``N`` images.

    ``original`` / ``counterfactual``: pixels ``[N, C, H, W]`` in ``[0, 1]`` (``counterfactual``
    equals ``original`` where none was found); ``original_class`` and ``counterfactual_class``
    the model's decisions; ``target`` the class asked for (``OTHER``: any other); ``valid`` whether
    the decision is the target; ``measures`` per-image columns (proximity, sparsity, regions or
    concepts changed, model evaluations, seconds); ``status`` one line per image
    ("found", "not found within 5 x 100 steps", "already the target class").
    """

    method: str
    original: Tensor
    counterfactual: Tensor
    original_class: Tensor
    counterfactual_class: Tensor
    target: Tensor
    valid: Tensor
    measures: dict[str, Tensor]
    status: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.original)

    def table(self, class_names: list[str] | None = None) -> pd.DataFrame:
        """One row per image: kind, classes, validity, status and every measure."""
        def name(k: int) -> str:
            if k == OTHER:
                return "any other"
            return class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)

        df = pd.DataFrame({
            "image": np.arange(len(self)), "kind": self.method,
            "original_class": self.original_class.numpy(), "target": self.target.numpy(),
            "counterfactual_class": self.counterfactual_class.numpy(), "valid": self.valid.numpy(),
            "status": self.status,
        })
        df["original_name"] = [name(int(k)) for k in df["original_class"]]
        df["target_name"] = [name(int(k)) for k in df["target"]]
        df["counterfactual_name"] = [name(int(k)) for k in df["counterfactual_class"]]
        for key, col in self.measures.items():
            df[key] = col.detach().cpu().double().numpy() if col.is_floating_point() else col.cpu().numpy()
        return df

    def summary(self) -> dict[str, Any]:
        """Validity rate and medians over the valid counterfactuals."""
        ok = self.valid.numpy()
        asked = np.array([s != ALREADY for s in self.status], dtype=bool)
        out: dict[str, Any] = {"kind": self.method, "n": int(asked.sum()), "valid": int(ok[asked].sum()),
                               "validity": float(ok[asked].mean()) if asked.any() else float("nan"),
                               "seconds": self.seconds}
        for key, col in self.measures.items():
            v = col.detach().cpu().double().numpy()[ok]
            v = v[np.isfinite(v)]
            out[f"median_{key}"] = float(np.median(v)) if len(v) else float("nan")
        return out

    def format(self) -> str:
        """One line: validity and the medians that apply."""
        s = self.summary()
        parts = [f"{self.method}: {s['valid']}/{s['n']} valid ({100 * s['validity']:.0f} %)"]
        for key in ("l2", "changed_pixels", "regions", "concepts", "plausibility", "evaluations"):
            if f"median_{key}" in s and s[f"median_{key}"] == s[f"median_{key}"]:
                parts.append(f"median {key.replace('_', ' ')} {s[f'median_{key}']:.3g}")
        return ", ".join(parts) + f"; {s['seconds']:.1f} s"


class Clock:
    """Wall time of a call, shared out over its images."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        """Seconds since the clock started."""
        return time.perf_counter() - self.start
