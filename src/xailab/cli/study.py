"""Run one of the four classic XAI studies as a list of xailab command steps.

Each study prints every command before it runs it, resumes when rerun, and ends with a report.
``--dry-run`` prints the commands only. See docs/studies/ for what each study shows.

    xailab study list
    xailab study cifar10_cnn --out runs/study-cifar --quick
"""

from __future__ import annotations

import argparse

HELP = "run a classic XAI study (CIFAR-10 CNN, ResNet dissection, Fashion-MNIST audit, binary k-fold)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.studies import STUDIES

    sub = p.add_subparsers(dest="study", metavar="STUDY")
    sub.add_parser("list", help="list the studies")
    for name in STUDIES.available():
        study = STUDIES.get(name)
        sp = sub.add_parser(name, help=study.title, description=study.summary or study.title,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        sp.add_argument("--dry-run", action="store_true", help="print the commands without running them")
        study.add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.cli import main
    from xailab.core.errors import XailabError
    from xailab.steps import run_steps
    from xailab.studies import STUDIES

    if args.study in (None, "list"):
        for name in STUDIES.available():
            print(f"{name:24s} {STUDIES.get(name).title}")
        return 0
    study = STUDIES.get(args.study)
    steps = study.steps(args)
    if not steps:
        raise XailabError(f"study {study.name} has no steps for these options")
    seconds = run_steps(steps, command=main, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"\nstudy {study.name} finished in {seconds:.0f} s.")
    return 0
