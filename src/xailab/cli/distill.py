"""Distillation: simple models that mimic the network, and the rules they follow.

A shallow decision tree and a sparse (L1) linear model are fitted to the network's predictions
from interpretable features and measured on held-out images: fidelity (agreement with the
network), accuracy, size; the tree's rules are printed and drawn, and for every class the rule
set that covers most of its predictions. --student also distils a small CNN from the teacher's
soft labels (Hinton et al. 2015), saved as a model + weights that every method explains, with
the agreement of its Grad-CAM and saliency maps with the teacher's.

Features: ice:RUN (concept scores of an `xailab concepts ice` run), units:RUN[:LAYER] (the
labelled units of an `xailab dissect` run), pixels (colour and texture of a grid of regions).

Examples:
  xailab distill --model resnet20 --weights ../shared/data/cifar10-resnet/resnet20.safetensors \\
      --images cifar10:test:2000 --data-root ../shared/data/cifar10-jpg.tar.gz \\
      --features ice:runs/ice --depths 3,5,8 --out runs/distill
  xailab distill ... --features ice:runs/ice --classes cat,dog --depth 3 --out runs/distill-cat-dog
  xailab distill --model small_cnn --weights runs/fashion/checkpoints/best.safetensors \\
      --images fashion_mnist:train:6000 --test-images fashion_mnist:test:1000 --features pixels \\
      --student --student-epochs 5 --out runs/distill-fashion
"""

from __future__ import annotations

import argparse

HELP = "distillation: surrogate trees / sparse linear models with rules, and a student CNN"


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_model_arguments

    add_model_arguments(p)
    p.add_argument("--images", required=True, help="images: dataset:split[:N], a folder or archive, files")
    p.add_argument("--test-images", help="held-out images (default: --holdout of --images)")
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--features", default="pixels", help="ice:RUN | units:RUN[:LAYER] | pixels (default pixels)")
    p.add_argument("--ice-score", default="max", choices=("max", "mean", "presence"),
                   help="per concept: its largest or mean score over the layer, or presence 0/1 (max)")
    p.add_argument("--grid", type=int, default=3, help="pixels: regions per side (3)")
    p.add_argument("--holdout", type=float, default=0.3, help="share of --images held out (0.3)")
    p.add_argument("--classes", help="only the images the network puts in these classes, e.g. cat,dog")
    p.add_argument("--depth", type=int, default=5, help="maximum depth of the surrogate tree (5)")
    p.add_argument("--depths", type=_ints, default=(3, 5, 8), help="depths of the fidelity curve (3,5,8)")
    p.add_argument("--rule-depth", type=int, default=4, help="depth of the per-class one-vs-rest trees (4)")
    p.add_argument("--min-leaf", type=int, default=1, help="fewest fitting images in a leaf (1)")
    p.add_argument("--linear-c", type=float, default=0.1, help="inverse L1 strength of the linear model (0.1)")
    p.add_argument("--min-per-class", type=int, default=5, help="refuse a class with fewer fitting images (5)")
    p.add_argument("--student", action="store_true", help="also distil a small CNN student")
    p.add_argument("--student-epochs", type=int, default=10, help="student training epochs (10)")
    p.add_argument("--temperature", type=float, default=4.0, help="softmax temperature of the soft labels (4)")
    p.add_argument("--alpha", type=float, default=0.9, help="weight of the soft-label loss, 1 - weight of hard (0.9)")
    p.add_argument("--map-images", type=int, default=32, help="held-out images whose maps are compared (32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the trees and the student")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--no-png", action="store_true", help="skip the figures")
    p.add_argument("--out", required=True, help="run directory (created)")


def run(args: argparse.Namespace) -> int:
    """Build the job's spec from the options, run the job, print; returns the exit status."""
    from xailab.cli.common import model_spec
    from xailab.jobs.distill import DistillSpec, StudentSettings, distill_to_run

    spec = DistillSpec(
        model=model_spec(args), images=args.images, features=args.features, test_images=args.test_images,
        data_root=args.data_root, holdout=args.holdout, classes=args.classes, ice_score=args.ice_score,
        grid=args.grid, depth=args.depth, depths=tuple(args.depths), linear_c=args.linear_c, min_leaf=args.min_leaf,
        rule_depth=args.rule_depth, min_per_class=args.min_per_class, student=args.student,
        student_settings=StudentSettings(epochs=args.student_epochs, temperature=args.temperature, alpha=args.alpha,
                                         seed=args.seed),
        map_images=args.map_images, seed=args.seed, batch_size=args.batch_size, png=not args.no_png,
    )
    run_ = distill_to_run(spec, args.out)
    print(f"rules: {run_.path / 'files' / 'distill' / 'rules.txt'}")
    student = run_.manifest["distill"].get("student")
    if student:
        print(f"explain the student: {student['explain']}")
    return 0
