"""The model a job runs: :class:`ModelSpec` (what the user named) and its loading, checked.

One place decides, for every command that loads a model, that

* a zoo model without ``weights`` or ``pretrained`` is refused unless ``random_weights`` says the
  random initialisation is wanted (a sanity study); that initialisation is seeded (seed 0), so every
  job that rebuilds the model gets the same one;
* the input normalisation is the user's (``mean``/``std`` or ``input_range``), else what the
  weights or the zoo record, else the data's own statistics with a loud warning;
* the device is resolved once (:func:`xailab.core.hooks.resolve_device`).

    spec = ModelSpec("resnet20", weights="resnet20.safetensors")
    loaded = load(spec)                       # loaded.model, loaded.preprocessing, loaded.device
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xailab.core.errors import CheckpointError, InputError, ModelError
from xailab.core.hooks import resolve_device
from xailab.data.transforms import Preprocessing


@dataclass(frozen=True)
class ModelSpec:
    """A model as a command names it.

    Args:
        name: a zoo name, a TorchScript file, or ``package.module:factory``.
        weights: a weights file (safetensors or a tensors-only state dict).
        pretrained: a zoo model with its published weights.
        num_classes: outputs of a zoo model, if not its default.
        random_weights: explain a randomly initialised model on purpose (else refused).
        mean, std: the per-channel normalisation the model was trained with (pixels in [0, 1]).
        input_range: ``(low, high)``: the model takes pixels scaled to this range
            (e.g. ``(-1, 1)``, ``(0, 255)``); the same as ``mean``/``std``, given differently.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
    """

    name: str
    weights: str | None = None
    pretrained: bool = False
    num_classes: int | None = None
    random_weights: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_range: tuple[float, float] | None = None
    device: str = "auto"

    def check(self, *, needs_weights: bool = True) -> None:
        """Refuse what is wrong before anything loads (one line each)."""
        if not self.name:
            raise InputError("no model given: pass --model (a zoo name, a TorchScript file or package.module:factory)")
        if (self.mean is None) != (self.std is None):
            raise InputError("--mean and --std go together: give both (one value per channel, or one for all)")
        if self.input_range is not None and self.mean is not None:
            raise InputError("give either --mean/--std or --input-range, not both")
        if self.input_range is not None and not self.input_range[1] > self.input_range[0]:
            raise InputError(f"--input-range LOW,HIGH needs LOW < HIGH, got {self.input_range}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise InputError(f"--std must be positive, got {self.std}")
        if self.weights is not None and not Path(self.weights).expanduser().is_file():
            raise InputError(f"weights file not found: {self.weights}")
        if needs_weights and is_zoo_name(self.name) and not (self.weights or self.pretrained or self.random_weights):
            raise InputError(
                f"model {self.name} has no weights: give --weights FILE or --pretrained, or --random-weights "
                "to use a randomly initialised network on purpose (e.g. a sanity study)"
            )

    def user_preprocessing(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` the user gave (``input_range`` turned into them), per channel, or None."""
        mean: tuple[float, ...]
        std: tuple[float, ...]
        if self.input_range is not None:
            low, high = self.input_range
            mean, std = (-low / (high - low),), (1.0 / (high - low),)
        elif self.mean is not None and self.std is not None:
            mean, std = tuple(self.mean), tuple(self.std)
        else:
            return None
        if len(mean) == 1:
            mean, std = mean * channels, std * channels
        if len(mean) != channels or len(std) != channels:
            raise InputError(f"--mean/--std need 1 or {channels} values (the model's channels), got {len(mean)}")
        return mean, std

    def record(self) -> dict[str, Any]:
        """The spec as the run's config records it (paths absolute, so the run reads from anywhere)."""
        out = asdict(self)
        if self.weights:
            out["weights"] = str(Path(self.weights).expanduser().resolve())
        if Path(self.name).expanduser().is_file():
            out["model"] = str(Path(self.name).expanduser().resolve())
        else:
            out["model"] = self.name
        del out["name"]
        return out


def spec_from_config(config: dict[str, Any], **override: Any) -> ModelSpec:
    """The :class:`ModelSpec` a run's config recorded, with the user's non-None ``override``."""
    given = {k: v for k, v in override.items() if v is not None and v is not False}
    base = ModelSpec(
        name=str(config.get("model") or ""), weights=config.get("weights"),
        pretrained=bool(config.get("pretrained")), num_classes=config.get("num_classes"),
        random_weights=bool(config.get("random_weights")),
        mean=_tuple(config.get("mean")), std=_tuple(config.get("std")),
        input_range=_tuple(config.get("input_range")),  # type: ignore[arg-type]
    )
    if "name" in given:  # another model: not the run's weights, nor its choice of random ones
        base = replace(base, weights=None, pretrained=False, random_weights=False)
    return replace(base, **given)


def _tuple(v: Any) -> tuple[float, ...] | None:
    return tuple(float(x) for x in v) if v is not None else None


