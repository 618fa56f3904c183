"""Concepts of a layer: ICE concept discovery, applying fitted concepts, and TCAV with your concepts.

Actions:
  ice      fit ICE concepts (NMF of a ReLU layer) over an image set; store the basis, per-class
           importance and presence, the fidelity curve and galleries in a run
  explain  apply a run's fitted concepts to new images (concept maps and contributions)
  tcav     TCAV scores of concept folders against random images, with the significance test

Examples:
  xailab concepts ice --model resnet56 --weights ../shared/data/cifar10-resnet/resnet56.safetensors \\
      --images cifar10:test:2000 --data-root ../shared/data/cifar10-jpg.tar.gz --layer layer3.8 \\
      --concepts 10 --out runs/ice
  xailab concepts explain runs/ice --images my_cat.png
  xailab concepts tcav --model resnet20 --weights resnet20.safetensors --layer layer2.2 \\
      --concept stripes=concepts/striped --random cifar10:train:2000 --images cifar10:test:1000 \\
      --data-root ../shared/data/cifar10-jpg.tar.gz --classes cat,dog --runs 10 --out runs/tcav
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "concepts of a layer: ICE discovery (NMF), applying fitted concepts, TCAV significance tests"


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", required=required, help="zoo name, TorchScript file, or package.module:factory")
    p.add_argument("--weights", help="weights file (safetensors, or a state dict; never unpickled)")
    p.add_argument("--num-classes", type=int, help="number of classes of a zoo model, if not its default")
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="action", metavar="ACTION")

    ice = sub.add_parser("ice", help="fit ICE concepts and analyse them into a run")
    _model_args(ice)
    ice.add_argument("--images", required=True, help="image set: dataset:split[:N], a folder, files")
    ice.add_argument("--layer", help="a ReLU layer (default: the last conv block, or the ReLU after it)")
    ice.add_argument("--concepts", type=int, default=10, help="number of concepts (default 10)")
    ice.add_argument("--curve", default="2,4,6,8,10,12,16,24,32",
                     help="numbers of concepts for the fidelity curve ('' for none)")
    ice.add_argument("--curve-images", type=int, default=500, help="images on which the curve is measured")
    ice.add_argument("--epochs", type=int, default=1, help="passes over the images while fitting")
    ice.add_argument("--seed", type=int, default=0)
    ice.add_argument("--clamp", action="store_true", help="factorise max(0, activations) of a layer that can be negative")
    ice.add_argument("--presence", type=float, default=0.5,
                     help="a concept counts in an image above this share of its 99th-percentile score")
    ice.add_argument("--gallery", type=int, default=8, help="images per gallery row")
    ice.add_argument("--no-png", action="store_true", help="skip the figures")
    ice.add_argument("--out", required=True, help="run directory (created; reused to resume)")

    ex = sub.add_parser("explain", help="apply a run's fitted concepts to new images")
    ex.add_argument("run", help="run directory made by `xailab concepts ice`")
    _model_args(ex, required=False)
    ex.add_argument("--images", required=True, help="image files, a folder, or dataset:split:N")
    ex.add_argument("--top", type=int, default=4, help="concepts shown per image")
    ex.add_argument("--no-png", action="store_true", help="skip the figures")

    tc = sub.add_parser("tcav", help="TCAV scores of concept folders, with the significance test")
    _model_args(tc)
    tc.add_argument("--layer", required=True, help="layer whose activations the CAVs live in")
    tc.add_argument("--concept", action="append", required=True, metavar="NAME=FOLDER",
                    help="a concept and its folder of example images (repeatable)")
    tc.add_argument("--random", required=True,
                    help="pool of random images (folder or dataset:split[:N]) from which the random sets are drawn")
    tc.add_argument("--random-size", type=int, help="images per random set (default: the largest concept's size, at most 100)")
    tc.add_argument("--runs", type=int, default=10, help="CAVs per concept (random sets: runs + 1; default 10)")
    tc.add_argument("--images", required=True, help="labelled images of the classes to test (dataset:split[:N] or folder)")
    tc.add_argument("--classes", help="classes to test, names or indices, comma-separated (default: all)")
    tc.add_argument("--max-per-class", type=int, default=200, help="images per class tested")
    tc.add_argument("--classifier", choices=["logistic", "sgd"], default="logistic")
    tc.add_argument("--alpha", type=float, default=0.05, help="significance level (Bonferroni-corrected)")
    tc.add_argument("--seed", type=int, default=0)
    tc.add_argument("--no-png", action="store_true", help="skip the figure")
    tc.add_argument("--out", required=True, help="run directory")


def _setup(args: argparse.Namespace) -> tuple[Any, Any, str]:
    import torch

    from xailab.models import get_preprocessing, load_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = load_model(args.model, args.weights, num_classes=args.num_classes).to(device)
    return model, get_preprocessing(model), device


def _images(spec: str, prep: Any, root: str | None) -> tuple[Any, Any, list[str], list[str] | None, Any]:
    from xailab.data import load_images

    x, y, names, ds = load_images(spec, prep, root=root)
    if prep is not None:
        display = prep.denormalize
    elif ds is not None and ds.normalize:
        display = ds.preprocessing.denormalize
    else:
        display = None
    return x, y, names, (list(ds.classes) if ds is not None else None), display


def run(args: argparse.Namespace) -> int:
    from xailab.core.errors import InputError

    if args.action == "ice":
        return _ice(args)
    if args.action == "explain":
        return _explain(args)
    if args.action == "tcav":
        return _tcav(args)
    raise InputError("give an action: xailab concepts ice | explain | tcav (see --help)")


def _ice(args: argparse.Namespace) -> int:
    from xailab.concepts.ice_run import ice_to_run

    model, prep, device = _setup(args)
    x, y, names, classes, display = _images(args.images, prep, args.data_root)
    curve = [int(v) for v in args.curve.split(",") if v.strip()] if args.curve else []
    print(f"ICE over {len(x)} images, {args.concepts} concepts")
    run_ = ice_to_run(
        model, x.to(device), out=args.out, labels=y, names=names, class_names=classes, display=display,
        n_concepts=args.concepts, layer=args.layer, curve=curve, curve_images=args.curve_images,
        batch_size=args.batch_size, epochs=args.epochs, seed=args.seed, clamp=args.clamp,
        presence=args.presence, gallery=args.gallery, png=not args.no_png, progress=args.progress,
        config={"model": args.model, "weights": args.weights, "num_classes": args.num_classes,
                "images": args.images, "data_root": args.data_root, "device": device},
    )
    imp = run_.read_table("ice_importance")
    top = imp.loc[imp.groupby("class")["contribution"].idxmax()]
    print("most contributing concept per class:")
    for _, r in top.iterrows():
        print(f"  {r['class_name']:>12s}: concept {int(r['concept'])} (presence {r['presence']:.2f})")
    print(f"run: {run_.path}")
    if not args.no_png:
        print(f"figures: {run_.path / 'files' / 'ice'}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from xailab.concepts.ice_run import explain_to_run
    from xailab.runs.store import Run

    run_ = Run.open(args.run)
    cfg = run_.manifest.get("config", {})
    for key in ("model", "weights", "num_classes", "data_root"):
        if getattr(args, key, None) is None and cfg.get(key) is not None:
            setattr(args, key, cfg[key])
    if args.model is None:
        from xailab.core.errors import InputError

        raise InputError("the run does not record its model: pass --model (and --weights)")
    model, prep, device = _setup(args)
    x, _, names, _, display = _images(args.images, prep, args.data_root)
    cm = explain_to_run(model, run_, x.to(device), names=names, display=display, top=args.top,
                        batch_size=args.batch_size, png=not args.no_png)
    for i, name in enumerate(names):
        order = cm.contribution[i].argsort(descending=True)[: args.top].tolist()
        parts = ", ".join(f"c{c} {float(cm.contribution[i, c]):+.2f}" for c in order)
        print(f"{name}: class {int(cm.targets[i])}; top concepts {parts}")
    if not args.no_png:
        print(f"figures: {run_.path / 'files' / 'ice' / 'explain'}")
    return 0


def _tcav(args: argparse.Namespace) -> int:
    import torch

    from xailab.concepts.tcav import load_concept_images, random_subsets, run_tcav, tcav_to_run
    from xailab.core.errors import InputError

    model, prep, device = _setup(args)
    concepts = {}
    for item in args.concept:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise InputError(f"--concept expects NAME=FOLDER, got {item!r}")
        concepts[name] = load_concept_images(folder, prep)[0].to(device)
    pool, _, _, _, _ = _images(args.random, prep, args.data_root)
    size = args.random_size or min(100, max(len(c) for c in concepts.values()))
    sets = [pool[i].to(device) for i in random_subsets(len(pool), args.runs + 1, size, seed=args.seed)]
    x, y, _, classes, _ = _images(args.images, prep, args.data_root)
    if y is None:
        with torch.no_grad():
            y = torch.cat([model(x[i : i + args.batch_size].to(device)).argmax(1).cpu()
                           for i in range(0, len(x), args.batch_size)])
        print("the images have no labels: classes are the model's predictions")
    wanted = _parse_classes(args.classes, classes, int(y.max()) + 1)
    class_images = {k: x[(y == k).nonzero().flatten()[: args.max_per_class]].to(device) for k in wanted}
    print(f"TCAV at {args.layer}: {len(concepts)} concepts x {len(wanted)} classes, {args.runs} runs, random sets of {size}")
    res = run_tcav(model, args.layer, concepts, sets, class_images, class_names=classes,
                   batch_size=args.batch_size, seed=args.seed, classifier=args.classifier, alpha=args.alpha)
    run_ = tcav_to_run(res, args.out, png=not args.no_png,
                       config={"model": args.model, "weights": args.weights, "layer": args.layer})
    cols = ["concept", "class_name", "score_mean", "score_std", "random_mean", "p_value", "significant", "cav_accuracy"]
    print(res.table[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"run: {run_.path}")
    return 0


def _parse_classes(text: str | None, classes: list[str] | None, n: int) -> list[int]:
    from xailab.core.errors import TargetError

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
