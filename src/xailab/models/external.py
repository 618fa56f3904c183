"""Models from timm and Hugging Face, by spec, with the preprocessing their own config gives.

* ``"timm:NAME"`` builds any timm architecture (``timm.list_models()``); keyword arguments of
  ``timm.create_model`` follow the name after commas: ``"timm:vit_tiny_patch16_224,img_size=32,
  patch_size=4,depth=4"``. ``pretrained=True`` loads timm's own weights where they are cached
  (nothing is downloaded here if the machine is offline: the error says so); ``weights=`` a
  safetensors file or state dict; ``in_chans``, ``num_classes`` and ``img_size`` left out of the
  spec are read from those weights' shapes (``timm:vit_tiny_patch16_224`` loads a patch-16 ViT
  trained on 1-channel 64x64 images; other differences are refused with the spec to write).
* ``"hf:PATH"`` loads a local Hugging Face image-classification folder (``config.json`` and
  ``model.safetensors``; pickled ``.bin`` weights are refused), or a model id already in the
  Hugging Face cache. The model is wrapped so it returns the logits tensor, not an output object.

Mean, std, input size, resize (from timm's ``crop_pct`` or the processor's shortest edge) and
interpolation are read from the model's config and recorded as its
:class:`~xailab.data.transforms.Preprocessing` (what a run stores). timm and transformers are
optional: ``pip install 'xailab[modern]'``.

    model = load_external("timm:convnext_atto", num_classes=10)
    get_preprocessing(model).interpolation      # 'bicubic'
    model = load_external("hf:./my-vit")         # returns logits [N, classes]
"""

from __future__ import annotations

import ast
import difflib
import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from xailab.core.errors import CheckpointError, ModelError
from xailab.data.transforms import Preprocessing
from xailab.models.preprocessing import set_preprocessing

PREFIXES = ("timm:", "hf:")
_INSTALL = "pip install 'xailab[modern]' (or pip install {pkg})"
_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "bilinear"}


def is_external(spec: str) -> bool:
    """Whether ``spec`` names a timm or Hugging Face model."""
    return spec.startswith(PREFIXES)


def _require(pkg: str) -> Any:
    try:
        return __import__(pkg)
    except ImportError as e:
        raise ModelError(f"'{pkg}:' models need the {pkg} package: {_INSTALL.format(pkg=pkg)}") from e


def parse_timm_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"timm:vit_tiny_patch16_224,img_size=32"`` -> ``("vit_tiny_patch16_224", {"img_size": 32})``."""
    name, *pairs = spec.removeprefix("timm:").split(",")
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, eq, raw = pair.partition("=")
        if not eq or not key.strip().isidentifier():
            raise ModelError(f"timm spec {spec!r}: write keyword arguments as ',key=value' after the name")
        try:
            kwargs[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = raw.strip()
    return name.strip(), kwargs


def _timm(spec: str, num_classes: int | None, in_channels: int | None, pretrained: bool,
          weights: str | Path | None = None) -> nn.Module:
    timm = _require("timm")
    name, kwargs = parse_timm_spec(spec)
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise ModelError(f"timm has no model {name!r}{hint} (xailab models 'timm:*' lists them)")
    if num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if in_channels is not None:
        kwargs.setdefault("in_chans", in_channels)

    def build(kw: dict[str, Any]) -> nn.Module:
        try:
            made: nn.Module = timm.create_model(name, pretrained=pretrained, **kw)
        except TypeError as e:
            raise ModelError(f"timm model {name!r} does not take these arguments: {e}") from e
        except (RuntimeError, OSError) as e:  # no cached weights and no network, a bad file, ...
            what = ("its pretrained weights could not be loaded (are they in timm's cache?)" if pretrained
                    else "it could not be built")
            raise ModelError(f"timm model {name!r}: {what}: {str(e).splitlines()[0]}") from e
        return made

    model = build(kwargs)
    if weights is not None:  # in_chans / num_classes / img_size the weights fix, where the spec leaves them open
        from xailab.models.checkpoint import read_state_dict
        from xailab.models.timm_weights import fit_to_weights

        model, filled = fit_to_weights(build, name, kwargs, model, read_state_dict(Path(weights).expanduser()),
                                       str(weights))
        kwargs.update(filled)
    cfg = timm.data.resolve_data_config({}, model=model)
    c, h, w = cfg["input_size"]
    built = getattr(getattr(model, "patch_embed", None), "img_size", None)  # img_size= changes it
    if built is not None and "img_size" in kwargs:
        h, w = (int(built[0]), int(built[1])) if isinstance(built, tuple | list) else (int(built), int(built))
    crop = float(cfg.get("crop_pct") or 1.0)
    resize = math.floor(min(h, w) / crop) if crop < 1.0 else None
    channels = int(kwargs.get("in_chans", c))  # timm's config keeps its RGB statistics for in_chans=1
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    if len(mean) != channels:
        mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
    prep = Preprocessing(mean=mean, std=std, input_size=(h, w), resize=resize,
                         channels=channels, interpolation=_interp(cfg.get("interpolation", "bilinear")))
    set_preprocessing(model, prep)
    return model


def _interp(name: str) -> str:
    return name if name in ("bilinear", "bicubic", "nearest", "lanczos", "box") else "bilinear"


class HFLogits(nn.Module):
    """A Hugging Face image classifier returning its logits tensor: ``self.model(pixel_values=x).logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.model(pixel_values=x).logits
        return out


