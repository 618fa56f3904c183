"""The methods of an explain job, checked before any work: names (``NAME=METHOD``), keyword
arguments, the resume key of each method's maps and the identity of model, images and targets.

:func:`plan_methods` is what :func:`xailab.jobs.explain_images.explain_images` calls first;
nothing here writes a run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, UnsupportedModelError
from xailab.core.registry import METHODS, RegistryError
from xailab.core.targets import TargetPlan, TargetSpec
from xailab.jobs.common import model_sha256, tensor_sha256


def method_kwargs(
    name: str,
    params: dict[str, Any],
    layer: str | None,
    quick: bool,
    pixel_space: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for method ``name``: its quick settings, ``layer`` if it takes one,
    the model's normalisation (``mean``/``std``, so that a "black" baseline is black) if it takes
    them, and the user's ``params`` (unknown names are an error that lists the known ones)."""
    cls = METHODS.get(name)
    accepted = _accepted(cls)
    kw: dict[str, Any] = dict(cls.quick_params) if quick else {}
    if layer is not None and "layer" in accepted:
        kw["layer"] = layer
    for key, value in (pixel_space or {}).items():
        if key in accepted and value is not None:
            kw[key] = value
    unknown = set(params) - accepted
    if unknown:
        raise InputError(
            f"method {name} has no parameter {', '.join(sorted(unknown))}; "
            f"its parameters: {', '.join(sorted(accepted - {'model'}))}"
        )
    kw.update(params)
    return kw


def _accepted(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self":
                names.add(p.name)
    return names


@dataclass
class MethodPlan:
    """The methods of one explain job, checked: names, kinds, keyword arguments, resume keys."""

    kinds: dict[str, str]
    kwargs: dict[str, dict[str, Any]]
    specs: dict[str, str]
    batch_size: int
    seed: int
    identity: dict[str, str]
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """The methods' names in the run, in order."""
        return list(self.kinds)


def plan_methods(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str],
    targets: TargetSpec,
    *,
    labels: Tensor | None = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    layer: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    quick: bool = False,
) -> MethodPlan:
    """Check methods, parameters, layers and targets against the model; nothing is written."""
    if len(images) == 0:
        raise InputError("no images to explain (the image set is empty)")
    kinds = method_names(methods)  # name in the run -> registered method
    if not kinds:
        raise InputError("no methods given: name at least one (see `xailab methods`)")
    params = {_param_key(k, kinds): v for k, v in (method_params or {}).items()}
    stray = set(params) - set(kinds) - set(kinds.values())
    if stray:
        raise InputError(f"parameters given for methods not run: {', '.join(sorted(stray))}")
    space = {"mean": tuple(mean) if mean is not None else None, "std": tuple(std) if std is not None else None}
    kwargs = {m: method_kwargs(kinds[m], {**params.get(kinds[m], {}), **(params.get(m, {}) if m != kinds[m] else {})},
                               layer, quick, space) for m in kinds}
    refused: dict[str, str] = {}
    for m in kinds:  # parameters and layers are checked by building each method once, the model by its checks
        explainer = METHODS.create(kinds[m], model, batch_size=batch_size, seed=seed, **kwargs[m])
        try:
            explainer.check_model(images[:1])
        except UnsupportedModelError as e:  # the others run; this one is listed with its reason
            refused[m] = str(e)
    if len(refused) == len(kinds):
        raise UnsupportedModelError("; ".join(f"{m}: {why}" for m, why in refused.items()))
    with torch.no_grad():
        k = int(model(images[:1]).shape[1])
    TargetPlan(targets, len(images), labels).check(k)
    specs = {m: method_spec(kwargs[m], batch_size, seed) + ("" if kinds[m] == m else f":{kinds[m]}") for m in kinds}
    identity = {"model": model_sha256(model), "images": tensor_sha256(images),
                "labels": tensor_sha256(labels) if labels is not None else "none", "targets": _spec_value(targets)}
    return MethodPlan(kinds, kwargs, specs, batch_size, seed, identity, refused)


_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def method_names(methods: Sequence[str]) -> dict[str, str]:
    """``{name in the run: registered method}`` of entries ``METHOD`` or ``NAME=METHOD``."""
    out: dict[str, str] = {}
    for entry in methods:
        label, sep, method = str(entry).strip().partition("=")
        kind = METHODS.canonical(method if sep else label)
        name = label.strip().lower().replace("-", "_") if sep else kind
        if not _NAME.match(name):
            raise InputError(f"method name {label!r} must be lower-case letters, digits and _ (starting with a letter)")
        if name in out:
            raise InputError(f"method name {name!r} is given twice; give each setting its own NAME=METHOD")
        if sep and name != kind and name in METHODS.available():
            raise InputError(f"{name!r} is a registered method; choose another name for {entry!r}")
        out[name] = kind
    return out


def _param_key(key: str, kinds: dict[str, str]) -> str:
    """A ``method_params`` key: a name of the run as given, else a method name, canonical."""
    k = key.strip().lower().replace("-", "_")
    if k in kinds:
        return k
    try:
        return METHODS.canonical(key)
    except RegistryError:
        return k


def method_spec(kwargs: dict[str, Any], batch_size: int, seed: int) -> str:
    """What defines a method's maps in a run: a rerun with the same spec skips the method."""
    return json.dumps({"kwargs": kwargs, "batch_size": batch_size, "seed": seed}, sort_keys=True, default=_spec_value)


def _spec_value(value: Any) -> str:
    """A tensor parameter (a baseline, a background) by its shape and a hash of its values."""
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous().numpy().tobytes()
        return f"tensor{tuple(value.shape)}:{hashlib.sha256(data).hexdigest()[:16]}"
    return str(value)
