"""The backdoor audit with or without the training data: ``xailab audit backdoor [--data] [--images]``.

With the training data (``--data``, or ``--run`` of an ``audit poison`` run) the training-data
detectors of :func:`xailab.jobs.audit.backdoor_to_run` run; with clean images (``--images``)
Neural Cleanse (:mod:`xailab.audit.cleanse`) runs on them, and for each class it flags the
reconstructed trigger is stamped on the clean images and explained
(:func:`xailab.audit.trigger_regions.trigger_explanation`). Both can run into one run.

Written into the run: table ``cleanse`` (one row per class: ``l1``, ``anomaly``, ``success``,
``reached``, ``flagged``; for flagged classes ``mask_box``, ``explanation_box``, ``box_iou``,
``share_triggered``, ``share_clean`` and, when the training-data audit flagged the class too,
``spray_box_iou``), arrays ``cleanse_masks [K, H, W]`` and ``cleanse_patterns [K, C, H, W]``,
figures ``files/cleanse/norms.png`` and ``files/cleanse/trigger_<k>.png``, manifest section
``cleanse`` (settings, flagged classes, seconds, and ``scope``: what clean data can and cannot
show, which every output repeats).

    audit = backdoor_audit_to_run(BackdoorSpec(ModelSpec("small_cnn", weights="w.safetensors")),
                                  CleanseSpec("fashion_mnist:test:200"), "runs/nc")
    audit.cleanse.result.flagged
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from xailab.core.errors import InputError
from xailab.jobs.audit import BackdoorSpec, backdoor_to_run, load_audited
from xailab.jobs.common import check_out, job_lock, provenance, write_provenance
from xailab.runs.store import Run

#: what Neural Cleanse on clean images can show, and what it cannot (repeated by every output)
CAN_SHOW = ("whether some class can be reached from clean images with an unusually small, fixed change "
            "(a patch- or sticker-like trigger), which class, and what that change looks like")
CANNOT_SHOW = ("which training items were poisoned; triggers that are not small (blended over the whole "
               "image, warping, input-specific); backdoors into many classes at once (the outlier test "
               "assumes most classes are clean); and it cannot prove that there is no backdoor: "
               "'no class flagged' means only that no class's trigger is an outlier among these classes")


@dataclass(frozen=True)
class CleanseSpec:
    """Neural Cleanse on clean ``images`` (a dataset spec ``name:split:N``, files or a folder)."""

    images: str
    data_root: str | None = None
    steps: int = 400
    images_per_step: int = 16
    threshold: float = 2.0
    alpha: float = 0.05               # family-wise level of the test against >= 3 reference runs
    method: str = "lrp"
    batch_size: int = 256
    seed: int = 0
    reference: tuple[str, ...] = ()   # audit runs of clean models of the same task (same images, settings)


@dataclass(frozen=True)
class CleanseOutcome:
    """Neural Cleanse's result, the agreement of each flagged class's trigger with its
    explanation, and the table written."""

    result: Any                       # xailab.audit.cleanse.CleanseResult
    agreement: dict[int, Any]         # class -> TriggerAgreement
    table: pd.DataFrame
    notes: list[str]


@dataclass(frozen=True)
class BackdoorAudit:
    """What ``xailab audit backdoor`` found: the training-data report (None without training data)
    and Neural Cleanse's outcome (None without clean images)."""

    run: Run
    detection: Any | None
    cleanse: CleanseOutcome | None


def training_data_given(spec: BackdoorSpec) -> bool:
    """``--data``, or ``--run`` of an ``audit poison`` run (its poisoned training set)."""
    if spec.data:
        return True
    if spec.run and Path(spec.run, "manifest.json").is_file():
        return "poison" in Run.open(spec.run).manifest
    return False


def backdoor_audit_to_run(spec: BackdoorSpec, cleanse: CleanseSpec | None, out: str | Path, *,
                          log: Callable[[str], None] = print) -> BackdoorAudit:
    """The training-data detectors when the training data is given, Neural Cleanse when clean images are."""
    training = training_data_given(spec)
    if cleanse is None:
        if not training:
            raise InputError("give the training data (--data, or --run of an audit poison run) or clean images "
                             "for the clean-data detectors (--images, e.g. fashion_mnist:test:200)")
        run, report = backdoor_to_run(spec, out, log=log)
        return BackdoorAudit(run, report, None)
    check_out(out, new_only=True)
    from xailab.audit.cleanse import CleanseSettings

    settings = CleanseSettings(steps=cleanse.steps, images_per_step=cleanse.images_per_step,
                               threshold=cleanse.threshold, alpha=cleanse.alpha, batch_size=cleanse.batch_size, seed=cleanse.seed)
    reference = reference_from_runs(cleanse) if cleanse.reference else None
    report = backdoor_to_run(spec, out, log=log)[1] if training else None
    loaded = load_audited(spec.model, spec.run, device=spec.device, log=log)
    pixels, classes = clean_pixels(cleanse, loaded)
    regions = {e.label: e.region for e in report.classes if e.flagged} if report is not None else {}
    config = {"command": "audit backdoor", "model": spec.model.name if spec.model else None,
              "weights": spec.model.weights if spec.model else None, "run": spec.run, "images": cleanse.images}
    with job_lock(out, log):
        run = Run.open(out) if training else Run.create(out, kind="audit", config=config)
        log(f"Neural Cleanse on {len(pixels)} clean images, {cleanse.steps} steps per class")
        outcome = cleanse_into(run, loaded.model, pixels, classes, settings, method=cleanse.method,
                               regions=regions, training=training, images=cleanse.images, reference=reference)
        if not training:
            write_provenance(run, provenance(loaded.provenance() if spec.model else {"run": spec.run},
                                             data={"images": cleanse.images, "n": len(pixels)},
                                             params={**settings.__dict__, "method": cleanse.method}))
    return BackdoorAudit(run, report, outcome)


