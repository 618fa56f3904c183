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

HELP = "concepts of a layer: ICE discovery (NMF), applying fitted concepts, TCAV significance tests"


def _model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    from xailab.cli.common import add_model_arguments

    add_model_arguments(p, required=required, from_run=not required)
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--progress", action="store_true", help="show progress bars")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
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


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.core.errors import InputError

    if args.action == "ice":
        return _ice(args)
    if args.action == "explain":
        return _explain(args)
    if args.action == "tcav":
        return _tcav(args)
    raise InputError("give an action: xailab concepts ice | explain | tcav (see --help)")


def _ice(args: argparse.Namespace) -> int:
    from xailab.cli.common import model_spec
    from xailab.jobs.concepts import IceSpec, ice_to_run

    spec = IceSpec(
        model=model_spec(args), images=args.images, data_root=args.data_root, layer=args.layer,
        concepts=args.concepts, curve=tuple(int(v) for v in args.curve.split(",") if v.strip()) if args.curve else (),
        curve_images=args.curve_images, epochs=args.epochs, seed=args.seed, clamp=args.clamp, presence=args.presence,
        gallery=args.gallery, png=not args.no_png, batch_size=args.batch_size, progress=args.progress,
    )
    run_ = ice_to_run(spec, args.out)
    print(f"run: {run_.path}")
    if not args.no_png:
        print(f"figures: {run_.path / 'files' / 'ice'}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from xailab.cli.common import model_override
    from xailab.jobs.concepts import ConceptMapsSpec, concept_maps_to_run

    spec = ConceptMapsSpec(images=args.images, model=model_override(args), data_root=args.data_root,
                           top=args.top, png=not args.no_png, batch_size=args.batch_size)
    run_ = concept_maps_to_run(spec, args.run)
    if not args.no_png:
        print(f"figures: {run_.path / 'files' / 'ice' / 'explain'}")
    return 0


def _tcav(args: argparse.Namespace) -> int:
    from xailab.cli.common import model_spec
    from xailab.jobs.concepts import TcavSpec, tcav_to_run

    spec = TcavSpec(
        model=model_spec(args), layer=args.layer, concepts=tuple(args.concept), random=args.random,
        images=args.images, data_root=args.data_root, random_size=args.random_size, runs=args.runs,
        classes=args.classes, max_per_class=args.max_per_class, classifier=args.classifier, alpha=args.alpha,
        seed=args.seed, png=not args.no_png, batch_size=args.batch_size,
    )
    run_ = tcav_to_run(spec, args.out)
    print(f"run: {run_.path}")
    return 0
