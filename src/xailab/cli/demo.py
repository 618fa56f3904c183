"""Run the demo: train, evaluate, explain, instance flow, pretrained photos (offline, minutes)."""

from __future__ import annotations

import argparse

HELP = "run every built capability on offline data and print where the results are"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("--out", default="runs/demo", help="folder of the demo's runs (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="fewer images, samples and epochs")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.cli import main
    from xailab.demo import run_demo

    run_demo(args.out, command=main, quick=args.quick)
    return 0
