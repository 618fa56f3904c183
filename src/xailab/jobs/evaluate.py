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
from xailab.runs.store import Run, RunError


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
    store, model, ds, name, what, made_from = _model_and_data(spec, log)
    from xailab.jobs.common import check_inputs
    from xailab.train import check_model_fits, evaluate

    if store is None and out is not None:  # before the work: an evaluation of another model is refused
        assert made_from is not None
        parts = made_from["data"].pop("parts")
        check_inputs(out, made_from)
        old = (Run.open(out).manifest.get("evaluated") or {}) if (Path(out) / "manifest.json").is_file() else {}
        if any(old.get(k, v) != v for k, v in parts.items()):
            raise RunError(f"run {out} holds an evaluation of other images under the same split "
                           f"({', '.join(parts)}); choose another --out")
        made_from["evaluated"] = parts
    device = next((p.device for p in model.parameters()), None)
    check_model_fits(model, ds, len(ds.classes), device)
    ev = evaluate(model, ds, batch_size=spec.batch_size, device=device, classes=list(ds.classes), progress=True)
    log(f"{what} on {name} ({spec.split}, {len(ds)} items)\n")
    log(ev.format())
    return _store(spec, store, ev, len(ds), made_from, out, log)


def _store(spec: EvaluateSpec, store: Run | None, ev: Any, n: int, made_from: dict[str, Any] | None, out: str | Path | None,
           log: Callable[[str], None]) -> Run | None:
    """The evaluation in the train run, or in ``out`` (created, with what it was made from)."""
    from xailab.jobs.common import write_provenance
    from xailab.train import save_evaluation

    if store is None and out is not None:
        assert spec.model is not None and made_from is not None
        store = Run.create(out, kind="evaluate", config={"command": "evaluate", **spec.model.record(),
                                                         "data": spec.data, "data_root": spec.data_root})
        parts = made_from.pop("evaluated")
        write_provenance(store, made_from)
        store.update_manifest("evaluated", {**(store.manifest.get("evaluated") or {}), **parts})
    if store is not None:
        label = _label(spec, store, n)
        save_evaluation(store, ev, label)
        log(f"\nstored in {store.path} (tables evaluation, per_class, confusion; part {label!r})")
    return store


def _label(spec: EvaluateSpec, store: Run | None, n: int) -> str:
    """The part an evaluation is stored under: split, checkpoint, another dataset than the run's, limit."""
    label = spec.split if spec.checkpoint == "best" or not spec.run else f"{spec.split}@{spec.checkpoint}"
    if store is not None and spec.run and spec.data and spec.data != (store.manifest.get("config") or {}).get("data"):
        label += f"@{spec.data}"  # another dataset than the run's: its own part, never the run's
    if spec.limit:
        label += f"@n{n}"
    return label


def _model_and_data(spec: EvaluateSpec, log: Callable[[str], None]) -> tuple[Any, ...]:
    """(the run or None, the model on its device, the dataset normalised for it, data name, what, provenance):
    the model's classes checked against the data's (:func:`xailab.jobs.classes.check_classes`)."""
    from xailab.core.hooks import resolve_device
    from xailab.data import load_dataset
    from xailab.jobs.classes import check_classes
    from xailab.jobs.common import dataset_sha256, provenance
    from xailab.jobs.model import load, num_outputs
    from xailab.train.recipe import (
        checkpoint_file,
        model_from_run,
        model_normalization,
        stratified_sample,
    )

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
        weights: str | None = str(checkpoint_file(store, spec.checkpoint))
        made_from = None
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
        weights = spec.model.weights
        made_from = provenance(loaded.provenance(), data={"name": name, "root": spec.data_root})
    if norm is not None:
        ds = ds.with_options(mean=norm[0], std=norm[1])
    x = ds[0][0][None].to(next((p.device for p in model.parameters()), "cpu"))
    check_classes(num_outputs(model, x), list(ds.classes), weights, warn=False)
    if made_from is not None:  # each split's identity is checked per stored part (see _store)
        made_from["data"]["parts"] = {_label(spec, None, len(ds)): dataset_sha256(ds)}
    return store, model, ds, name, what, made_from
