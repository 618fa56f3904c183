"""The concept jobs: ICE concept discovery, applying fitted concepts to new images, TCAV.

    from xailab.jobs.concepts import IceSpec, ice_to_run
    run = ice_to_run(IceSpec(ModelSpec("resnet56", weights="resnet56.safetensors"), images="cifar10:test:2000",
                             layer="layer3.8", concepts=10), "runs/ice")

The same as ``xailab concepts ice | explain | tcav``; what each writes is described in
:mod:`xailab.jobs.ice` (ICE, concept maps) and :func:`xailab.concepts.tcav.tcav_to_run` (TCAV).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xailab.core.errors import InputError, TargetError
from xailab.jobs.classes import check_model_classes
from xailab.jobs.common import check_fitted_with, check_out, job_lock, provenance, write_provenance
from xailab.jobs.model import LoadedModel, ModelSpec, load, settle_preprocessing, spec_from_config
from xailab.runs.store import Run


@dataclass(frozen=True)
class IceSpec:
    """What ``xailab concepts ice`` is asked to do."""

    model: ModelSpec
    images: str
    data_root: str | None = None
    layer: str | None = None
    concepts: int = 10
    curve: tuple[int, ...] = (2, 4, 6, 8, 10, 12, 16, 24, 32)
    curve_images: int = 500
    epochs: int = 1
    seed: int = 0
    clamp: bool = False
    presence: float = 0.5
    gallery: int = 8
    png: bool = True
    batch_size: int = 64
    progress: bool = False


def load_images_for(loaded: LoadedModel, spec: str, root: str | None,
                    log: Callable[[str], None] = print) -> tuple[Any, Any, list[str], list[str] | None, Any]:
    """``(images, labels, names, class names, display)`` of an image spec, as the model takes them."""
    from xailab.data import load_images

    x, y, names, ds = load_images(spec, loaded.preprocessing, root=root)
    prep = settle_preprocessing(loaded, ds, log) if loaded.preprocessing is None else loaded.preprocessing
    display = prep.denormalize if prep is not None else None
    return x, y, names, (list(ds.classes) if ds is not None else None), display


def ice_to_run(spec: IceSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Fit ICE concepts of a layer over the images, analyse them, store everything in ``out``."""
    from xailab.jobs.ice import ice_images

    check_out(out, ("concepts", "ice"))
    loaded = load(spec.model, log=log)
    x, y, names, classes, display = load_images_for(loaded, spec.images, spec.data_root, log)
    check_model_classes(loaded.model, x, classes, spec.model.weights)
    log(f"ICE over {len(x)} images, {spec.concepts} concepts")
    config = {**spec.model.record(), "images": spec.images, "data_root": spec.data_root,
              "device": str(loaded.device)}
    with job_lock(out, log):
        run = ice_images(
            loaded.model, x.to(loaded.device), out=out, labels=y, names=names, class_names=classes, display=display,
            n_concepts=spec.concepts, layer=spec.layer, curve=list(spec.curve), curve_images=spec.curve_images,
            batch_size=spec.batch_size, epochs=spec.epochs, seed=spec.seed, clamp=spec.clamp,
            presence=spec.presence, gallery=spec.gallery, png=spec.png, progress=spec.progress, config=config)
        write_provenance(run, provenance(loaded.provenance(), data={"images": spec.images, "n": len(x)},
                                         params={"concepts": spec.concepts, "layer": spec.layer}))
    imp = run.read_table("ice_importance")
    top = imp.loc[imp.groupby("class")["contribution"].idxmax()]
    lines = ["most contributing concept per class:"]
    for _, r in top.iterrows():
        lines.append(f"  {r['class_name']:>12s}: concept {int(r['concept'])} (presence {r['presence']:.2f})")
    log("\n".join(lines))
    return run


@dataclass(frozen=True)
class ConceptMapsSpec:
    """What ``xailab concepts explain RUN`` is asked to do: apply the run's concepts to images.

    ``model`` overrides the run's recorded model (see :class:`xailab.jobs.compare.CompareSpec`).
    """

    images: str
    model: dict[str, Any] | None = None
    data_root: str | None = None
    top: int = 4
    png: bool = True
    batch_size: int = 64


