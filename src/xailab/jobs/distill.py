"""The distillation job: surrogates, per-class rules and (optionally) a student, into one run.

    from xailab.jobs.distill import DistillSpec, distill_to_run
    run = distill_to_run(DistillSpec(ModelSpec("resnet20", weights="resnet20.safetensors"),
                                     images="cifar10:test:2000", features="ice:runs/ice"), "runs/distill")

The same as ``xailab distill``. What it reads (features, the split into fitting and held-out
images) is described in :mod:`xailab.jobs.distill_data`, what it writes in
:mod:`xailab.jobs.distill_writers`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from xailab.distill.student import StudentSettings
from xailab.jobs.common import check_out, job_lock, provenance, write_provenance
from xailab.jobs.distill_data import DistillSpec, prepare
from xailab.jobs.distill_writers import write_student, write_surrogates
from xailab.jobs.model import load
from xailab.runs.store import Run

__all__ = ["DistillSpec", "StudentSettings", "distill_to_run"]


def distill_to_run(spec: DistillSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Fit the surrogates (and the student) of ``spec`` and write everything into run ``out``."""
    check_out(out, ("distill",))
    loaded = load(spec.model, log=log)
    fit, test, class_names, kept = prepare(spec, loaded, log)
    log(f"distill: {len(fit)} fitting and {len(test)} held-out images, {len(fit.features.names)} "
        f"{fit.features.source.get('kind')} features, classes {', '.join(class_names[k] for k in kept)}")
    config = {**spec.model.record(), "images": spec.images, "test_images": spec.test_images,
              "data_root": spec.data_root, "features": spec.features}
    with job_lock(out, log):
        run = Run.create(out, kind="distill", config=config)
        summary = write_surrogates(run, spec, fit, test, class_names, kept, log)
        if spec.student:
            summary["student"] = write_student(run, spec, loaded, fit, test, class_names, log)
        run.update_manifest("distill", summary)
        params = {k: v for k, v in spec.__dict__.items() if k not in ("model", "student_settings")}
        params["student_settings"] = spec.student_settings.__dict__ if spec.student else None
        write_provenance(run, provenance(loaded.provenance(), params=params,
                                         data={"images": spec.images, "test_images": spec.test_images,
                                               "n_fit": len(fit), "n_test": len(test)}))
    return run
