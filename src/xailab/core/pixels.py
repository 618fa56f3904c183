"""What a model's inputs are in pixels, recorded beside the model (never written onto it).

A model normalises images ``input = (pixel - mean) / std``, or takes pixels in some
``pixel_range``. Methods that build inputs in pixel space (the "black" baseline of Integrated
Gradients, SmoothGrad's noise, the z^B box of LRP) need to know which: the model zoo and the
checkpoint loaders record it here, and every method reads it, so ``xailab.create(name, model)``
in Python and ``xailab explain`` on the command line use the same preprocessing.

    record_pixel_space(model, mean=(0.5,), std=(0.5,))
    recorded_pixel_space(model)   # {"mean": (0.5,), "std": (0.5,)}
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from torch import nn

_SPACE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[float, ...]]] = weakref.WeakKeyDictionary()


def record_pixel_space(
    model: nn.Module,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pixel_range: Sequence[float] | None = None,
) -> nn.Module:
    """Record how ``model``'s inputs relate to pixels in ``[0, 1]`` (mean/std, or a range)."""
    space: dict[str, tuple[float, ...]] = {}
    if mean is not None and std is not None:
        space.update(mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std))
    if pixel_range is not None:
        space["pixel_range"] = tuple(float(v) for v in pixel_range)
    _SPACE[model] = space
    return model


def recorded_pixel_space(model: nn.Module) -> dict[str, Any] | None:
    """What :func:`record_pixel_space` recorded for ``model``, else its ``preprocessing``
    attribute's ``mean``/``std`` if it has one, else ``None``."""
    if model in _SPACE:
        return dict(_SPACE[model])
    prep = getattr(model, "preprocessing", None)
    mean, std = getattr(prep, "mean", None), getattr(prep, "std", None)
    if mean is not None and std is not None:
        return {"mean": tuple(mean), "std": tuple(std)}
    return None


__all__ = ["record_pixel_space", "recorded_pixel_space"]
