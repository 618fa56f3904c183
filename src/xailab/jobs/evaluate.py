"""The evaluate job: accuracy, per-class accuracy, confusion, macro precision / recall / F1, loss.

    from xailab.jobs.evaluate import EvaluateSpec, evaluate_to_run
    run = evaluate_to_run(EvaluateSpec(run="runs/c10"))                 # a train run's best checkpoint
    run = evaluate_to_run(EvaluateSpec(model=ModelSpec("resnet20", weights="w.safetensors"),
                                       data="cifar10"), out="runs/eval")

Either a run made by ``xailab train`` (its best checkpoint by default; the result is stored in
the run) or a model with weights (stored in ``out`` when given). An explain run is scored with
the compare job instead (its methods' scoreboard).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xailab.core.errors import InputError
from xailab.jobs.model import ModelSpec
from xailab.runs.store import Run


@dataclass(frozen=True)
class EvaluateSpec:
    """What ``xailab evaluate`` is asked to do: ``run`` or ``model`` (with ``data``)."""

    run: str | None = None
    checkpoint: str = "best"
    model: ModelSpec | None = None
    data: str | None = None
    data_root: str | None = None
    split: str = "test"
    limit: int | None = None
    batch_size: int = 512
    device: str = "auto"
    seed: int = 0
    backend: Any = None


def evaluate_to_run(spec: EvaluateSpec, out: str | Path | None = None, *,
                    log: Callable[[str], None] = print) -> Run | None:
    """Evaluate and store the result (in ``spec.run``, or in ``out`` for a model); returns that run."""
    if spec.backend is not None and not (spec.run and Run.open(spec.run).manifest.get("kind") == "explain"):
        raise InputError("--backend ray applies to an explain run (its methods' scoreboard); evaluating a "
                         "model is one forward pass per image and runs here")
    if bool(spec.run) == bool(spec.model and spec.model.name):
        raise InputError("give either --run RUN, or --model SPEC with --weights FILE and --data NAME")
    if spec.run and Run.open(spec.run).manifest.get("kind") == "explain":  # evaluate the explanations
        from xailab.jobs.compare import CompareSpec, compare_to_run
        from xailab.metrics.scoreboard import format_board

        log(f"{spec.run} is an explain run: scoring its methods (as `xailab compare {spec.run}`)")
        run = compare_to_run(CompareSpec(model={"device": spec.device}, backend=spec.backend), spec.run, log=log)
        log("\n" + format_board(run.read_table("scoreboard"), run.manifest.get("compare", {}).get("reference", "")))
        return run
    store, model, ds, name, what = _model_and_data(spec, log)
    from xailab.train import check_model_fits, evaluate, save_evaluation

    device = next((p.device for p in model.parameters()), None)
    check_model_fits(model, ds, len(ds.classes), device)
    ev = evaluate(model, ds, batch_size=spec.batch_size, device=device, classes=list(ds.classes), progress=True)
    log(f"{what} on {name} ({spec.split}, {len(ds)} items)\n")
    log(ev.format())
    if store is None and out is not None:
        assert spec.model is not None
        store = Run.create(out, kind="evaluate", config={"command": "evaluate", "model": spec.model.name,
                                                         "weights": spec.model.weights, "data": name,
                                                         "data_root": spec.data_root})
    if store is not None:
        label = spec.split if spec.checkpoint == "best" or not spec.run else f"{spec.split}@{spec.checkpoint}"
        if spec.limit:
            label += f"@n{len(ds)}"
        save_evaluation(store, ev, label)
        log(f"\nstored in {store.path} (tables evaluation, per_class, confusion; part {label!r})")
    return store


def _model_and_data(spec: EvaluateSpec, log: Callable[[str], None]) -> tuple[Run | None, Any, Any, str, str]:
    """(the run or None, the model on its device, the dataset normalised for it, data name, what)."""
    from xailab.core.hooks import resolve_device
    from xailab.data import load_dataset
    from xailab.jobs.model import load
    from xailab.train.recipe import model_from_run, model_normalization, stratified_sample

    if spec.run:
        store = Run.open(spec.run)
        cfg = store.manifest.get("config") or {}
        name = spec.data or cfg.get("data")
        root = spec.data_root if spec.data or spec.data_root else cfg.get("data_root")
        if not name:
            raise InputError(f"run {spec.run} does not name its dataset; pass --data")
        model, meta = model_from_run(store, spec.checkpoint)
        what = f"run {spec.run}, checkpoint {spec.checkpoint} (epoch {meta.get('epoch', '?')})"
        ds = stratified_sample(load_dataset(name, spec.split, root), spec.limit, spec.seed)
        d = store.manifest.get("dataset") or {}
        channels = int(ds[0][0].shape[0])
        norm = (tuple(d["mean"]), tuple(d["std"])) if d.get("mean") and len(d["mean"]) == channels else None
        model.to(resolve_device(spec.device))
    else:
        assert spec.model is not None
        if not spec.data:
            raise InputError("--model needs --data NAME (and usually --weights FILE)")
        spec.model.check()
        store, name = None, spec.data
        what = f"model {spec.model.name}" + (f" with {spec.model.weights}" if spec.model.weights else "")
        ds = stratified_sample(load_dataset(name, spec.split, spec.data_root), spec.limit, spec.seed)
        k, channels = len(ds.classes), int(ds[0][0].shape[0])
        loaded = load(spec.model, num_classes=k, in_channels=channels, log=log)
        model = loaded.model
        norm = model_normalization(model, channels)  # what the weights were trained on
        if loaded.preprocessing_source == "none":
            log(f"warning: the weights of {spec.model.name} carry no recorded preprocessing; the images are "
                "normalised with the dataset's statistics. If the model was trained otherwise, give "
                "--mean/--std or --input-range")
    if norm is not None:
        ds = ds.with_options(mean=norm[0], std=norm[1])
    return store, model, ds, name, what