def concept_maps_to_run(spec: ConceptMapsSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Concept maps and contributions of new images under ICE run ``out``'s concepts."""
    from xailab.jobs.ice import apply_concepts

    run = Run.open(out)
    cfg = run.manifest.get("config", {})
    mspec = spec_from_config(cfg, **(spec.model or {}))
    if not mspec.name:
        raise InputError("the run does not record its model: pass --model (and --weights)")
    loaded = load(mspec, log=log)
    check_fitted_with(run, loaded.provenance(), "concepts explain")
    root = spec.data_root if spec.data_root is not None else cfg.get("data_root")
    x, _, names, _, display = load_images_for(loaded, spec.images, root, log)
    with job_lock(out, log):
        cm = apply_concepts(loaded.model, run, x.to(loaded.device), names=names, display=display, top=spec.top,
                            batch_size=spec.batch_size, png=spec.png)
    for i, name in enumerate(names):
        order = cm.contribution[i].argsort(descending=True)[: spec.top].tolist()
        parts = ", ".join(f"c{c} {float(cm.contribution[i, c]):+.2f}" for c in order)
        log(f"{name}: class {int(cm.targets[i])}; top concepts {parts}")
    return run


@dataclass(frozen=True)
class TcavSpec:
    """What ``xailab concepts tcav`` is asked to do (``concepts``: ``NAME=FOLDER`` entries)."""

    model: ModelSpec
    layer: str
    concepts: tuple[str, ...]
    random: str
    images: str
    data_root: str | None = None
    random_size: int | None = None
    runs: int = 10
    classes: str | None = None
    max_per_class: int = 200
    classifier: str = "logistic"
    alpha: float = 0.05
    seed: int = 0
    png: bool = True
    batch_size: int = 64


def tcav_to_run(spec: TcavSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """TCAV scores of every concept for every class, with the significance test, into ``out``."""
    from xailab.concepts.tcav import load_concept_images, random_subsets, run_tcav
    from xailab.concepts.tcav import tcav_to_run as write_tcav

    folders = _concept_folders(spec.concepts)
    check_out(out, ("concepts", "tcav"))
    loaded = load(spec.model, log=log)
    model, device = loaded.model, loaded.device
    concepts = {name: load_concept_images(folder, loaded.preprocessing)[0].to(device) for name, folder in folders}
    pool = load_images_for(loaded, spec.random, spec.data_root, log)[0]
    size = spec.random_size or min(100, max(len(c) for c in concepts.values()))
    sets = [pool[i].to(device) for i in random_subsets(len(pool), spec.runs + 1, size, seed=spec.seed)]
    x, y, _, classes, _ = load_images_for(loaded, spec.images, spec.data_root, log)
    check_model_classes(model, x, classes, spec.model.weights)
    if y is None:
        with torch.no_grad():
            y = torch.cat([model(x[i : i + spec.batch_size].to(device)).argmax(1).cpu()
                           for i in range(0, len(x), spec.batch_size)])
        log("the images have no labels: classes are the model's predictions")
    wanted = parse_classes(spec.classes, classes, int(y.max()) + 1)
    class_images = {k: x[(y == k).nonzero().flatten()[: spec.max_per_class]].to(device) for k in wanted}
    log(f"TCAV at {spec.layer}: {len(concepts)} concepts x {len(wanted)} classes, {spec.runs} runs, "
        f"random sets of {size}")
    res = run_tcav(model, spec.layer, concepts, sets, class_images, class_names=classes, batch_size=spec.batch_size,
                   seed=spec.seed, classifier=spec.classifier, alpha=spec.alpha)
    with job_lock(out, log):
        run = write_tcav(res, out, png=spec.png, config={"model": spec.model.name, "weights": spec.model.weights,
                                                         "layer": spec.layer})
        write_provenance(run, provenance(loaded.provenance(), data={"images": spec.images, "random": spec.random},
                                         params={"layer": spec.layer, "concepts": dict(folders), "runs": spec.runs}))
    cols = ["concept", "class_name", "score_mean", "score_std", "random_mean", "p_value", "significant", "cav_accuracy"]
    log(res.table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    return run


def _concept_folders(items: tuple[str, ...]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--concept expects NAME=FOLDER, got {item!r}")
        out.append((name, folder))
    return out


def parse_classes(text: str | None, classes: list[str] | None, n: int) -> list[int]:
    """Class names or indices, comma-separated, as indices (default: every class)."""
    if not text:
        return list(range(len(classes) if classes else n))
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if part.isdigit():
            out.append(int(part))
        elif classes and part in classes:
            out.append(classes.index(part))
        else:
            known = ", ".join(classes) if classes else f"0..{n - 1}"
            raise TargetError(f"unknown class {part!r}; known: {known}")
    return out


