"""The model's classes against the data's: one check for every command that takes a model and
labelled data (explain, compare, evaluate, concepts, dissect, audit).

* :func:`check_classes`: a model whose number of outputs differs from the data's class count, or
  whose weights were trained (by ``xailab train``) on other class names, is refused with one line,
  unless the user names the model's classes (``--class-names FILE``, where a command has it).
* :func:`trained_class_names`: the class names a checkpoint's training run recorded.
* :func:`read_class_names`, :func:`imagenet_class_names`: class names from a file, ImageNet's.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from xailab.core.errors import InputError


def check_classes(k: int, data_names: Sequence[str] | None, weights: str | None, *,
                  class_names: str | None = None, warn: bool = True, mappable: bool | None = None) -> list[str] | None:
    """The names of the model's ``k`` outputs, checked against the data's class names.

    Args:
        k: the model's number of outputs.
        data_names: the classes of the labelled data (None for unlabelled images).
        weights: the weights file (its training run may record the classes it was trained on).
        class_names: a file naming the model's classes; it maps the model to other data explicitly.
        warn: warn when the weights record no class names and the data's are used.
        mappable: the command takes ``--class-names`` (default ``warn``): the messages say so.
    """
    mappable = warn if mappable is None else mappable
    if class_names:
        names = read_class_names(class_names)
        if len(names) != k:
            raise InputError(f"--class-names {class_names} names {len(names)} classes but the model has {k} outputs")
        return names
    data = [str(c) for c in data_names] if data_names is not None else None
    if data is not None and len(data) != k:
        raise InputError(
            f"the model has {k} outputs but the data has {len(data)} classes "
            f"({', '.join(data[:5])}{', ...' if len(data) > 5 else ''}); give a model trained on these classes"
            + (" (or the model's class names with --class-names FILE to map them explicitly)" if mappable else ""))
    trained = trained_class_names(weights)
    if data is not None and trained is not None and trained != data:
        raise InputError(
            f"the model was trained on classes {', '.join(trained[:4])}, ... but the data's classes are "
            f"{', '.join(data[:4])}, ...; give a model trained on these classes"
            + (" (or --class-names FILE to map them explicitly)" if mappable else ""))
    if warn and data is not None and trained is None:
        warn_unnamed_outputs(k, data, mappable)
    return data if data is not None else trained


def warn_unnamed_outputs(k: int, data: Sequence[str], mappable: bool) -> None:
    """Warn that the model's ``k`` outputs are named after the data's classes, its weights naming none
    (MNIST digits given to a CIFAR-10 model: 10 and 10, nothing to refuse, but every name may be wrong)."""
    fix = ("give --class-names FILE" if mappable
           else "the class names (and any accuracy against the labels) are wrong")
    warnings.warn(
        f"the weights record no class names: the model's {k} outputs are named after the classes of "
        f"the images' dataset ({', '.join(data[:4])}, ...); if the model was trained on other classes, {fix}",
        stacklevel=3)


def check_model_classes(model: Any, x: Tensor, data_names: Sequence[str] | None, weights: str | None, *,
                        warn: bool = False) -> None:
    """:func:`check_classes` of a model (its outputs counted on one image of ``x``) against labelled data;
    ``warn``: say when the weights name no classes (:func:`warn_unnamed_outputs`)."""
    from xailab.core.hooks import model_device
    from xailab.jobs.model import num_outputs

    if data_names is not None and len(x):
        check_classes(num_outputs(model, x[:1].to(model_device(model))), data_names, weights, warn=warn,
                      mappable=False)


def trained_class_names(weights: str | None) -> list[str] | None:
    """The class names of a checkpoint written by ``xailab train`` (its run's manifest), if known."""
    if not weights:
        return None
    folder = Path(weights).expanduser().resolve().parent
    for run_dir in (folder.parent, folder.parent.parent.parent):  # RUN/checkpoints, RUN/folds/fold-k/checkpoints
        manifest = run_dir / "manifest.json"
        if folder.name == "checkpoints" and manifest.is_file():
            try:
                classes = json.loads(manifest.read_text(encoding="utf-8")).get("classes")
            except (OSError, ValueError):
                return None
            return [str(c) for c in classes] if isinstance(classes, list) else None
    return None


def read_class_names(path: str) -> list[str]:
    """Class names from a file: a JSON list, an ImageNet-style ``{"0": [id, name]}`` map, or one a line."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"class-names file not found: {path}")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"class-names file {path} is not valid JSON: {e}") from None
        if isinstance(data, dict):  # {"0": ["n01440764", "tench"], ...} or {"0": "tench"}
            return [v[-1] if isinstance(v, list) else str(v) for _, v in sorted(data.items(), key=lambda kv: int(kv[0]))]
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names, as torchvision ships them (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


__all__ = ["check_classes", "check_model_classes", "imagenet_class_names", "read_class_names", "trained_class_names",
           "warn_unnamed_outputs"]