def clean_pixels(spec: CleanseSpec, loaded: Any) -> tuple[Any, list[str] | None]:
    """The clean images in [0, 1] and the class names (of their dataset, when it has the model's classes)."""
    from xailab.data import load_images
    from xailab.models import set_preprocessing

    prep = loaded.preprocessing
    x, _labels, _names, dataset = load_images(spec.images, prep, root=spec.data_root)
    if prep is None and dataset is not None and dataset.normalize:
        prep = dataset.preprocessing  # a model with no recorded preprocessing was trained on the dataset's
        set_preprocessing(loaded.model, prep)
    pixels = (prep.denormalize(x) if prep is not None else x).clamp(0, 1)
    return pixels, (list(dataset.classes) if dataset is not None else None)


def reference_from_runs(spec: CleanseSpec) -> Any:
    """From the reference runs (``audit backdoor --images`` on clean models; refused unless they
    used the same images and settings): with at least 3, each class's null
    (:func:`xailab.audit.cleanse_null.reference_null`), else per class the geometric median of
    their mask norms (:func:`xailab.audit.cleanse.reference_norms`)."""
    from xailab.audit.cleanse import reference_norms
    from xailab.audit.cleanse_null import MIN_REFERENCES, reference_null

    rows = []
    for path in spec.reference:
        if not Path(path, "manifest.json").is_file():
            raise InputError(f"--nc-reference {path}: not a run")
        ref = Run.open(path)
        params = (ref.manifest.get("cleanse") or {}).get("params")
        if params is None:
            raise InputError(f"--nc-reference {path}: this run has no Neural Cleanse result (audit backdoor --images)")
        want = {"images": spec.images, "steps": spec.steps, "images_per_step": spec.images_per_step, "seed": spec.seed}
        differ = [f"{k} {params.get(k)!r} there, {v!r} here" for k, v in want.items() if params.get(k) != v]
        if differ:
            raise InputError(f"--nc-reference {path} was made otherwise: {'; '.join(differ)}")
        rows.append(ref.read_table("cleanse").sort_values("class")["l1"].to_numpy())
    if len({len(r) for r in rows}) > 1:
        raise InputError("the --nc-reference runs have different numbers of classes")
    return reference_null(rows) if len(rows) >= MIN_REFERENCES else reference_norms(rows)


def cleanse_into(run: Run, model: Any, pixels: Any, classes: list[str] | None, settings: Any, *, method: str,
                 regions: dict[int, Any], training: bool, images: str | None = None,
                 reference: Any = None) -> CleanseOutcome:
    """Run Neural Cleanse, explain each flagged trigger, write the evidence into ``run``."""
    from xailab.audit.cleanse import neural_cleanse
    from xailab.audit.cleanse_figures import norms_figure, trigger_figure
    from xailab.audit.trigger_regions import box_iou, trigger_explanation
    from xailab.plotting import save_png

    res = neural_cleanse(model, pixels, settings=settings, reference=reference)
    if classes is not None and len(classes) == len(res.l1):
        res = replace(res, class_names=list(classes))
    agree = {c: trigger_explanation(model, pixels, res.masks[c], res.patterns[c], c, method=method,
                                    batch_size=settings.batch_size, seed=settings.seed) for c in res.flagged}
    table = res.table
    for col in ("mask_box", "explanation_box"):
        table[col] = [_box_text(getattr(agree[c], col)) if c in agree else "" for c in table["class"]]
    table["box_iou"] = [agree[c].iou if c in agree else float("nan") for c in table["class"]]
    table["share_triggered"] = [agree[c].share_in_mask if c in agree else float("nan") for c in table["class"]]
    table["share_clean"] = [agree[c].clean_share_in_mask if c in agree else float("nan") for c in table["class"]]
    table["spray_box_iou"] = [box_iou(agree[c].mask_box, regions[c]) if c in agree and c in regions
                              else float("nan") for c in table["class"]]
    notes = scope_notes(res, training)
    run.write_table("cleanse", table)
    run.write_array("cleanse_masks", res.masks.float())
    run.write_array("cleanse_patterns", res.patterns.float())
    save_png(norms_figure(res), run.file("cleanse/norms.png"))
    for c in res.flagged:
        save_png(trigger_figure(res, c, agree[c], pixels[0]), run.file(f"cleanse/trigger_{c}.png"))
    run.update_manifest("cleanse", {
        "params": {**res.params(), "method": method, "images": images}, "flagged": res.flagged,
        "flagged_names": [res.class_names[c] for c in res.flagged], "seconds": res.seconds,
        "scope": {"can": CAN_SHOW, "cannot": CANNOT_SHOW, "training_data": training}, "notes": notes})
    return CleanseOutcome(res, agree, table, notes)


