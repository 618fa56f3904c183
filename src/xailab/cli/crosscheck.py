"""Check a run's Integrated Gradients maps against Captum's, recomputed on the same model,
images, targets, baselines, steps and rule; write table ``crosscheck`` into the run.

One row per image, target and baseline: max |ours - Captum|, relative L2 error, Pearson and
Spearman of the two maps, and each implementation's completeness error (delta). Needs Captum
(``pip install captum``). The model defaults to the one the run's config records.

Examples:
  xailab crosscheck runs/ig-black --method integrated_gradients --against captum
  xailab crosscheck runs/ig-5050 --model binary_cnn --weights runs/cv/folds/fold-1/checkpoints/best.safetensors
"""

from __future__ import annotations

import argparse

HELP = "check a run's IG maps against Captum's on the same model, images and baselines"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run directory written by `xailab explain` (with integrated_gradients)")
    p.add_argument("--method", default="integrated_gradients",
                   help="the run's name of the method to check (integrated_gradients, or a NAME given as "
                        "NAME=integrated_gradients to `xailab explain`)")
    p.add_argument("--against", default="captum", help="the reference library (captum)")
    p.add_argument("--model", help="zoo name, TorchScript file, or package.module:factory (default: the run's)")
    p.add_argument("--weights", help="weights file (default: the run's)")
    p.add_argument("--pretrained", action="store_true", help="a zoo model with its published weights")
    p.add_argument("--num-classes", type=int, help="number of classes of a zoo model, if not its default")
    p.add_argument("--batch-size", type=int, help="most samples in one forward pass (default: the run's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (default cpu: the run's maps were "
                   "usually made there, and the check compares digits)")


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from xailab.crosscheck import crosscheck_run, summary
    from xailab.models import create_model, load_model
    from xailab.runs import Run, RunError

    run_ = Run.open(args.run)
    config = run_.manifest.get("config", {})
    spec = args.model or config.get("model")
    if not spec:
        raise RunError(f"run {run_.path} does not record its model; pass --model (and --weights)")
    weights = args.weights if args.weights is not None else (config.get("weights") if not args.model else None)
    pretrained = args.pretrained or (not args.model and bool(config.get("pretrained")))
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    num_classes = args.num_classes or config.get("num_classes")
    if pretrained and not weights:
        model = create_model(spec, pretrained=True, num_classes=num_classes)
    else:
        model = load_model(spec, weights, num_classes=num_classes)
    table = crosscheck_run(run_, model.to(device), method=args.method, against=args.against,
                           batch_size=args.batch_size)
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summary(table).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\ntable: crosscheck ({len(table)} rows, part {args.method}-{args.against}) in {run_.path / 'tables'}")
    return 0
