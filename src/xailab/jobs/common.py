"""What every job shares: the output folder checked, the run locked, provenance recorded.

* :func:`check_out`: ``out`` is a new folder, an empty one, or a run of this job's kind; a file
  or a folder of the user's own files is refused with one line, before anything is written.
* :func:`job_lock`: one job at a time on one run (a second process waits, then resumes).
* :func:`provenance`: what a run was made from (model spec, weights sha256, preprocessing, data
  identity, parameters, targets, xailab version), written by the jobs into section ``provenance``;
  :func:`check_inputs` refuses a rerun into the run with other inputs, naming what differs.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xailab.runs.store import Run, RunError


def check_out(out: str | Path, kinds: Sequence[str] = (), *, new_only: bool = False) -> bool:
    """Refuse an ``out`` that is a file, a folder of other files, or a run of another kind.

    Returns True when the run does not exist yet (the job creates it).
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {out} is a file; give a folder for the run")
    if not path.exists() or not any(p for p in path.iterdir() if p.name not in (".lock", ".job.lock")):
        return True
    if not (path / "manifest.json").is_file():
        raise RunError(f"--out {out} is a folder holding files that are not an xailab run; "
                       "choose a new or empty folder")
    if new_only:
        raise RunError(f"{out} exists and is not empty; choose a new --out")
    kind = Run.open(path).manifest.get("kind")
    if kinds and kind not in kinds:
        raise RunError(f"--out {out} is a {kind} run, not a {'/'.join(kinds)} run; choose another --out")
    return False


@contextmanager
def job_lock(out: str | Path, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``out/.job.lock`` for the whole job: a second job on the same run waits its turn.

    A folder this job created is removed again when the job fails before the run exists
    (no ``manifest.json``), so a refused job leaves nothing behind.
    """
    path = Path(out)
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        with open(path / ".job.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"another job is writing into {path}; waiting for it to finish")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    except BaseException:
        if not existed and not (path / "manifest.json").exists():
            shutil.rmtree(path, ignore_errors=True)
        raise


def remove_if_new(out: str | Path, new: bool) -> None:
    """Remove a run folder a failed job created (nothing finished in it is lost)."""
    path = Path(out)
    if new and path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def tensor_sha256(x: Tensor | np.ndarray) -> str:
    """SHA-256 of an array's shape, dtype and values (the identity of an image set)."""
    a = x.detach().cpu().contiguous().numpy() if isinstance(x, Tensor) else np.ascontiguousarray(x)
    h = hashlib.sha256(f"{a.shape}:{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def model_sha256(model: nn.Module) -> str:
    """SHA-256 of a model's parameters and buffers (names, shapes and values): its weights' identity."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


def check_made_by(run: Run, model: nn.Module, job: str) -> str:
    """Refuse to score or check the maps of explain run ``run`` with another model than the one that
    made them (the run records its weights' identity); returns the model's sha256."""
    made = ((run.manifest.get("explain") or {}).get("identity") or {}).get("model")
    sha = model_sha256(model)
    if made is not None and made != sha:
        raise RunError(f"the maps of run {run.path} were made by another model (other weights) than the one {job} "
                       f"loaded; {job} needs the model that made them: drop --model/--weights, or give those the "
                       "run was explained with")
    return sha


def check_fitted_with(run: Run, model: dict[str, Any], job: str) -> None:
    """Refuse to use the concepts (or other fitted results) of run ``run`` with another model than
    the one they were fitted on: ``model`` is the loaded model's provenance, compared by weights sha256
    with the one the run recorded (a run that recorded none passes)."""
    made = (run.manifest.get("provenance") or {}).get("model")
    if not isinstance(made, dict) or "weights_sha256" not in made:
        return
    if made.get("weights_sha256") != model.get("weights_sha256"):
        raise RunError(f"run {run.path} was fitted on another model (other weights) than the one {job} loaded; "
                       f"{job} needs the model it was fitted on: drop --model/--weights, or give those the run "
                       "was made with")


def provenance(model: dict[str, Any] | None, *, data: dict[str, Any] | None = None,
               params: dict[str, Any] | None = None, targets: Any = None) -> dict[str, Any]:
    """The ``provenance`` section of a run: model, data, parameters, targets, xailab version."""
    from xailab import __version__

    return {"xailab": __version__, "model": model, "data": data or {}, "params": params or {},
            "targets": targets}


def write_provenance(run: Run, section: dict[str, Any]) -> None:
    """Record ``section`` as the run's provenance (what it was made from)."""
    run.update_manifest("provenance", section)


def recorded(run_path: str | Path) -> dict[str, Any]:
    """The provenance a run recorded (``{}`` for a run made before it was recorded)."""
    try:
        return dict(Run.open(run_path).manifest.get("provenance") or {})
    except RunError:
        return {}


# what may differ between a run and its rerun (where it runs, not what it computes)
NOT_INPUTS = frozenset({"device", "epochs", "quiet", "workers", "eval_batch_size", "progress"})


def dataset_sha256(ds: Any) -> str:
    """SHA-256 of a dataset's identity: its raw images, labels and class names (an ``ImageDataset``)."""
    h = hashlib.sha256(tensor_sha256(ds.images).encode())
    h.update(tensor_sha256(ds.targets).encode())
    h.update(json.dumps([str(c) for c in ds.classes]).encode())
    return h.hexdigest()


def differences(old: Any, new: Any, where: str = "") -> list[str]:
    """``key: old -> new`` for every leaf that differs (keys of :data:`NOT_INPUTS` ignored)."""
    old, new = json.loads(json.dumps(old, default=str)), json.loads(json.dumps(new, default=str))
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            if k not in NOT_INPUTS:
                out += differences(old.get(k), new.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if old == new else [f"{where or 'value'}: {_short(old)} -> {_short(new)}"]


def _short(v: Any) -> str:
    text = str(v)
    return text[:12] + "..." if len(text) > 40 and " " not in text else (text[:60] + "..." if len(text) > 60 else text)


def check_inputs(out: str | Path, section: dict[str, Any], *, key: str = "provenance") -> None:
    """Refuse to resume run ``out`` when it was made from other inputs than ``section`` (a
    :func:`provenance`), naming what differs; a new run, or one that recorded none, passes."""
    path = Path(out)
    if not (path / "manifest.json").is_file():
        return
    old = Run.open(path).manifest.get(key)
    if not old:
        return
    diffs = differences(old, section)
    if diffs:
        more = f"; and {len(diffs) - 4} more" if len(diffs) > 4 else ""
        raise RunError(f"run {out} was made from other inputs ({'; '.join(diffs[:4])}{more}); writing into it "
                       "would mix results of different inputs: choose another --out (or remove the run to recompute)")