def scope_notes(res: Any, training: bool) -> list[str]:
    """Sentences that qualify this result: classes that never reached the target success, few classes."""
    from xailab.audit.cleanse import MIN_CLASSES

    notes = []
    lost = [res.class_names[c] for c in range(len(res.l1)) if not res.reached[c]]
    if lost:
        notes.append(f"{len(lost)} class(es) never reached {res.settings.target_success:.0%} success ({', '.join(lost)}): "
                     "their mask is the last one, not a minimal trigger; more --nc-steps may help")
    if len(res.l1) < MIN_CLASSES:
        notes.append(f"only {len(res.l1)} classes: the outlier test needs at least {MIN_CLASSES}, so no class is "
                     "flagged; compare the masks' norms and figures yourself")
    if res.reference is not None and res.critical is None:
        notes.append("fewer than 3 reference runs: the classes' own spread among clean models is unknown, so the "
                     "log-ratio MAD test ran, which flagged 2 of 5 clean models in bench_cleanse; give at least 3")
    if not training:
        notes.append("no training data was examined: the training-data detectors did not run")
    return notes


def cleanse_lines(outcome: CleanseOutcome) -> list[str]:
    """What a person reads: the flagged classes with their trigger and its explanation, or why
    no flag is no all-clear; then what clean data can and cannot show."""
    res = outcome.result
    lines = ["clean images (Neural Cleanse):",
             res.table[["class", "name", "l1"] + (["reference_l1"] if res.reference is not None else [])
                       + ["z", "p_value"] + (["p_adjusted"] if res.critical is not None else [])
                       + ["success", "reached", "flagged"]].to_string(
                 index=False, float_format=lambda v: f"{v:.3g}")]
    for c in res.flagged:
        a = outcome.agreement.get(c)
        where = ""
        if a is not None and a.mask_box is not None:
            where = (f"; trigger mask in rows {a.mask_box[0]}-{a.mask_box[2]}, columns {a.mask_box[1]}-{a.mask_box[3]}; "
                     f"{a.method} on triggered images puts {a.share_in_mask:.0%} of its relevance there "
                     f"(clean images: {a.clean_share_in_mask:.0%}), box IoU with the map's region {a.iou:.2f}")
        if res.critical is not None:
            against = (f"its clean references' {res.reference[c]:.1f}, t against the class's spread in them "
                       f"{res.z[c]:.2f} > {res.critical:.2f} (p = {res.p_value[c]:.2g}, x {len(res.l1)} classes "
                       f"= {res.p_adjusted[c]:.2g} < {res.settings.alpha:g})")
        else:
            against = (f"its clean reference {res.reference[c]:.1f}, z of the log-ratio" if res.reference is not None
                       else f"the median {float(pd.Series(res.l1).median()):.1f}, anomaly index")
            against += f" {_z(res)[c]:.2f} > {res.settings.threshold:g} (p = {_p(res)[c]:.2g})"
        lines.append(f"FLAGGED: class {c} ({res.class_names[c]}): mask L1 {res.l1[c]:.1f} against {against}{where}")
    if not res.flagged:
        stat = "t against the clean references" if res.critical is not None else "robust z below the median"
        lines.append(f"no class has an outlier-small trigger (largest {stat}: "
                     f"{max(float(_z(res).max()), 0.0):.2f}, threshold {res.cutoff:.3g}"
                     f"{', relative to the clean reference' if res.reference is not None else ''}). "
                     "This is not an all-clear.")
    lines += [f"clean data can show: {CAN_SHOW}.", f"it cannot show: {CANNOT_SHOW}."]
    lines += [f"note: {n}" for n in outcome.notes]
    return lines


def _z(res: Any) -> Any:
    return res.z if res.z is not None else res.anomaly


def _p(res: Any) -> Any:
    import numpy as np

    return res.p_value if res.p_value is not None else np.full(len(res.l1), np.nan)


def _box_text(box: Any) -> str:
    return "" if box is None else "{},{}-{},{}".format(*box)
