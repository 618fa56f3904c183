"""List the registered explanation methods."""

from __future__ import annotations

import argparse

HELP = "list the registered explanation methods"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. '*cam*'")
    p.add_argument("--family", help="gradient, cam, perturbation or propagation")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.core.registry import METHODS

    names = METHODS.available(args.pattern, args.family)
    if not names:
        from xailab.core.errors import InputError

        raise InputError(f"no method matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    for n in names:
        cls = METHODS.get(n)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        aliases = METHODS.aliases(n)
        print(f"{n:24s} {METHODS.family(n):13s} {doc}" + (f" (also: {', '.join(aliases)})" if aliases else ""))
    return 0
