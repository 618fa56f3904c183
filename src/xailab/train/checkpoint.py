"""Training checkpoints as safetensors: model weights and optimizer state, never pickle.

Per epoch ``e`` the trainer writes two files into ``RUN/checkpoints/``::

    epoch-0003.safetensors         the model's state_dict (plain keys: loads with load_state_dict,
                                   ``xailab.models.load_weights`` or ``safetensors.torch.load_file``)
    epoch-0003.optim.safetensors   the optimizer's tensors (``state.<param>.<name>``) and, in the
                                   metadata, its param_groups, its non-tensor state and the
                                   trainer's own state (epoch, best epoch, ...) as JSON
    best.safetensors               the weights of the epoch with the best validation accuracy

The optimizer file is written last and is the epoch's commit marker: an epoch whose
``.optim`` file exists is complete (its records were written before it). By default only the
newest optimizer file is kept (``keep_optimizer_states=1``), so disk use grows by one model a
epoch, not three (Adam keeps two moments per weight).

    save_weights(path, model, meta={"epoch": 3})
    meta = load_weights(path, model)            # -> {"epoch": 3}
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from xailab.core.errors import CheckpointError
from xailab.runs.store import atomic_write_bytes

WEIGHTS_FORMAT = "xailab.weights"
OPTIM_FORMAT = "xailab.optimizer"
_EPOCH_RE = re.compile(r"^epoch-(\d+)\.safetensors$")
_OPTIM_RE = re.compile(r"^epoch-(\d+)\.optim\.safetensors$")


def _cpu_copies(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied weights, views)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a safetensors file ({e}); delete it, and rerun "
            "to resume from the epoch before"
        ) from None
    return tensors, meta


def save_weights(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any] | None = None) -> Path:
    """Write ``model.state_dict()`` to ``path`` atomically, with ``meta`` as JSON metadata (read
    back by :func:`load_weights`): :func:`xailab.models.save_weights`, the one weights writer,
    which also stores the model's preprocessing, so an explanation later normalises as training did."""
    from xailab.models.checkpoint import save_weights as write_weights

    header = {"format": WEIGHTS_FORMAT, "xailab": json.dumps(meta or {}, default=str)}
    return write_weights(model, Path(path), metadata=header)


def load_weights(path: str | os.PathLike[str], model: nn.Module) -> dict[str, Any]:
    """Load weights written by :func:`save_weights` (or any safetensors state_dict) into ``model``.

    Returns the JSON metadata. Raises :class:`CheckpointError` when the file is corrupt or its
    keys or shapes do not fit the model.
    """
    p = Path(path)
    tensors, meta = _read(p)
    problems = _mismatch(model.state_dict(), tensors)
    if problems:
        raise CheckpointError(f"checkpoint {p} does not fit this {type(model).__name__}: {problems} "
                              "(another architecture, or its code changed since the file was written?)")
    model.load_state_dict(tensors, strict=True)
    return json.loads(meta.get("xailab", "{}"))


def _mismatch(want: dict[str, torch.Tensor], have: dict[str, torch.Tensor]) -> str:
    """'' if ``have`` fits ``want`` key for key and shape for shape, else a short summary."""
    missing = [k for k in want if k not in have]
    extra = [k for k in have if k not in want]
    shapes = [f"{k} {tuple(have[k].shape)} vs {tuple(v.shape)}" for k, v in want.items()
              if k in have and have[k].shape != v.shape]
    parts = []
    for what, items in (("missing", missing), ("unexpected", extra), ("of another shape (file vs model)", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
            parts.append(f"{what}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, where) for k, v in value.items()}
    raise CheckpointError(f"optimizer state {where} holds a {type(value).__name__}, which cannot be "
                          "stored without pickle")


def save_optimizer(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer,
                   trainer_state: dict[str, Any] | None = None) -> Path:
    """Write the optimizer state (tensors as safetensors, the rest as JSON metadata) atomically."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = _jsonable(value, f"{pid}.{name}")
    info = {
        "class": type(optimizer).__name__,
        "param_groups": _jsonable(sd["param_groups"], "param_groups"),
        "scalars": scalars,
        "trainer": trainer_state or {},
    }
    data = st_save(_cpu_copies(tensors), metadata={"format": OPTIM_FORMAT, "xailab": json.dumps(info)})
    return atomic_write_bytes(Path(path), data)


def load_optimizer(path: str | os.PathLike[str], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore an optimizer saved by :func:`save_optimizer`; returns the stored trainer state."""
    p = Path(path)
    tensors, meta = _read(p)
    if meta.get("format") != OPTIM_FORMAT:
        raise CheckpointError(f"{p} is not an xailab optimizer checkpoint")
    info = json.loads(meta["xailab"])
    if info["class"] != type(optimizer).__name__:
        raise CheckpointError(f"{p} holds {info['class']} state, but the optimizer is "
                              f"{type(optimizer).__name__}")
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in info["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in info["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{p} does not fit this optimizer: {e}") from None
    return dict(info.get("trainer", {}))


def weights_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:04d}.safetensors"


def optimizer_path(folder: Path, epoch: int) -> Path:
    return folder / f"epoch-{epoch:04d}.optim.safetensors"


def epoch_weights(folder: str | os.PathLike[str]) -> dict[int, Path]:
    """``{epoch: path}`` of the per-epoch weight files in a checkpoint folder."""
    f = Path(folder)
    if not f.is_dir():
        return {}
    out = {}
    for p in f.iterdir():
        m = _EPOCH_RE.match(p.name)
        if m:
            out[int(m.group(1))] = p
    return dict(sorted(out.items()))


def committed_epochs(folder: str | os.PathLike[str]) -> list[int]:
    """Epochs whose optimizer file (the commit marker) and weights both exist, ascending."""
    f = Path(folder)
    if not f.is_dir():
        return []
    weights = epoch_weights(f)
    out = []
    for p in f.iterdir():
        m = _OPTIM_RE.match(p.name)
        if m and int(m.group(1)) in weights:
            out.append(int(m.group(1)))
    return sorted(out)
