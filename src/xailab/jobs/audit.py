"""The audit jobs: adversarial attacks and the explanation shift, backdoor poisoning, backdoor detection.

    from xailab.jobs.audit import AdversarialSpec, adversarial_to_run
    run = adversarial_to_run(AdversarialSpec(ModelSpec("small_cnn", weights="w.safetensors"),
                                             images="fashion_mnist:test:64", attack="pgd", eps=0.03), "runs/adv")

The same as ``xailab audit adversarial | poison | backdoor``; what each writes into its run is
described in :mod:`xailab.jobs.audit_writers` (adversarial, backdoor) and
:func:`xailab.audit.backdoor.train_poisoned` (poison).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xailab.core.errors import InputError
from xailab.jobs.classes import check_model_classes
from xailab.jobs.common import check_out, dataset_sha256, job_lock, provenance, write_provenance
from xailab.jobs.model import LoadedModel, ModelSpec, load
from xailab.runs.store import Run


@dataclass(frozen=True)
class AdversarialSpec:
    """What ``xailab audit adversarial`` is asked to do (``run``: a training run's model instead)."""

    model: ModelSpec | None
    images: str
    run: str | None = None
    data_root: str | None = None
    attack: str | None = None
    eps: float | None = None
    steps: int | None = None
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    patch: int | None = None
    position: str = "search"
    stride: int | None = None
    target: str | None = None
    methods: tuple[str, ...] = ("saliency",)
    targets: tuple[str, ...] = ("top1",)
    png: int = 8
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"

    @property
    def kind(self) -> str:
        """The attack: the one named, else pgd (patch with ``patch``); ``patch`` restricts any attack."""
        if self.patch:
            return "patch"
        return self.attack or "pgd"

    def check(self) -> None:
        """What can be refused before anything loads."""
        from xailab.audit.shift import SHIFT_TARGETS
        from xailab.core.registry import METHODS

        if self.kind == "patch" and not self.patch:
            raise InputError("the patch attack needs its size: --patch S")
        if self.kind != "patch" and self.eps is None:
            raise InputError(f"--attack {self.kind} needs a budget: --eps (e.g. 0.03)")
        for m in self.methods:
            METHODS.canonical(m)
        bad = [t for t in self.targets if t not in SHIFT_TARGETS or (t == "target" and self.target is None)]
        if bad:
            raise InputError(f"--targets {', '.join(bad)}: choose from {', '.join(SHIFT_TARGETS)} "
                             "('target' only with --target)")
        position(self.position)


def position(text: str) -> Any:
    """``search``, ``saliency``, ``center`` or ``TOP,LEFT`` -> the patch position."""
    if text in ("search", "saliency", "center"):
        return text
    try:
        top, left = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--position is search, saliency, center or TOP,LEFT, not {text!r}") from None
    return (top, left)


def load_audited(model: ModelSpec | None, run: str | None, *, device: str = "auto",
                 num_classes: int | None = None, in_channels: int | None = None,
                 log: Callable[[str], None] = print) -> LoadedModel:
    """The model of a training ``run`` (its best weights), or of ``model``."""
    from xailab.core.hooks import resolve_device
    from xailab.models import get_preprocessing

    if run:
        from xailab.train.recipe import model_from_run

        m, _ = model_from_run(run)
        dev = resolve_device(device)
        return LoadedModel(m.to(dev).eval(), get_preprocessing(m), dev, ModelSpec(name=str(run), device=device),
                           "model")
    if model is None or not model.name:
        raise InputError("give the model: --model (with --weights) or --run")
    return load(model, num_classes=model.num_classes or num_classes, in_channels=in_channels, log=log)


def adversarial_to_run(spec: AdversarialSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Attack the images, explain clean and attacked versions, write both and the shift into ``out``."""
    from xailab.core.registry import METHODS
    from xailab.data import load_images
    from xailab.jobs.audit_writers import adversarial_images
    from xailab.models import set_preprocessing

    spec.check()
    check_out(out, new_only=True)
    loaded = load_audited(spec.model, spec.run, device=spec.device, log=log)
    model, prep = loaded.model, loaded.preprocessing
    x, labels, _names, dataset = load_images(spec.images, prep, root=spec.data_root)
    if prep is None and dataset is not None and dataset.normalize:
        # a model with no recorded preprocessing was trained on the dataset's normalisation
        prep = dataset.preprocessing
        set_preprocessing(model, prep)
    pixels = (prep.denormalize(x) if prep is not None else x).clamp(0, 1)
    classes = list(dataset.classes) if dataset is not None else None
    check_model_classes(model, x, classes, spec.model.weights if spec.model else _best(spec.run))
    params = _attack_params(spec, model, x.to(loaded.device), classes)
    methods = [METHODS.canonical(m) for m in spec.methods]
    log(f"{spec.kind} attack on {len(pixels)} images" + (f", explained with {', '.join(methods)}" if methods else ""))
    config: dict[str, Any] = {"command": "audit adversarial", "model": spec.model.name if spec.model else None,
              "weights": spec.model.weights if spec.model else None, "run": spec.run, "images": spec.images,
              "data_root": spec.data_root, "attack": spec.kind,
              "attack_params": {k: v for k, v in params.items() if k != "preprocessing"}, "methods": methods,
              "targets": list(spec.targets)}
    with job_lock(out, log):
        run, result, shift = adversarial_images(
            model, pixels, labels, attack=spec.kind, attack_params=params, methods=methods,
            targets=list(spec.targets), out=out, class_names=classes, png=spec.png, batch_size=spec.batch_size,
            seed=spec.seed, config=config)
        write_provenance(run, provenance(loaded.provenance() if spec.model else {"run": spec.run},
                                         data={"images": spec.images, "n": len(pixels)},
                                         params=dict(config["attack_params"]), targets=list(spec.targets)))
    log(result.format())
    if shift is not None:
        log(shift.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return run


def _best(run: str | None) -> str | None:
    """The best checkpoint of a training run (where its class names are recorded)."""
    return str(Path(run) / "checkpoints" / "best.safetensors") if run else None


def _attack_params(spec: AdversarialSpec, model: Any, x: Any, classes: list[str] | None) -> dict[str, Any]:
    from xailab.audit.backdoor import resolve_class

    params: dict[str, Any] = {"batch_size": spec.batch_size}
    if spec.target is not None:
        k = int(model(x[:1]).shape[1])
        params["target"] = resolve_class(spec.target, classes or [str(i) for i in range(k)], "target class")
    if spec.kind == "patch":
        params.update(size=spec.patch, position=position(spec.position), stride=spec.stride,
                      random_start=spec.random_start, restarts=spec.restarts, seed=spec.seed)
        for key, val in (("eps", spec.eps), ("steps", spec.steps), ("step_size", spec.step_size)):
            if val is not None:
                params[key] = val
    elif spec.kind in ("fgsm", "fgm_l2"):
        params["eps"] = spec.eps
    else:
        params.update(eps=spec.eps, random_start=spec.random_start, restarts=spec.restarts, seed=spec.seed)
        if spec.steps is not None:
            params["steps"] = spec.steps
        if spec.step_size is not None:
            params["step_size"] = spec.step_size
    return params


@dataclass(frozen=True)
class PoisonSpec:
    """What ``xailab audit poison`` is asked to do: train ``model`` on data with a backdoor."""

    data: str
    target: str
    model: str
    data_root: str | None = None
    source: str | None = None
    fraction: float = 0.1
    trigger: str = "patch:4"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    limit_train: int | None = None
    limit_test: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    track: str = "test"  # whose predictions are recorded every epoch: the clean test set, or none
    track_limit: int | None = None
    device: str = "auto"
    quiet: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    input_range: tuple[float, float] | None = None


def poison_to_run(spec: PoisonSpec, out: str | Path, *, log: Callable[[str], None] = print) -> Run:
    """Poison the training data, train, and measure clean accuracy and attack success into ``out``."""
    import shutil

    from xailab.audit.backdoor import train_poisoned
    from xailab.train import TrainConfig
    from xailab.train.trainer import merge_section

    path = Path(out)
    check_out(path, new_only=True)  # every check on the user's input comes before the run exists
    p = _poison_inputs(spec)
    cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed,
                      device=spec.device, quiet=spec.quiet)
    settings = {"command": "audit poison", **{k: getattr(spec, k) for k in (
        "data", "data_root", "source", "target", "fraction", "trigger", "model", "epochs", "batch_size", "lr",
        "limit_train", "limit_test", "val_fraction", "seed", "track", "track_limit", "mean", "std", "input_range")}}
    train, classes = p["train"], p["train"].classes
    made_from = provenance(
        {"name": spec.model, "weights": None, "preprocessing": {"mean": list(train.mean), "std": list(train.std)}},
        data={"name": spec.data, "root": spec.data_root, "train_sha256": dataset_sha256(train),
              "test_sha256": dataset_sha256(p["test"])},
        params={k: v for k, v in settings.items() if k not in ("model", "data", "data_root")})
    log(f"poisoning {p['fraction']:.0%} of class(es) {', '.join(classes[s] for s in p['sources'])} with "
        f"{p['trigger'].spec}, relabelled as {classes[p['target']]}; training {spec.model} for {spec.epochs} epochs")
    try:
        with job_lock(path, log):
            run = Run.create(path, kind="train", config=settings)
            write_provenance(run, made_from)
            merge_section(run, "model", {"name": spec.model, "weights": None, "num_outputs": len(classes),
                                         "in_channels": train.channels})
            run.update_manifest("dataset", {"name": spec.data, "root": spec.data_root,
                                            "limit_train": spec.limit_train, "channels": train.channels,
                                            "image_size": list(train.image_size)})
            res = train_poisoned(p["model"], train, p["test"], trigger=p["trigger"], target=p["target"],
                                 source=p["sources"], fraction=p["fraction"], config=cfg, run=run,
                                 val_fraction=spec.val_fraction, seed=spec.seed, **_tracked(spec, p["test"]))
    except BaseException:
        if path.is_dir() and not any(path.rglob("epoch-*.optim.safetensors")):
            shutil.rmtree(path, ignore_errors=True)
        raise
    log(f"{int(res.train.poisoned.sum())} of {len(res.train)} training images poisoned")
    if res.evaluation is not None:
        log(res.evaluation.format())
    return run


def _tracked(spec: PoisonSpec, test: Any) -> dict[str, Any]:
    """The clean test images whose predictions the trainer records after every epoch (as ``train``)."""
    from xailab.train.recipe import stratified_indices

    if spec.track == "none":
        return {}
    return {"track": test, "track_indices": stratified_indices(test.targets, spec.track_limit, spec.seed)}


def _poison_inputs(spec: PoisonSpec) -> dict[str, Any]:
    """The checked inputs of the poison job: fraction, trigger, classes, data and model."""
    from xailab.audit.backdoor import check_fraction, resolve_class, resolve_sources
    from xailab.audit.triggers import parse_trigger
    from xailab.data import load_dataset
    from xailab.train import check_model_fits
    from xailab.train.recipe import build_model, stratified_sample
    from xailab.train.trainer import seed_everything

    fraction = check_fraction(spec.fraction)
    trigger = parse_trigger(spec.trigger, seed=spec.seed)
    if spec.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {spec.epochs}")
    if spec.track not in ("test", "none") or (spec.track_limit is not None and spec.track_limit < 1):
        raise InputError(f"--track must be test or none and --track-limit >= 1, got {spec.track}, {spec.track_limit}")
    train_all = load_dataset(spec.data, "train", spec.data_root)
    trigger.check(train_all.image_size)
    target = resolve_class(spec.target, train_all.classes, "target class")
    sources = resolve_sources(spec.source.split(",") if spec.source else None, target, train_all.classes)
    train = stratified_sample(train_all, spec.limit_train, spec.seed)
    test = stratified_sample(load_dataset(spec.data, "test", spec.data_root), spec.limit_test, spec.seed)
    user = ModelSpec(spec.model, mean=spec.mean, std=spec.std, input_range=spec.input_range)
    user.check(needs_weights=False)
    norm = user.user_preprocessing(train.channels)
    if norm is not None:  # the statistics the user trains with (recorded in every checkpoint)
        train, test = train.with_options(mean=norm[0], std=norm[1]), test.with_options(mean=norm[0], std=norm[1])
    seed_everything(spec.seed)  # the initial weights follow the seed, as in the train job
    model = build_model(spec.model, num_classes=len(train.classes), in_channels=train.channels)
    check_model_fits(model, train, len(train.classes))
    return {"fraction": fraction, "trigger": trigger, "target": target, "sources": sources, "train": train,
            "test": test, "model": model}


@dataclass(frozen=True)
class BackdoorSpec:
    """What ``xailab audit backdoor`` is asked to do: look for a backdoor per class.

    ``data`` is the model's training data; without it, ``run`` must be an ``audit poison`` run,
    whose poisoned training set is examined (and the truly poisoned items counted).
    """

    model: ModelSpec | None = None
    run: str | None = None
    data: str | None = None
    data_root: str | None = None
    split: str = "train"
    classes: tuple[str, ...] | None = None
    detectors: tuple[str, ...] = ("spectral", "scan", "ac", "spray")
    rule: str = "majority"
    method: str = "lrp"
    max_per_class: int = 500
    neighbors: int = 10
    downsample: int = 2
    ac_dims: int = 10
    ac_reduce: str = "pca"
    layer: str | None = "auto"
    png: bool = True
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"


def backdoor_to_run(spec: BackdoorSpec, out: str | Path, *, log: Callable[[str], None] = print) -> tuple[Run, Any]:
    """Run the backdoor detectors per class and combine them by the rule; returns the run and the report."""
    from xailab.audit.backdoor import resolve_class
    from xailab.jobs.audit_writers import backdoor_dataset

    check_out(out, new_only=True)
    data, truth = _backdoor_data(spec)
    loaded = load_audited(spec.model, spec.run, device=spec.device, num_classes=len(data.classes),
                          in_channels=data.channels, log=log)
    check_model_classes(loaded.model, data[0][0][None], list(data.classes),
                        spec.model.weights if spec.model else _best(spec.run))
    for c in spec.classes or ():  # names checked before any work
        resolve_class(c, data.classes)
    classes = list(spec.classes) if spec.classes else None
    from xailab.audit.ensemble import parse_rule

    detectors = tuple(spec.detectors)
    rule = parse_rule(spec.rule, detectors)  # checked before any work
    log(f"examining {len(data)} items of {len(classes) if classes else len(data.classes)} classes "
        f"(at most {spec.max_per_class} a class) with {', '.join(detectors)}; {rule.describe(len(detectors))}")
    config = {"command": "audit backdoor", "model": spec.model.name if spec.model else None,
              "weights": spec.model.weights if spec.model else None, "run": spec.run, "data": spec.data,
              "split": spec.split, "classes": classes, "detectors": list(detectors), "rule": rule.spec,
              "method": spec.method, "max_per_class": spec.max_per_class}
    params = {"spray": {"n_neighbors": spec.neighbors, "downsample": spec.downsample},
              "ac": {"dims": spec.ac_dims, "reduce": spec.ac_reduce}}
    with job_lock(out, log):
        run, report = backdoor_dataset(
            loaded.model, data, out=out, config=config, png=spec.png, truth=truth, classes=classes,
            detectors=detectors, rule=rule.spec, params=params, method=spec.method,
            max_per_class=spec.max_per_class, layer=None if spec.layer == "none" else spec.layer,
            batch_size=spec.batch_size, seed=spec.seed)
        write_provenance(run, provenance(loaded.provenance() if spec.model else {"run": spec.run},
                                         data={"data": spec.data, "split": spec.split, "n": len(data)},
                                         params=config))
    return run, report


def _backdoor_data(spec: BackdoorSpec) -> tuple[Any, Any]:
    """(dataset, poisoned mask or None): ``data``, else the poisoned training set of ``run``."""
    from xailab.data import load_dataset

    if spec.data:
        return load_dataset(spec.data, spec.split, spec.data_root), None
    if not spec.run:
        raise InputError("give the data to examine: --data (the model's training data), or --run of an audit poison run")
    from xailab.audit.backdoor import poisoned_from_run

    r = Run.open(spec.run)
    cfg = r.manifest.get("config") or {}
    if "poison" not in r.manifest:
        raise InputError(f"run {spec.run} was not made by audit poison; give its training data with --data")
    full = load_dataset(cfg["data"], "train", spec.data_root or cfg.get("data_root"))
    ds = poisoned_from_run(r, full)
    return ds, ds.poisoned
