"""Explanations over training: explain a train run's tracked instances at every saved epoch and
measure when each map settled and whether it moved before, with or after the prediction flipped.

Writes into the train run: maps per epoch (float16, CAMs at their layer's resolution), tables
of drift (rank correlation and top-10 % IoU against the epoch before and the last), settling
epochs, flips and region mass, figures, and a strip per interesting instance that the flow page
links. Rerunning resumes: finished (epoch, method) pairs are kept. `xailab report RUN` shows a
Learning page. Examples:

  xailab learning runs/c10 --methods gradcam,saliency --epochs 1-15
  xailab learning runs/poisoned --methods gradcam --region box:23,23,28,28 --region border:2
"""

from __future__ import annotations

import argparse

HELP = "explanations per checkpoint of a train run: drift, settling epochs, flips vs map changes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("run", help="a run made by `xailab train` (per-epoch checkpoints and predictions)")
    p.add_argument("--methods", default="gradcam,saliency", help="comma-separated (default gradcam,saliency)")
    p.add_argument("--epochs", metavar="A-B", help="inclusive epoch range (default: every saved epoch)")
    p.add_argument("--target", choices=("true", "top1"), default="true",
                   help="class explained: the true one (default; the same at every epoch) or each epoch's top-1")
    p.add_argument("--region", action="append", default=[], metavar="SPEC",
                   help="share of |map| in a region per epoch: box:x0,y0,x1,y1 (pixels, end exclusive) "
                        "or border:k (repeatable)")
    p.add_argument("--layer", help="layer for CAM methods (default: the last conv block)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="a method parameter (repeatable)")
    p.add_argument("--limit", type=int, help="explain a stratified sample of N tracked instances")
    p.add_argument("--batch-size", type=int, default=64, help="most samples in one forward pass")
    p.add_argument("--settle", type=float, default=0.8,
                   help="settled: rank correlation with the last epoch stays >= this (default 0.8)")
    p.add_argument("--window", type=int, default=2,
                   help="epochs either side of a flip searched for the largest map change (default 2)")
    p.add_argument("--strips", type=int, default=24, help="instances drawn as strips (default 24)")
    p.add_argument("--concepts", type=int, default=0, metavar="K",
                   help="also ICE: K concepts fitted on the last epoch, their presence per class at every epoch")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def run(args: argparse.Namespace) -> int:
    """Build the job's spec from the options, run the job, print; returns the exit status."""
    from xailab.cli.common import parse_sets
    from xailab.jobs.learning import LearningSpec, learning_to_run

    spec = LearningSpec(
        run=args.run, methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), epochs=args.epochs,
        target=args.target, regions=tuple(args.region), method_params=parse_sets(args.set), layer=args.layer,
        limit=args.limit, batch_size=args.batch_size, settle=args.settle, window=args.window,
        strips=args.strips, concepts=args.concepts, device=args.device,
    )
    run_ = learning_to_run(spec)
    print(f"run: {run_.path}")
    return 0
