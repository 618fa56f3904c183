"""Evaluate a trained model: accuracy, per-class accuracy, confusion matrix, macro precision,
recall and F1, and loss. Either a run made by `xailab train` (its best checkpoint by default; the
result is stored in the run) or any model spec with a weights file. Examples:

  xailab evaluate --run runs/c10
  xailab evaluate --run runs/c10 --checkpoint 3 --split train --limit 5000
  xailab evaluate --model resnet20 --weights resnet20.safetensors --data cifar10 --data-root c10.tgz
  xailab evaluate --run runs/explain   # an explain run: the methods' scoreboard (= xailab compare)
"""

from __future__ import annotations

import argparse

HELP = "evaluate a trained run or a model + weights on a dataset (accuracy, confusion, F1)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_model_arguments
    from xailab.distributed.options import add_backend_arguments

    p.add_argument("--run", help="a run made by `xailab train`")
    p.add_argument("--checkpoint", default="best", help="best (default), last or an epoch number")
    add_model_arguments(p, required=False)  # instead of --run: a model spec with --weights
    p.add_argument("--data", help="dataset (default with --run: the run's)")
    p.add_argument("--data-root", help="where the dataset's files are")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate a stratified sample of N")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--out", help="with --model: also store the evaluation in this run directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    add_backend_arguments(p)  # for an explain run (= compare); a model's evaluation stays local


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.cli.common import model_spec
    from xailab.distributed.options import backend_from_args
    from xailab.jobs.evaluate import EvaluateSpec, evaluate_to_run

    spec = EvaluateSpec(
        run=args.run, checkpoint=args.checkpoint, model=model_spec(args) if args.model else None, data=args.data,
        data_root=args.data_root, split=args.split, limit=args.limit, batch_size=args.batch_size,
        device=args.device, seed=args.seed, backend=backend_from_args(args),
    )
    evaluate_to_run(spec, args.out)
    return 0
