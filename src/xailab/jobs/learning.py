"""The learning job: explain a train run's tracked instances at every saved epoch, and measure how
the explanations moved (when did the model learn to look there?).

    from xailab.jobs.learning import LearningSpec, learning_to_run
    run = learning_to_run(LearningSpec(run="runs/c10", methods=("gradcam", "saliency"), epochs="1-15"))

The same as ``xailab learning RUN``. Writes into the train run itself (see
:mod:`xailab.dynamics.learning` for the layout): the images are decoded once, the model is
loaded once per epoch, every method of that epoch runs on it, and each (epoch, method) is
stored on its own, so a rerun after a kill skips what is done and computes the rest. The
analysis (drift, settling, flips, region mass; tables ``learning_steps``, ``learning_instances``,
``learning_flips``, ``learning_classes``; manifest section ``learning``) and the figures
(``files/learning/``, strips in ``files/instances/<id>/learning.png``) are remade at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xailab.core.errors import InputError
from xailab.runs.store import Run, RunError

TABLES = ("learning_steps", "learning_instances", "learning_flips", "learning_classes", "learning_times",
          "learning_spray", "learning_concepts")


@dataclass(frozen=True)
class LearningSpec:
    """What ``xailab learning`` is asked to do (see ``xailab learning --help``)."""

    run: str
    methods: tuple[str, ...] = ("gradcam", "saliency")
    epochs: str | None = None
    target: Literal["true", "top1"] = "true"
    regions: tuple[str, ...] = ()
    method_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    layer: str | None = None
    limit: int | None = None
    batch_size: int = 64
    top: float = 0.1
    settle: float = 0.8
    window: int = 2
    strips: int = 24
    concepts: int = 0
    device: str = "cpu"

    def identity(self) -> dict[str, Any]:
        """What the stored maps depend on: a resume with other values would mix maps."""
        return {"target": self.target, "layer": self.layer, "limit": self.limit,
                "params": {m: dict(self.method_params.get(m, {})) for m in self.methods}}


def _check_spec(spec: LearningSpec) -> None:
    if not spec.methods or len(set(spec.methods)) != len(spec.methods):
        raise InputError("--methods needs one or more distinct method names")
    if spec.target not in ("true", "top1"):
        raise InputError(f"--target must be true or top1, got {spec.target!r}")
    if spec.limit is not None and spec.limit < 1:
        raise InputError("--limit must be >= 1")
    if not 0 < spec.top <= 1 or not -1 <= spec.settle <= 1 or min(spec.window, spec.strips, spec.concepts) < 0:
        raise InputError("--top must lie in (0, 1], --settle in [-1, 1], --window, --strips and --concepts >= 0")


def _epochs(run: Run, spec: LearningSpec) -> list[int]:
    from xailab.dynamics.history import parse_epochs
    from xailab.train.checkpoint import epoch_weights

    have = np.array(sorted(epoch_weights(run.path / "checkpoints")), np.int64)
    if len(have) == 0:
        raise RunError(f"run {run.path} has no per-epoch checkpoints (checkpoints/epoch-NNNN.safetensors)")
    lo, hi = parse_epochs(spec.epochs, have)
    return [int(e) for e in have if lo <= e <= hi]


def _tracked(run: Run, limit: int | None, dataset: Any) -> tuple[np.ndarray, Any]:
    """The tracked instance ids (the flow's, in its order; ``limit``: a stratified sample) and their dataset."""
    from xailab.dynamics.history import recorded_epochs
    from xailab.dynamics.thumbnails import tracked_dataset
    from xailab.train.recipe import stratified_indices
    from xailab.train.recorder import read_predictions

    first = int(recorded_epochs(run)[0])
    rows = read_predictions(run, epochs=[first])
    ids = rows["instance"].to_numpy().astype(np.int64)
    keep = stratified_indices(rows["label"].to_numpy(), limit, 0)  # a stratified sample, as --track-limit
    return (ids if keep is None else ids[np.sort(keep)]), (tracked_dataset(run) if dataset is None else dataset)


def _claim(run: Run, spec: LearningSpec, ids: np.ndarray) -> None:
    """Record what the maps are made of, or refuse a resume that would mix other maps in."""
    from xailab.dynamics.learning import INSTANCES

    old = (run.manifest.get("learning") or {}).get("identity")
    new = spec.identity()
    if old is not None:
        clash = [k for k in ("target", "layer", "limit") if old.get(k) != new[k]]
        clash += [f"{m} parameters" for m in spec.methods
                  if m in (old.get("params") or {}) and old["params"][m] != new["params"][m]]
        if clash:
            raise RunError(f"run {run.path} holds maps made with other settings ({', '.join(clash)}); "
                           "rerun with the same settings to resume, or remove its arrays learning-*")
        new = {**old, "params": {**(old.get("params") or {}), **new["params"]}}
    if run.has_chunk(INSTANCES, 0) and not np.array_equal(run.read_array(INSTANCES), ids):
        raise RunError(f"run {run.path} holds maps of other tracked instances; remove its arrays learning-*")
    run.write_array(INSTANCES, ids, chunk=0)
    run.update_manifest("learning", {**(run.manifest.get("learning") or {}), "identity": new})


def _explain_epoch(run: Run, spec: LearningSpec, model: Any, epoch: int, todo: list[str], x: Any, labels: Any,
                   log: Callable[[str], None]) -> None:
    """Every method of ``todo`` on this epoch's model; each (epoch, method) stored on its own."""
    import pandas as pd

    from xailab.core.registry import create
    from xailab.dynamics.learning import encode, maps_name, scale_name
    from xailab.jobs.explain_plan import method_kwargs

    for name in todo:
        kw = method_kwargs(name, dict(spec.method_params.get(name, {})), spec.layer, quick=False)
        kw.setdefault("batch_size", spec.batch_size)
        cpu, wall = time.process_time(), time.perf_counter()
        expl = create(name, model, **kw).explain(x, spec.target, labels=labels)
        native = expl.extras.get("cam")  # a CAM at its layer's resolution, before upsampling
        chosen = native[:, 0] if native is not None and native.dim() == 4 else expl.pixel_maps()[:, 0]
        maps = chosen.detach().cpu().float().numpy()
        m16, scale = encode(maps)
        run.write_array(scale_name(name), scale, chunk=epoch)
        path = run.write_array(maps_name(name), m16, chunk=epoch)  # last: marks (epoch, method) done
        row = {"method": name, "epoch": epoch, "cpu_s": time.process_time() - cpu,
               "wall_s": time.perf_counter() - wall, "bytes": path.stat().st_size + scale.nbytes + 128,
               "instances": len(maps), "map_h": maps.shape[1], "map_w": maps.shape[2]}
        run.write_table("learning_times", pd.DataFrame([row]), part=f"{name}-{epoch:04d}")
        log(f"epoch {epoch:3d}  {name:<12s} {row['cpu_s']:7.1f} s CPU  {row['bytes'] / 1024:7.1f} KiB")


def learning_to_run(spec: LearningSpec, *, dataset: Any = None, log: Callable[[str], None] = print) -> Run:
    """Explain ``spec.run``'s tracked instances at each of its saved epochs, then analyse (resumable).

    ``dataset``: the tracked dataset (its ``instance`` ids index it) for runs not made by
    ``xailab train`` (e.g. a poisoned run whose predictions were back-filled on triggered images);
    by default it is rebuilt from the run's settings."""
    import torch

    from xailab.dynamics.learning import explained_epochs
    from xailab.jobs.common import job_lock
    from xailab.train.checkpoint import epoch_weights, load_weights
    from xailab.train.recipe import model_from_run

    _check_spec(spec)
    run = Run.open(spec.run)
    epochs = _epochs(run, spec)
    ids, dataset = _tracked(run, spec.limit, dataset)
    with job_lock(run.path, log):
        _claim(run, spec, ids)
        items = [dataset[int(i)] for i in ids]  # decoded once, for every epoch and method
        x = torch.stack([it[0] for it in items])
        labels = torch.tensor([int(it[1]) for it in items])
        ckpts = epoch_weights(run.path / "checkpoints")
        model = None
        for e in epochs:
            todo = [m for m in spec.methods if e not in explained_epochs(run, m)]
            if not todo:
                continue
            if model is None:
                model, _ = model_from_run(run, str(e))
                model.to(torch.device(spec.device))
            else:
                load_weights(ckpts[e], model)
            model.eval()
            _explain_epoch(run, spec, model, e, todo, x.to(spec.device), labels, log)
        if spec.concepts:
            from xailab.jobs.learning_concepts import concepts_over_epochs

            if model is None:
                model, _ = model_from_run(run, str(epochs[-1]))
                model.to(torch.device(spec.device))
            concepts_over_epochs(run, model, ckpts, epochs, spec.concepts, x.to(spec.device), labels, spec.layer, log)
        from xailab.jobs.learning_report import write_analysis

        write_analysis(run, spec, epochs, (int(x.shape[-2]), int(x.shape[-1])), dataset, log)
    return run


def remove_learning(run: Run) -> None:
    """Delete every stored map and table of this job (start over with other settings)."""
    import shutil

    for name in run.arrays():
        if name.startswith("learning-"):
            shutil.rmtree(run.array_dir(name), ignore_errors=True)
    for name in TABLES:
        shutil.rmtree(run.table_dir(name), ignore_errors=True)
    shutil.rmtree(Path(run.path) / "files" / "learning", ignore_errors=True)