def _hf_folder(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} is not a Hugging Face model folder: it has no config.json")
    if not any(path.glob("*.safetensors")):
        pickled = [p.name for p in path.glob("*.bin")]
        why = (f"it holds only pickled weights ({', '.join(pickled)}), which are refused because unpickling "
               "can run code; convert them to model.safetensors") if pickled else "it has no *.safetensors weights"
        raise CheckpointError(f"Hugging Face folder {path}: {why}")


def _hf(spec: str, num_classes: int | None) -> nn.Module:
    _require("transformers")
    import transformers

    transformers.utils.logging.disable_progress_bar()
    ident = spec.removeprefix("hf:")
    path = Path(ident).expanduser()
    if path.exists():
        _hf_folder(path)
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True, "attn_implementation": "eager"}
    try:
        model = transformers.AutoModelForImageClassification.from_pretrained(str(path if path.exists() else ident), **kwargs)
    except (OSError, ValueError, KeyError) as e:
        where = f"folder {path}" if path.exists() else f"{ident!r} (not a folder, not in the Hugging Face cache; no download is tried)"
        raise ModelError(f"cannot load the Hugging Face model {where}: {str(e).splitlines()[0]}") from e
    wrapped = HFLogits(model).eval()
    n = int(model.config.num_labels)
    if num_classes is not None and num_classes != n:
        raise ModelError(f"the Hugging Face model has {n} labels but {num_classes} classes were asked for")
    set_preprocessing(wrapped, _hf_preprocessing(path if path.exists() else None, model.config))
    return wrapped


def _hf_preprocessing(folder: Path | None, config: Any) -> Preprocessing:
    """From ``preprocessor_config.json`` (mean, std, size, resample, crop); else the config's image size
    and the ViT processor's defaults (mean = std = 0.5), with a warning."""
    channels = int(getattr(config, "num_channels", 3))
    raw: dict[str, Any] = {}
    if folder is not None and (folder / "preprocessor_config.json").is_file():
        raw = json.loads((folder / "preprocessor_config.json").read_text())
    else:
        import warnings

        warnings.warn("the Hugging Face model has no preprocessor_config.json: assuming mean = std = 0.5 "
                      "(ViTImageProcessor's defaults); add a preprocessor_config.json with image_mean/image_std "
                      "if it was trained otherwise", stacklevel=4)
    size: Any = raw.get("crop_size") or raw.get("size") or getattr(config, "image_size", 224)
    if isinstance(size, dict):
        if "height" in size:
            hw = (int(size["height"]), int(size["width"]))
        else:
            edge = int(size.get("shortest_edge", 224))
            hw = (edge, edge)
    else:
        hw = (int(size), int(size))
    resize = None
    if raw.get("crop_size") and isinstance(raw.get("size"), dict) and "shortest_edge" in raw["size"]:
        resize = int(raw["size"]["shortest_edge"])
    elif raw.get("crop_pct"):
        resize = math.floor(min(hw) / float(raw["crop_pct"]))
    return Preprocessing(mean=tuple(raw.get("image_mean", (0.5,) * channels)),
                         std=tuple(raw.get("image_std", (0.5,) * channels)), input_size=hw, resize=resize,
                         channels=channels, interpolation=_HF_RESAMPLE.get(int(raw.get("resample", 2)), "bilinear"))


def load_external(
    spec: str, *, num_classes: int | None = None, in_channels: int | None = None, pretrained: bool = False,
    weights: str | Path | None = None,
) -> nn.Module:
    """A ``timm:`` or ``hf:`` model in eval mode, its preprocessing recorded (see the module docstring).

    With ``weights`` (not loaded here), a timm model's ``in_chans``, ``num_classes`` and
    ``img_size`` not given in the spec are read from the weights' shapes
    (:mod:`xailab.models.timm_weights`); weights that still do not fit are refused with the spec
    to use.
    """
    if spec.startswith("timm:"):
        return _timm(spec, num_classes, in_channels, pretrained, weights).eval()
    if spec.startswith("hf:"):
        return _hf(spec, num_classes)
    raise ModelError(f"{spec!r} is not a timm: or hf: model spec")


def list_timm(pattern: str = "*") -> list[str]:
    """timm's architectures matching a shell-style ``pattern`` (without the ``timm:`` prefix)."""
    timm = _require("timm")
    names: list[str] = timm.list_models(pattern)
    return names


__all__ = ["PREFIXES", "HFLogits", "is_external", "list_timm", "load_external", "parse_timm_spec"]
