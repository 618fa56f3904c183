"""Recipes: a list of ``xailab`` commands run one after another, each printed before it runs.

The demo and the four studies are recipes. A recipe is data (what each step does, its argv),
so it can be printed (``--dry-run``), rerun by hand, or changed one step at a time; every
command it calls resumes, so a rerun skips what is finished.

    run_steps([("evaluate the model", ["evaluate", "--run", "runs/train"])])
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence

Step = tuple[str, list[str]]


def command_line(argv: Sequence[str]) -> str:
    """The shell line a person would type for ``argv``."""
    return f"xailab {shlex.join(argv)}"


def run_steps(steps: Sequence[Step], *, log: Callable[[str], None] = print, dry_run: bool = False) -> float:
    """Run each step through the CLI's ``main``; stop at the first failure (``SystemExit``).

    Returns the seconds the whole recipe took. With ``dry_run`` only prints the commands.
    """
    from xailab.cli import main

    start = time.perf_counter()
    for i, (what, argv) in enumerate(steps, 1):
        log(f"\n[{i}/{len(steps)}] {what}\n$ {command_line(argv)}")
        if dry_run:
            continue
        t0 = time.perf_counter()
        code = main(argv)
        if code != 0:
            raise SystemExit(code)
        log(f"[{i}/{len(steps)}] done in {time.perf_counter() - t0:.0f} s")
    return time.perf_counter() - start
