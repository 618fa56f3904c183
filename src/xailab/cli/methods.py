"""List the registered explanation methods."""

from __future__ import annotations

import argparse

HELP = "list the registered explanation methods"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*cam*'")
    p.add_argument("--family", help="gradient, cam, perturbation or propagation")


def run(args: argparse.Namespace) -> int:
    """Print the matching methods from the catalogue (no torch); returns the exit status."""
    from xailab.cli.listings import catalogue, matching, method_lines

    rows = catalogue()["methods"]
    names = matching(rows, args.pattern, args.family)
    if not names:
        from xailab.core.errors import InputError

        raise InputError(f"no method matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    print("\n".join(method_lines(rows, names)))
    return 0
