"""The model registry: a constructor per name, with the preprocessing the model expects.

    @register_model("cifar_cnn", family="cnn", preprocessing=CIFAR_PREP, num_classes=10,
                    description="the CNN of the CIFAR-10 studies")
    def cifar_cnn(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False): ...

    MODELS.available("resnet*")     # ['resnet18', 'resnet20', 'resnet50', 'resnet56']

Every factory takes ``num_classes``, ``in_channels`` and ``pretrained`` keywords; use
:func:`xailab.models.create_model`, which also loads weights and attaches the preprocessing.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from xailab.core.pixels import record_pixel_space
from xailab.core.registry import Registry
from xailab.data.transforms import Preprocessing

MODELS: Registry[Any] = Registry("model", loader="xailab.models")

Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its factory, what it expects, where its weights come from."""

    name: str
    family: str
    factory: Factory
    preprocessing: Preprocessing
    num_classes: int
    in_channels: int
    description: str
    weights: str = ""  # where pretrained weights come from ("" = none)
    #: one module per nonlinearity, no in-place op, residual sums as modules: DeepLIFT / LRP can hook it
    hook_friendly: bool = True

    def __call__(self, **kwargs: Any) -> nn.Module:
        from xailab.models.loading import create_model

        return create_model(self.name, **kwargs)


def register_model(
    name: str,
    *,
    family: str,
    preprocessing: Preprocessing,
    num_classes: int,
    description: str,
    weights: str = "",
    hook_friendly: bool = True,
    aliases: tuple[str, ...] = (),
) -> Callable[[Factory], Factory]:
    """Register ``factory(num_classes=, in_channels=, pretrained=) -> nn.Module`` as ``name``."""

    def deco(factory: Factory) -> Factory:
        entry = ModelEntry(name, family, factory, preprocessing, num_classes,
                           preprocessing.channels, description, weights, hook_friendly)
        MODELS.register(name, family=family, aliases=aliases)(entry)
        return factory

    return deco


# -- the preprocessing a model carries --------------------------------------------------------
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
