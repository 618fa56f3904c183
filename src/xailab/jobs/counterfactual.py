"""The counterfactual job: ``xailab counterfactual``, and the same from Python.

    from xailab.jobs.counterfactual import CounterfactualSpec, counterfactual_to_run
    run = counterfactual_to_run(CounterfactualSpec(ModelSpec("small_cnn", weights="w.safetensors"),
                                images="fashion_mnist:test:16", kinds=("pixel", "region"), target="top2"),
                                "runs/cf")

What it writes into the run (kind ``counterfactual``):

* table ``counterfactuals``: one row per image and kind (pixel, region, prototype, concept): the
  classes, ``valid``, ``status`` ("found", "not found within N ...", "already the target
  class"), proximity (``l1``, ``l2``, ``linf``, ``changed_pixels`` and their share
  ``sparsity``), ``regions`` / ``concepts`` / ``edits`` where they apply, ``plausibility`` (with
  a reference set), ``evaluations`` and ``seconds``;
* arrays ``original`` and ``cf_<kind>`` (pixels in [0, 1]); ``region_mask``; ``prototype_neighbours``;
* figures ``files/counterfactuals/<image>_<kind>.png`` (image | counterfactual | difference);
* manifest section ``counterfactual`` (kinds, target, parameters, summary per kind, class names)
  and ``provenance``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from xailab.core.errors import InputError, LayerError
from xailab.jobs.common import check_out, job_lock, provenance, recorded, write_provenance
from xailab.jobs.model import LoadedModel, ModelSpec
from xailab.runs.store import Run

KINDS = ("pixel", "region", "prototype", "concept")


@dataclass(frozen=True)
class CounterfactualSpec:
    """What ``xailab counterfactual`` is asked to do (``run``: a training run's model instead)."""

    model: ModelSpec | None
    images: str
    run: str | None = None
    data_root: str | None = None
    kinds: tuple[str, ...] = ("pixel", "region")
    target: str = "top2"
    distance: str = "l1+l2"
    lam: float = 0.1
    search_steps: int = 5
    steps: int = 100
    lr: float = 0.01
    fill: str = "blur"
    beam: int = 1
    max_regions: int = 8
    attribution: str | None = None
    reference: str | None = None
    k: int = 5
    basis: str | None = None
    max_concepts: int = 3
    png: int = 8
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"

    def check(self) -> None:
        """What can be refused before anything loads."""
        bad = [k for k in self.kinds if k not in KINDS]
        if not self.kinds or bad:
            raise InputError(f"--kinds {','.join(bad) or '(none)'}: choose from {', '.join(KINDS)}")
        if "prototype" in self.kinds and not self.reference:
            raise InputError("prototype counterfactuals need training images to choose from: --reference "
                             "dataset:split[:N] (e.g. fashion_mnist:train:2000)")
        if "concept" in self.kinds and not self.basis:
            raise InputError("concept counterfactuals need an ICE basis: --basis RUN (from xailab concepts ice)")
        if "region" in self.kinds and self.fill == "donor" and not self.reference:
            raise InputError("--fill donor takes each image's nearest training image of the target class: give --reference")


def target_spec(text: str, classes: list[str] | None) -> Any:
    """``top2`` / ``least`` / ``other`` / an index / a class name -> what the searches take."""
    from xailab.audit.backdoor import resolve_class

    t = text.strip()
    if t.lower() in ("other", "any", "least", "second") or t.lower().startswith("top"):
        return t.lower()
    if t.lstrip("-").isdigit() or classes is not None:
        return resolve_class(t, classes or [], "target class") if classes is not None else int(t)
    raise InputError(f"--target {text!r}: use top2, least, other, a class index or a class name")


def counterfactual_to_run(spec: CounterfactualSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Counterfactuals of the images for each kind asked, measured, written into ``out``."""
    from xailab.data import load_images
    from xailab.jobs.audit import load_audited
    from xailab.jobs.classes import check_model_classes
    from xailab.models import set_preprocessing

    spec.check()
    check_out(out, new_only=True)
    loaded = load_audited(spec.model, spec.run, device=spec.device, log=log)
    x, _, names, dataset = load_images(spec.images, loaded.preprocessing, root=spec.data_root)
    if loaded.preprocessing is None and dataset is not None and dataset.normalize:
        set_preprocessing(loaded.model, dataset.preprocessing)  # trained on the dataset's normalisation
    classes = list(dataset.classes) if dataset is not None else None
    check_model_classes(loaded.model, x, classes, spec.model.weights if spec.model else None, warn=spec.model is not None)
    target = target_spec(spec.target, classes)
    x = x.to(loaded.device)
    reference = _reference(loaded, spec) if spec.reference else None
    results = [_search(kind, loaded, spec, x, target, reference, log) for kind in spec.kinds]
    config = {"command": "counterfactual", "model": spec.model.record() if spec.model else None, "run": spec.run,
              "images": spec.images, "data_root": spec.data_root, "target": spec.target, "kinds": list(spec.kinds),
              "reference": spec.reference, "basis": spec.basis}
    with job_lock(out, log):
        run = Run.create(out, kind="counterfactual", config=config)
        _write(run, results, reference, classes, names, spec)
        write_provenance(run, provenance(loaded.provenance() if spec.model else {"run": spec.run},
                                         data={"images": spec.images, "n": len(x), "reference": spec.reference},
                                         params={r.method: r.params for r in results}, targets=spec.target))
    for r in results:
        log(r.format())
    return run


def _reference(loaded: LoadedModel, spec: CounterfactualSpec) -> Any:
    from xailab.counterfactual import Reference
    from xailab.data import load_images

    rx, ry, _, _ = load_images(str(spec.reference), loaded.preprocessing, root=spec.data_root)
    if ry is None:
        raise InputError(f"--reference {spec.reference}: the reference images need labels (a dataset split)")
    return Reference.of(loaded.model, rx.to(loaded.device), ry, k=spec.k, batch_size=max(spec.batch_size, 64))


def _search(kind: str, loaded: LoadedModel, spec: CounterfactualSpec, x: torch.Tensor, target: Any,
            reference: Any, log: Callable[[str], None]) -> Any:
    import xailab.counterfactual as cf

    model = loaded.model
    log(f"{kind} counterfactuals of {len(x)} images, target {spec.target}")
    if kind == "pixel":
        return cf.pixel_counterfactuals(model, x, target, distance=spec.distance, lam=spec.lam,
                                        search_steps=spec.search_steps, steps=spec.steps, lr=spec.lr,
                                        batch_size=spec.batch_size)
    if kind == "region":
        donors = None
        if spec.fill == "donor":
            donors = cf.prototype_counterfactuals(model, x, target, reference, k=1).counterfactual
        return cf.region_counterfactuals(model, x, target, fill=spec.fill, donors=donors, beam=spec.beam,
                                         max_regions=spec.max_regions, attribution=spec.attribution,
                                         batch_size=spec.batch_size, seed=spec.seed)
    if kind == "prototype":
        return cf.prototype_counterfactuals(model, x, target, reference, k=spec.k)
    basis = _basis(loaded, str(spec.basis))
    add = None
    if reference is not None:
        add = cf.class_concept_maps(model, basis, cf.PixelMap.for_model(model).to_inputs(
            reference.pixels.to(loaded.device)), reference.labels, batch_size=spec.batch_size)
    return cf.concept_counterfactuals(model, basis, x, target, add_maps=add, max_concepts=spec.max_concepts)


def _basis(loaded: LoadedModel, path: str) -> Any:
    """The ICE basis of run ``path``, refused when that run was made with another model."""
    from xailab.concepts.ice_basis import ConceptBasis

    basis = ConceptBasis.load(path)
    theirs = (recorded(path).get("model") or {})
    mine = loaded.provenance() if loaded.spec.weights or loaded.spec.name else {}
    for key in ("model", "weights_sha256"):
        a, b = theirs.get(key), mine.get(key)
        if a is not None and b is not None and a != b:
            raise LayerError(f"the concept basis in {path} was fitted on another model ({key} {str(a)[:16]} "
                             f"vs this model's {str(b)[:16]}): fit a basis of this model with xailab concepts ice")
    return basis


def _write(run: Run, results: list[Any], reference: Any, classes: list[str] | None, names: list[str],
           spec: CounterfactualSpec) -> None:
    from xailab.counterfactual import plausibility

    tables = []
    for r in results:
        df = r.table(classes)
        df.insert(1, "name", [names[i] if i < len(names) else str(i) for i in df["image"]])
        if reference is not None and r.method != "concept":
            score = plausibility(reference, r.counterfactual, r.counterfactual_class).numpy()
            df["plausibility"] = [float(s) if v else float("nan") for s, v in zip(score, r.valid.tolist(), strict=True)]
            r.measures["plausibility"] = torch.tensor(df["plausibility"].to_numpy(dtype=float))
        if "edits" in r.extras:
            df["edits"] = [", ".join(f"{'+' if e > 0 else '-'}c{abs(e) - 1}" for e in row if e) for row in
                           r.extras["edits"].tolist()]
        tables.append(df)
        if r.method != "concept":
            run.write_array(f"cf_{r.method}", r.counterfactual.float())
        if "region_mask" in r.extras:
            run.write_array("region_mask", r.extras["region_mask"].to(torch.uint8))
        if "target_neighbours" in r.extras:
            run.write_array("prototype_neighbours", r.extras["target_neighbours"])
    run.write_array("original", results[0].original.float())
    table = pd.concat(tables, ignore_index=True)
    run.write_table("counterfactuals", table)
    _figures(run, results, table, reference, spec.png)
    run.update_manifest("counterfactual", {
        "kinds": [r.method for r in results], "target": spec.target, "classes": classes,
        "params": {r.method: r.params for r in results}, "summary": [r.summary() for r in results]})


def _figures(run: Run, results: list[Any], table: pd.DataFrame, reference: Any, png: int) -> None:
    from xailab.counterfactual.figures import counterfactual_png
    from xailab.runs.store import atomic_write_bytes

    for r in results:
        if r.method == "concept":
            continue
        rows = table[table["kind"] == r.method]
        for i in rows.sort_values("valid", ascending=False, kind="stable")["image"].tolist()[: max(0, png)]:
            row = rows[rows["image"] == i].iloc[0]
            what = f"{row['original_name']} -> {row['counterfactual_name']}" if row["valid"] else str(row["status"])
            extra = None
            if r.method == "prototype" and int(r.extras["predicted_neighbours"][i, 0]) >= 0:
                extra = reference.pixels[int(r.extras["predicted_neighbours"][i, 0])].numpy()
            png_bytes = counterfactual_png(
                r.original[i].numpy(), r.counterfactual[i].numpy(), f"{row['name']}: {what} ({r.method}, "
                f"L2 {row['l2']:.2f}, {int(row['changed_pixels'])} pixels)", extra=extra,
                extra_title=f"nearest {row['original_name']}")
            atomic_write_bytes(run.file(f"counterfactuals/{int(i):04d}_{r.method}.png"), png_bytes)
