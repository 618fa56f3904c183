"""The model registry: a constructor per name, with the preprocessing the model expects.

    @register_model("cifar_cnn", family="cnn", preprocessing=CIFAR_PREP, num_classes=10,
                    description="the CNN of the CIFAR-10 studies")
    def cifar_cnn(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False): ...

    MODELS.available("resnet*")     # ['resnet18', 'resnet20', 'resnet50', 'resnet56']

Every factory takes ``num_classes``, ``in_channels`` and ``pretrained`` keywords; use
:func:`xailab.models.create_model`, which also loads weights and attaches the preprocessing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from xailab.core.errors import ModelError
from xailab.core.registry import Registry
from xailab.data.transforms import Preprocessing
from xailab.models.checkpoint import load_weights
from xailab.models.preprocessing import (
    get_preprocessing,
    preprocessing_for_channels,
    set_preprocessing,
)

__all__ = ["MODELS", "Factory", "ModelEntry", "get_preprocessing", "register_model", "set_preprocessing"]

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

    def __call__(self, *, num_classes: int | None = None, in_channels: int | None = None,
                 pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
        """The model, in eval mode, with its preprocessing recorded (see
        :func:`xailab.models.create_model`, which calls this)."""
        if pretrained and not self.weights:
            raise ModelError(f"{self.name} has no published weights; train it and pass weights=<file>")
        nc = int(num_classes or self.num_classes)
        ic = int(in_channels or self.in_channels)
        model = self.factory(num_classes=nc, in_channels=ic, pretrained=pretrained)
        set_preprocessing(model, preprocessing_for_channels(self.preprocessing, ic))
        if weights is not None:
            load_weights(model, weights)
        return model.eval()


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
