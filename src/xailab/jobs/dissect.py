"""The dissect job: label the units of some layers with colours, Broden concepts or classes.

    from xailab.jobs.dissect import DissectSpec, dissect_to_run
    run = dissect_to_run(DissectSpec(ModelSpec("resnet20", weights="resnet20.safetensors"), layers=("layer3",),
                                     images="cifar10:test:2000", concepts="colour"), "runs/dissect")

The same as ``xailab dissect``; the result is written by
:func:`xailab.concepts.dissection_report.dissection_to_run` (also used by the Ray driver).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from xailab.core.errors import InputError
from xailab.jobs.classes import check_model_classes
from xailab.jobs.common import (
    check_inputs,
    check_out,
    job_lock,
    model_sha256,
    provenance,
    write_provenance,
)
from xailab.jobs.model import LoadedModel, ModelSpec, load
from xailab.runs.store import Run

COLOURS = ("colour", "color", "colours", "colors")


@dataclass(frozen=True)
class DissectSpec:
    """What ``xailab dissect`` is asked to do (``concepts``: colour, classes or broden:PATH)."""

    model: ModelSpec
    layers: str
    images: str | None = None
    max_images: int | None = None
    data_root: str | None = None
    concepts: str = "colour"
    quantile: float = 0.005
    threshold: float | None = None
    batch_size: int = 64
    gallery_units: int = 8
    png: bool = True
    exact_range: bool = False
    backend: Any = None

    def check(self) -> None:
        """What can be refused before anything loads."""
        kind = self.concepts.strip().lower()
        if not (kind in COLOURS or kind == "classes" or kind.startswith("broden:")):
            raise InputError(f"unknown --concepts {self.concepts.strip()!r}: give colour, classes or broden:<path>")
        if not kind.startswith("broden:") and not self.images:
            raise InputError("give --images (dataset:split[:N], a folder or archive)")
        self.model.check()


def dissect_to_run(spec: DissectSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Dissect ``spec.layers`` of the model over the probe images into run ``out``."""
    from xailab.concepts.dissection_report import dissection_to_run

    spec.check()
    check_out(out, ("dissection",))
    loaded = load(spec.model, log=log)
    config = {**spec.model.record(), "images": spec.images, "data_root": spec.data_root,
              "concepts": spec.concepts.strip(), "device": str(loaded.device)}
    made_from = provenance(
        {**loaded.provenance(), "sha256": model_sha256(loaded.model)},
        data={"images": spec.images, "data_root": spec.data_root, "max_images": spec.max_images},
        params={"layers": spec.layers, "concepts": spec.concepts, "quantile": spec.quantile,
                "threshold": spec.threshold, "exact_range": spec.exact_range})
    with job_lock(out, log):
        check_inputs(out, made_from)  # a rerun with another model, images or settings is refused
        target: Any = out
        if spec.backend is not None:  # the passes on Ray, their shards in the run (rerun = resume)
            target = Run.create(out, kind="dissection", config=config)
        res, images, display, names = _dissect(spec, loaded, target, log)
        run = dissection_to_run(res, target, model=loaded.model, images=images, display=display, names=names,
                                gallery_units=spec.gallery_units, png=spec.png, config=config)
        write_provenance(run, made_from)
    log(f"done in {res.seconds:.1f} s")
    for _, r in res.summary().iterrows():
        log(f"  {r['layer']:>12s}: {r['labelled']:4d}/{r['units']:<4d} units labelled, "
            f"{r['distinct']} labels; top: {r['top_labels'] or '-'}")
    return run


def _dissect(spec: DissectSpec, loaded: LoadedModel, target: Any, log: Callable[[str], None]) -> tuple[Any, ...]:
    """(the dissection result, the probe images, their display function, their names)."""
    from xailab.concepts.dissection import (
        DEFAULT_IOU_THRESHOLD,
        DEFAULT_SELECTIVITY_THRESHOLD,
        dissect,
        dissect_classes,
    )
    from xailab.concepts.dissection_concepts import BrodenDataset, ColourConcepts
    from xailab.data import load_images

    run_dissect: Any = dissect
    run_classes: Any = dissect_classes
    if spec.backend is not None:
        from xailab.distributed.dissection import dissect_classes_on_ray, dissect_on_ray

        run_dissect = partial(dissect_on_ray, backend=spec.backend, run=target)
        run_classes = partial(dissect_classes_on_ray, backend=spec.backend, run=target)
    model, prep = loaded.model, loaded.preprocessing
    kind = spec.concepts.strip()
    common: dict[str, Any] = {"quantile": spec.quantile, "batch_size": spec.batch_size}
    if spec.exact_range and spec.backend is None:
        common["exact_range"] = True
    iou = DEFAULT_IOU_THRESHOLD if spec.threshold is None else spec.threshold
    if kind.lower().startswith("broden:"):
        broden = BrodenDataset(kind.split(":", 1)[1], prep, max_images=spec.max_images)
        log(f"dissecting {len(broden)} Broden images against {len(broden.names)} concepts")
        res = run_dissect(model, broden, spec.layers, broden, threshold=iou, **common)
        return res, broden, (prep.denormalize if prep is not None else None), None
    assert spec.images is not None
    x, y, names, ds = load_images(spec.images, prep, root=spec.data_root, max_images=spec.max_images)
    if prep is not None:
        display = prep.denormalize
    elif ds is not None and ds.normalize:
        display = ds.preprocessing.denormalize
    else:
        display = None
    if kind.lower() in COLOURS:
        log(f"dissecting {len(x)} images against 11 colour concepts")
        res = run_dissect(model, x, spec.layers, ColourConcepts(display), threshold=iou, **common)
    else:
        if y is None:
            raise InputError("--concepts classes needs labelled images (a dataset spec or a folder of class folders)")
        check_model_classes(model, x, list(ds.classes) if ds is not None else None, spec.model.weights)
        log(f"class-level dissection of {len(x)} labelled images")
        res = run_classes(model, x, spec.layers, labels=y, class_names=list(ds.classes) if ds is not None else None,
                          threshold=DEFAULT_SELECTIVITY_THRESHOLD if spec.threshold is None else spec.threshold,
                          **common)
    return res, x, display, names
