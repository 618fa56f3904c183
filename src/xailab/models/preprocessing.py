"""The preprocessing a model expects, kept beside the model (a weak map, nothing written onto it)."""

from __future__ import annotations

import weakref

from torch import nn

from xailab.core.pixels import record_pixel_space
from xailab.data.transforms import Preprocessing

_PREP: weakref.WeakKeyDictionary[nn.Module, Preprocessing] = weakref.WeakKeyDictionary()


def set_preprocessing(model: nn.Module, prep: Preprocessing) -> nn.Module:
    """Record what ``model`` expects (kept beside the model, not written onto it); the
    methods read its mean/std from :mod:`xailab.core.pixels` (what "black" is)."""
    _PREP[model] = prep
    record_pixel_space(model, prep.mean, prep.std)
    return model


def get_preprocessing(model: nn.Module, default: Preprocessing | None = None) -> Preprocessing | None:
    """The preprocessing recorded for ``model`` (by :func:`create_model`, :func:`load_model`
    or a weights file's metadata), else a ``preprocessing`` attribute, else ``default``."""
    if model in _PREP:
        return _PREP[model]
    attr = getattr(model, "preprocessing", None)
    return attr if isinstance(attr, Preprocessing) else default


def preprocessing_for_channels(prep: Preprocessing, in_channels: int) -> Preprocessing:
    """``prep`` for a model built with ``in_channels`` inputs (other than its own: the channel
    means of mean and std, repeated)."""
    if in_channels == prep.channels:
        return prep
    mean = sum(prep.mean) / len(prep.mean)
    std = sum(prep.std) / len(prep.std)
    return Preprocessing(mean=(mean,) * in_channels, std=(std,) * in_channels,
                         input_size=prep.input_size, resize=prep.resize, channels=in_channels)
