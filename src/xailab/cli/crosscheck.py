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
    """The options of this command."""
    from xailab.cli.common import add_model_arguments

    p.add_argument("run", help="run directory written by `xailab explain` (with integrated_gradients)")
    p.add_argument("--method", default="integrated_gradients",
                   help="the run's name of the method to check (integrated_gradients, or a NAME given as "
                        "NAME=integrated_gradients to `xailab explain`)")
    p.add_argument("--against", default="captum", help="the reference library (captum)")
    add_model_arguments(p, from_run=True, device="cpu")
    p.add_argument("--batch-size", type=int, help="most samples in one forward pass (default: the run's)")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    import pandas as pd

    from xailab.cli.common import model_override
    from xailab.jobs.crosscheck import TABLE, CrosscheckSpec, crosscheck_to_run

    spec = CrosscheckSpec(model=model_override(args), method=args.method, against=args.against,
                          batch_size=args.batch_size)
    run_ = crosscheck_to_run(spec, args.run)
    part = f"{args.method}-{args.against}"
    rows = len(pd.read_parquet(run_.table_dir(TABLE) / f"{part}.parquet"))
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(pd.DataFrame(run_.manifest[TABLE][part]).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"\ntable: crosscheck ({rows} rows, part {part}) in {run_.path / 'tables'}")
    return 0