def is_zoo_name(name: str) -> bool:
    """True for a registered model name (not a file, not ``package.module:factory``)."""
    from xailab.core.registry import RegistryError
    from xailab.models import MODELS

    if Path(name).expanduser().is_file():
        return False
    try:
        MODELS.canonical(name)
    except RegistryError:
        return False
    return True


@dataclass
class LoadedModel:
    """A model ready to run, with what it expects and where it runs."""

    model: nn.Module
    preprocessing: Preprocessing | None
    device: torch.device
    spec: ModelSpec
    preprocessing_source: str = "none"
    notes: list[str] = field(default_factory=list)

    def provenance(self) -> dict[str, Any]:
        """Model spec, weights sha256 and preprocessing: what a run records of its model."""
        p = self.preprocessing
        return {
            **self.spec.record(), "device": str(self.device),
            "weights_sha256": file_sha256(self.spec.weights) if self.spec.weights else None,
            "preprocessing": {"mean": list(p.mean), "std": list(p.std), "source": self.preprocessing_source}
            if p is not None else {"source": "none"},
        }


def load(spec: ModelSpec, *, in_channels: int | None = None, num_classes: int | None = None,
         needs_weights: bool = True, log: Callable[[str], None] = print) -> LoadedModel:
    """Check ``spec``, build the model on its device, settle its preprocessing.

    ``num_classes`` (the data's class count) sizes a zoo model when the user gave no ``--num-classes``;
    weights made for another count are then loaded as they are, so that the caller's class check
    (:func:`xailab.jobs.classes.check_classes`) names the mismatch instead of a shape error.
    """
    from xailab.models import create_model, get_preprocessing, load_model, set_preprocessing

    spec.check(needs_weights=needs_weights)
    device = resolve_device(spec.device)
    nc = spec.num_classes or num_classes
    kw: dict[str, Any] = {"num_classes": nc}
    if in_channels is not None:
        kw["in_channels"] = in_channels
    if spec.pretrained and not spec.weights:
        model = create_model(spec.name, pretrained=True, **kw)
    elif spec.weights:
        model = _load_sized(spec, kw, fallback=spec.num_classes is None and num_classes is not None)
    else:  # the random initialisation is seeded: a later job (compare, crosscheck) rebuilds the same model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = load_model(spec.name, None, **kw)
    prep = get_preprocessing(model)
    source = "model" if prep is not None else "none"
    channels = prep.channels if prep is not None else first_channels(model)
    user = spec.user_preprocessing(channels) if channels else None
    if user is not None:
        prep = Preprocessing(mean=user[0], std=user[1], channels=len(user[0]),
                             input_size=prep.input_size if prep is not None else None,
                             resize=prep.resize if prep is not None else None)
        set_preprocessing(model, prep)
        source = "user"
    return LoadedModel(model.to(device).eval(), prep, device, spec, source)


def _load_sized(spec: ModelSpec, kw: dict[str, Any], *, fallback: bool) -> nn.Module:
    """``load_model`` sized by ``kw``; with ``fallback``, weights of another class count load at the
    model's own size (the class check that follows says what does not agree)."""
    from xailab.models import load_model

    try:
        return load_model(spec.name, spec.weights, **kw)
    except CheckpointError:
        if not fallback:
            raise
        try:
            return load_model(spec.name, spec.weights, **{**kw, "num_classes": None})
        except (CheckpointError, ModelError):
            pass
        raise


def first_channels(model: nn.Module) -> int | None:
    """Input channels of the first convolution (None when the model has none)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def settle_preprocessing(loaded: LoadedModel, dataset: Any, log: Callable[[str], None] = print) -> Preprocessing | None:
    """The normalisation the images get: the model's or the user's, else the dataset's, with a warning.

    ``dataset`` is what :func:`xailab.data.load_images` returned (or None for files and folders).
    """
    from xailab.models import set_preprocessing

    if loaded.preprocessing is not None:
        return loaded.preprocessing
    if dataset is not None and getattr(dataset, "normalize", False):
        prep = dataset.preprocessing
        log(f"warning: the weights of {loaded.spec.name} carry no recorded preprocessing; the images are "
            f"normalised with the dataset's statistics (mean {_fmt(prep.mean)}, std {_fmt(prep.std)}). If the "
            "model was trained with other statistics, give --mean/--std or --input-range")
        set_preprocessing(loaded.model, prep)
        loaded.preprocessing, loaded.preprocessing_source = prep, "dataset"
        return prep
    if loaded.spec.name and not is_zoo_name(loaded.spec.name):
        log(f"warning: the weights of {loaded.spec.name} carry no recorded preprocessing; the images go in as "
            "pixels in [0, 1]. If the model was trained on normalised inputs, give --mean/--std or --input-range")
    return None


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in blocks."""
    h = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def num_outputs(model: nn.Module, example: torch.Tensor) -> int:
    """The number of scores the model gives for one input (one forward pass)."""
    with torch.no_grad():
        out = model(example[:1])
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise ModelError(f"the model returned {type(out).__name__}; it must return logits [batch, classes]")
    return int(out.shape[1])
