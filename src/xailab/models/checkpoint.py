"""Weights in and out, safely.

* :func:`save_weights` writes safetensors (tensors only, no code), atomically (temporary file,
  then rename), with the model's preprocessing and any extra metadata in the header.
* :func:`load_weights` reads safetensors, or a PyTorch state dict with
  ``torch.load(weights_only=True)``: a pickle that would build anything other than tensors and
  plain containers is refused with :class:`CheckpointError`, never executed. Common wrappers
  (``{"state_dict": ...}``, ``{"model": ...}``, DataParallel's ``module.`` prefix) are unwrapped.
  A state dict that does not fit the model is an error naming the missing, unexpected and
  mis-shaped keys.

    save_weights(model, "runs/cnn/best.safetensors", metadata={"epoch": 12})
    load_weights(create_model("cifar_cnn"), "runs/cnn/best.safetensors")
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import CheckpointError
from xailab.data.transforms import Preprocessing
from xailab.models.preprocessing import get_preprocessing, set_preprocessing

_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights")
_OPTIONAL = ("num_batches_tracked",)  # BatchNorm counters, absent from many published files


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file (8-byte header length, then ``{``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100 << 20


def is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (``torch.jit.save``): a zip with ``code/``."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n or n.startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file (``{}`` for other files)."""
    p = Path(path)
    if not is_safetensors(p):
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"corrupt safetensors file {p}: {e}") from e


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file or a ``torch.save``-d state dict, loaded safely on CPU."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"weights file not found: {p}")
    if is_safetensors(p):
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as e:
            raise CheckpointError(f"corrupt safetensors file {p}: {e}") from e
    if is_torchscript(p):
        raise CheckpointError(
            f"{p} is a TorchScript model, not a weights file: pass it as the model (load_model('{p}'))"
        )
    if p.suffix == ".safetensors" or p.stat().st_size == 0:
        what = "empty (0 bytes)" if p.stat().st_size == 0 else "not a safetensors file (no safetensors header)"
        raise CheckpointError(f"cannot read weights {p}: the file is {what}")
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        raise CheckpointError(
            f"refused to load {p}: it holds Python objects other than tensors"
            f"{f' ({found.group(1)})' if found else ''}, and unpickling them could run code; save a "
            "state dict (torch.save(model.state_dict(), path)) or safetensors instead"
        ) from e
    except Exception as e:  # torch, zipfile and pickle raise many kinds for a damaged file
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(f"corrupt or unreadable checkpoint {p}: {type(e).__name__}: {first}") from e
    return _unwrap(obj, p)


def _unwrap(obj: Any, p: Path) -> dict[str, Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{p} holds no state dict (got {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}
    if not sd:
        raise CheckpointError(f"{p} holds no tensors")
    if all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def fit_report(model: nn.Module, sd: Mapping[str, Tensor]) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith(_OPTIONAL)]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    parts = []

    def few(xs: list[str]) -> str:
        return ", ".join(xs[:5]) + (f" ... ({len(xs)} in all)" if len(xs) > 5 else "")

    if missing:
        parts.append(f"missing keys: {few(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {few(unexpected)}")
    if shapes:
        parts.append(f"shape mismatch: {few(shapes)}")
    return "; ".join(parts)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load ``path`` (safetensors or state dict) into ``model`` strictly; returns ``model``.

    BatchNorm's ``num_batches_tracked`` counters may be absent. A safetensors file saved by
    :func:`save_weights` also restores the model's recorded preprocessing.
    """
    p = Path(path).expanduser()
    sd = read_state_dict(p)
    problem = fit_report(model, sd)
    if problem:
        hint = ""
        if "shape mismatch" in problem and any(isinstance(m, nn.Linear) for m in model.modules()):
            hint = " (a model for another number of classes? pass num_classes=)"
        raise CheckpointError(f"{p} does not fit {type(model).__name__}: {problem}{hint}")
    try:
        model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # pragma: no cover - fit_report catches what strict loading would
        raise CheckpointError(f"{p} does not fit {type(model).__name__}: {e}") from e
    meta = read_metadata(p)
    if "xailab.preprocessing" in meta:
        with contextlib.suppress(ValueError, KeyError, TypeError):  # a foreign or old header: ignore
            set_preprocessing(model, Preprocessing.from_dict(json.loads(meta["xailab.preprocessing"])))
    return model


def save_weights(model: nn.Module, path: str | Path, *, metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``model``'s state dict as safetensors, atomically; returns the path.

    ``metadata`` values are stored as strings (JSON for non-strings), with the model's
    preprocessing under ``xailab.preprocessing``; read them with :func:`read_metadata`.
    """
    from safetensors.torch import save_file

    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    prep = get_preprocessing(model)
    if prep is not None:
        meta.setdefault("xailab.preprocessing", json.dumps(prep.to_dict()))
    meta.setdefault("xailab.model_class", type(model).__name__)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p


def find_pretrained(relative: str) -> Path:
    """A published weights file under the default data places (see :mod:`xailab.data.locate`)."""
    from xailab.data.locate import search_dirs

    for d in search_dirs():
        if (d / relative).is_file():
            return d / relative
    raise CheckpointError(
        f"pretrained weights {relative} not found under {', '.join(str(d) for d in search_dirs())}; "
        "pass weights=<path> or set XAILAB_DATA to the folder holding it"
    )
