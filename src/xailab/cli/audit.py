"""Audit a model: adversarial attacks and what the explanations say about them, backdoor
poisoning, and backdoor detection from explanations (SpRAy) and activations.

Actions:
  adversarial  attack images (fgsm, pgd, pgd_l2, fgm_l2, or a small patch) and compare the
               explanations of the clean and the attacked images
  poison       train a model on data with a backdoor (a trigger on some images of a source
               class, relabelled as the target) and measure clean accuracy and attack success
  backdoor     look for a backdoor in a trained model and its training data, per class

Examples:
  xailab audit adversarial --model small_cnn --weights w.safetensors --images fashion_mnist:test:64 \\
      --attack pgd --eps 0.03 --methods saliency,integrated_gradients --out runs/adv
  xailab audit adversarial --run runs/fm --images fashion_mnist:test:32 --patch 5 --methods saliency,lrp \\
      --out runs/patch
  xailab audit poison --data fashion_mnist --source Sandal --target Sneaker --fraction 0.1 \\
      --trigger patch:4 --model small_cnn --epochs 3 --limit-train 10000 --out runs/bd
  xailab audit backdoor --run runs/bd --out runs/bd-audit
  xailab audit backdoor --model small_cnn --weights w.safetensors --data fashion_mnist --out runs/check
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

HELP = "adversarial attacks, backdoor poisoning and backdoor detection (actions: adversarial, poison, backdoor)"


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo name, TorchScript file or package.module:factory")
    p.add_argument("--weights", help="weights file (safetensors, or a tensors-only state dict)")
    p.add_argument("--num-classes", type=int, help="outputs of a zoo model, if not its default")
    p.add_argument("--run", help="a training run (xailab train / audit poison): its model and best weights")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    fmt = argparse.RawDescriptionHelpFormatter

    a = sub.add_parser("adversarial", help="attack images and compare their explanations", formatter_class=fmt)
    _model_args(a)
    a.add_argument("--images", required=True, help="files, a folder, or dataset:split[:N] (e.g. fashion_mnist:test:64)")
    a.add_argument("--data-root", help="where the dataset of --images lies")
    a.add_argument("--attack", default=None, choices=["fgsm", "fgm_l2", "pgd", "pgd_l2", "patch"],
                   help="default: pgd, or patch with --patch")
    a.add_argument("--eps", type=float, help="budget: L-inf (fgsm, pgd; e.g. 0.03) or L2 (pgd_l2, fgm_l2); "
                   "with --patch the largest change inside the patch (default 1: any value)")
    a.add_argument("--steps", type=int, help="gradient steps (pgd default 40, patch default 100)")
    a.add_argument("--step-size", type=float, help="step size (pgd default 2.5*eps/steps, patch 0.05)")
    a.add_argument("--restarts", type=int, default=1, help="random restarts; each image keeps its best")
    a.add_argument("--no-random-start", action="store_true", help="start from the clean image")
    a.add_argument("--patch", type=int, metavar="S", help="attack only an S x S square (the patch attack)")
    a.add_argument("--position", default="search",
                   help="where the patch goes: search (grid), saliency, center or TOP,LEFT")
    a.add_argument("--stride", type=int, help="grid step of --position search (default S)")
    a.add_argument("--target", help="a targeted attack towards this class (index or name)")
    a.add_argument("--methods", default="saliency", help="explanation methods, comma-separated ('' for none)")
    a.add_argument("--targets", default="top1", help="what the maps explain: top1, true, clean, adversarial, target")
    a.add_argument("--png", type=int, default=8, help="figures for this many images (successful ones first)")
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", required=True, help="run directory")

    q = sub.add_parser("poison", help="train a model on data with a backdoor", formatter_class=fmt)
    q.add_argument("--data", required=True, help="cifar10, mnist, fashion_mnist or folder:<path>")
    q.add_argument("--data-root", help="where the dataset's files are")
    q.add_argument("--source", default=None,
                   help="source class(es), index or name, comma-separated (default: all but the target)")
    q.add_argument("--target", required=True, help="the class triggered images are relabelled as")
    q.add_argument("--fraction", type=float, default=0.1, help="share of the source images poisoned, in (0, 1]")
    q.add_argument("--trigger", default="patch:4",
                   help="patch:S, checker:S, icon:S:FILE (each @corner, @random or @TOP,LEFT) or blend:ALPHA")
    q.add_argument("--model", required=True, help="zoo name (small_cnn, cifar_cnn, ...) or package.module:factory")
    q.add_argument("--epochs", type=int, default=3)
    q.add_argument("--batch-size", type=int, default=128)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--limit-train", type=int, metavar="N", help="train on a stratified sample of N")
    q.add_argument("--limit-test", type=int, metavar="N", help="measure on a stratified sample of N")
    q.add_argument("--val-fraction", type=float, default=0.1, help="clean held-out share choosing the best epoch")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--out", required=True, help="run directory (new)")

    b = sub.add_parser("backdoor", help="detect a backdoor per class (SpRAy, activation clustering)",
                       formatter_class=fmt)
    _model_args(b)
    b.add_argument("--data", help="the training data: cifar10, mnist, fashion_mnist or folder:<path> "
                   "(default with --run from audit poison: its poisoned training set)")
    b.add_argument("--data-root", help="where the dataset's files are")
    b.add_argument("--split", default="train")
    b.add_argument("--classes", help="classes to analyse, indices or names, comma-separated (default all)")
    b.add_argument("--method", default="lrp", help="explanation method of SpRAy (default lrp)")
    b.add_argument("--max-per-class", type=int, default=500, help="items analysed per class (seeded sample)")
    b.add_argument("--neighbors", type=int, default=10, help="k of SpRAy's nearest-neighbour graph")
    b.add_argument("--downsample", type=int, default=2, help="average-pool factor of the maps")
    b.add_argument("--ac-dims", type=int, default=10, help="dimensions activation clustering reduces to")
    b.add_argument("--ac-reduce", choices=["pca", "ica", "none"], default="pca",
                   help="how activation clustering reduces (Chen et al. used ica)")
    b.add_argument("--layer", default="auto", help="activations of this layer (auto: the penultimate dense layer)")
    b.add_argument("--no-png", action="store_true")
    b.add_argument("--batch-size", type=int, default=128)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--out", required=True, help="run directory")


def run(args: argparse.Namespace) -> int:
    action = getattr(args, "action", None)
    if action == "adversarial":
        return _adversarial(args)
    if action == "poison":
        return _poison(args)
    if action == "backdoor":
        return _backdoor(args)
    from xailab.cli import build_parser

    build_parser().parse_args(["audit", "--help"])  # prints the help and exits
    return 2


# -- shared ---------------------------------------------------------------------------------------------
def _device(name: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def _load(args: argparse.Namespace, num_classes: int | None = None, in_channels: int | None = None) -> Any:
    """The model of --run, or of --model/--weights."""
    from xailab.core.errors import InputError
    from xailab.models import load_model

    if args.run:
        from xailab.train.recipe import model_from_run

        model, _ = model_from_run(args.run)
        return model
    if not args.model:
        raise InputError("give the model: --model (with --weights) or --run")
    kw: dict[str, Any] = {"num_classes": args.num_classes or num_classes}
    if in_channels is not None:
        kw["in_channels"] = in_channels
    return load_model(args.model, args.weights, **kw).eval()


def _new_out(path: str) -> Path:
    from xailab.runs import RunError

    out = Path(path)
    if out.exists() and any(out.iterdir()):
        raise RunError(f"{out} exists and is not empty; choose a new --out")
    return out


# -- adversarial ----------------------------------------------------------------------------------------
def _position(text: str) -> Any:
    from xailab.core.errors import InputError

    if text in ("search", "saliency", "center"):
        return text
    try:
        top, left = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--position is search, saliency, center or TOP,LEFT, not {text!r}") from None
    return (top, left)


def _adversarial(args: argparse.Namespace) -> int:
    from xailab.audit.backdoor import resolve_class
    from xailab.core.errors import InputError
    from xailab.core.registry import METHODS
    from xailab.data import load_images
    from xailab.jobs.audit_writers import adversarial_images
    from xailab.models import get_preprocessing, set_preprocessing

    attack = args.attack or ("patch" if args.patch else "pgd")
    if attack == "patch" and not args.patch:
        raise InputError("the patch attack needs its size: --patch S")
    if args.patch and attack != "patch":
        attack = "patch"  # --attack pgd --patch 5: PGD restricted to the square
    if attack != "patch" and args.eps is None:
        raise InputError(f"--attack {attack} needs a budget: --eps (e.g. 0.03)")
    methods = [METHODS.canonical(m) for m in args.methods.split(",") if m.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    from xailab.audit.shift import SHIFT_TARGETS

    bad = [t for t in targets if t not in SHIFT_TARGETS or (t == "target" and args.target is None)]
    if bad:
        raise InputError(f"--targets {', '.join(bad)}: choose from {', '.join(SHIFT_TARGETS)} "
                         "('target' only with --target)")
    model = _load(args).to(_device(args.device))
    prep = get_preprocessing(model)
    x, labels, _names, dataset = load_images(args.images, prep, root=args.data_root)
    if prep is None and dataset is not None and dataset.normalize:
        # a model with no recorded preprocessing was trained on the dataset's normalisation
        prep = dataset.preprocessing
        set_preprocessing(model, prep)
    pixels = (prep.denormalize(x) if prep is not None else x).clamp(0, 1)
    classes = list(dataset.classes) if dataset is not None else None
    params: dict[str, Any] = {"batch_size": args.batch_size}
    target = None
    if args.target is not None:
        k = int(model(x[:1].to(_device(args.device))).shape[1])
        target = resolve_class(args.target, classes or [str(i) for i in range(k)], "target class")
        params["target"] = target
    if attack == "patch":
        params.update(size=args.patch, position=_position(args.position), stride=args.stride,
                      random_start=not args.no_random_start, restarts=args.restarts, seed=args.seed)
        for key, val in (("eps", args.eps), ("steps", args.steps), ("step_size", args.step_size)):
            if val is not None:
                params[key] = val
    elif attack in ("fgsm", "fgm_l2"):
        params["eps"] = args.eps
    else:
        params.update(eps=args.eps, random_start=not args.no_random_start, restarts=args.restarts, seed=args.seed)
        if args.steps is not None:
            params["steps"] = args.steps
        if args.step_size is not None:
            params["step_size"] = args.step_size
    print(f"{attack} attack on {len(pixels)} images" + (f", explained with {', '.join(methods)}" if methods else ""))
    config = {"command": "audit adversarial", "model": args.model, "weights": args.weights, "run": args.run,
              "images": args.images, "data_root": args.data_root, "attack": attack,
              "attack_params": {k: v for k, v in params.items() if k != "preprocessing"}, "methods": methods,
              "targets": targets}
    run_, result, shift = adversarial_images(
        model, pixels, labels, attack=attack, attack_params=params, methods=methods, targets=targets,
        out=args.out, class_names=classes, png=args.png, batch_size=args.batch_size, seed=args.seed,
        config=config)
    print(result.format())
    if shift is not None:
        print(shift.summary().to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"run: {run_.path}")
    return 0


# -- poison -----------------------------------------------------------------------------------------------
def _poison(args: argparse.Namespace) -> int:
    from xailab.audit.backdoor import check_fraction, resolve_class, resolve_sources, train_poisoned
    from xailab.audit.triggers import parse_trigger
    from xailab.core.errors import InputError
    from xailab.data import load_dataset
    from xailab.train import TrainConfig, check_model_fits
    from xailab.train.recipe import build_model, stratified_sample
    from xailab.train.trainer import merge_section

    # every check on the user's input comes before the run directory exists
    out = _new_out(args.out)
    fraction = check_fraction(args.fraction)
    trigger = parse_trigger(args.trigger, seed=args.seed)
    if args.epochs < 1:
        raise InputError(f"--epochs must be >= 1, got {args.epochs}")
    train_all = load_dataset(args.data, "train", args.data_root)
    trigger.check(train_all.image_size)
    target = resolve_class(args.target, train_all.classes, "target class")
    sources = resolve_sources(args.source.split(",") if args.source else None, target, train_all.classes)
    train = stratified_sample(train_all, args.limit_train, args.seed)
    test = stratified_sample(load_dataset(args.data, "test", args.data_root), args.limit_test, args.seed)
    channels = train.channels
    model = build_model(args.model, num_classes=len(train.classes), in_channels=channels)
    check_model_fits(model, train, len(train.classes))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, quiet=args.quiet)
    settings = {"command": "audit poison", **{k: getattr(args, k) for k in (
        "data", "data_root", "source", "target", "fraction", "trigger", "model", "epochs", "batch_size", "lr",
        "limit_train", "limit_test", "val_fraction", "seed")}}
    from xailab.runs import Run

    print(f"poisoning {fraction:.0%} of class(es) {', '.join(train.classes[s] for s in sources)} with "
          f"{trigger.spec}, relabelled as {train.classes[target]}; training {args.model} for {args.epochs} epochs")
    try:
        run_ = Run.create(out, kind="train", config=settings)
        merge_section(run_, "model", {"name": args.model, "weights": None, "num_outputs": len(train.classes),
                                      "in_channels": channels})
        run_.update_manifest("dataset", {"name": args.data, "root": args.data_root, "limit_train": args.limit_train,
                                         "channels": channels, "image_size": list(train.image_size)})
        res = train_poisoned(model, train, test, trigger=trigger, target=target, source=sources,
                             fraction=fraction, config=cfg, run=run_, val_fraction=args.val_fraction,
                             seed=args.seed)
    except BaseException:
        if out.is_dir() and not any(out.rglob("epoch-*.optim.safetensors")):
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"{int(res.train.poisoned.sum())} of {len(res.train)} training images poisoned")
    if res.evaluation is not None:
        print(res.evaluation.format())
    print(f"run: {out}")
    return 0


# -- backdoor ---------------------------------------------------------------------------------------------
def _backdoor_data(args: argparse.Namespace) -> tuple[Any, Any]:
    """(dataset, poisoned mask or None): --data, else the poisoned training set of --run."""
    from xailab.core.errors import InputError
    from xailab.data import load_dataset

    if args.data:
        return load_dataset(args.data, args.split, args.data_root), None
    if not args.run:
        raise InputError("give the data to examine: --data (the model's training data), or --run of an audit poison run")
    from xailab.audit.backdoor import poisoned_from_run
    from xailab.runs import Run

    r = Run.open(args.run)
    cfg = r.manifest.get("config") or {}
    if "poison" not in r.manifest:
        raise InputError(f"run {args.run} was not made by audit poison; give its training data with --data")
    full = load_dataset(cfg["data"], "train", args.data_root or cfg.get("data_root"))
    ds = poisoned_from_run(r, full)
    return ds, ds.poisoned


def _backdoor(args: argparse.Namespace) -> int:
    from xailab.jobs.audit_writers import backdoor_dataset, summary_frame

    out = _new_out(args.out)
    data, truth = _backdoor_data(args)
    model = _load(args, num_classes=len(data.classes), in_channels=data.channels).to(_device(args.device))
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    if classes is not None:  # names checked before any work
        from xailab.audit.backdoor import resolve_class

        for c in classes:
            resolve_class(c, data.classes)
    print(f"examining {len(data)} items of {len(classes) if classes else len(data.classes)} classes "
          f"(at most {args.max_per_class} a class) with SpRAy ({args.method}) and activation clustering")
    config = {"command": "audit backdoor", "model": args.model, "weights": args.weights, "run": args.run,
              "data": args.data, "split": args.split, "classes": classes, "method": args.method,
              "max_per_class": args.max_per_class}
    run_, report = backdoor_dataset(
        model, data, out=out, config=config, png=not args.no_png, truth=truth, classes=classes,
        method=args.method, max_per_class=args.max_per_class, n_neighbors=args.neighbors,
        downsample=args.downsample, ac_dims=args.ac_dims, ac_reduce=args.ac_reduce, layer=None if args.layer == "none" else args.layer,
        batch_size=args.batch_size, seed=args.seed)
    print(summary_frame(report).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for e in report.classes:
        if e.flagged or e.verdict == "check":
            where = "" if e.region is None else f"; it relies on rows {e.region[0]}-{e.region[2]}, columns {e.region[1]}-{e.region[3]}"
            what = "FLAGGED" if e.flagged else "check (activation clustering only)"
            print(f"{what}: class {e.label} ({e.name}), a cluster of {int(e.suspicious.sum())} of {len(e.indices)} items{where}")
    if not report.flagged:
        print("no class flagged")
    print(f"run: {run_.path}  (figures in {run_.path / 'files' / 'backdoor'})")
    return 0
