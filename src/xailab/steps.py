"""Command steps: a list of ``xailab`` commands run one after another, each printed before it runs.

The demo and the four studies are lists of steps. A list of steps is data (what each step does,
its argv), so it can be printed (``--dry-run``), rerun by hand, or changed one step at a time;
every command it calls resumes, so a rerun skips what is finished.

This module does not import the command line: whoever runs the steps passes the function that
runs one argv (the CLI passes its ``main``), so the ground floor never reaches up to ``cli``.

    from xailab.cli import main
    run_steps([("evaluate the model", ["evaluate", "--run", "runs/train"])], command=main)

(Not to be confused with :mod:`xailab.train.recipe`, the data and model preparation of training.)
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Sequence

Step = tuple[str, list[str]]
Command = Callable[[Sequence[str]], int]


def command_line(argv: Sequence[str]) -> str:
    """The shell line a person would type for ``argv``."""
    return f"xailab {shlex.join(argv)}"


def run_steps(
    steps: Sequence[Step],
    *,
    command: Command | None = None,
    log: Callable[[str], None] = print,
    dry_run: bool = False,
) -> float:
    """Run each step with ``command(argv)``; stop at the first failure (``SystemExit``).

    Returns the seconds the whole list took. With ``dry_run`` only prints the commands
    (``command`` may then be None).
    """
    start = time.perf_counter()
    for i, (what, argv) in enumerate(steps, 1):
        log(f"\n[{i}/{len(steps)}] {what}\n$ {command_line(argv)}")
        if dry_run:
            continue
        if command is None:
            raise ValueError("run_steps needs command= (e.g. xailab.cli.main) unless dry_run")
        t0 = time.perf_counter()
        code = command(argv)
        if code != 0:
            raise SystemExit(code)
        log(f"[{i}/{len(steps)}] done in {time.perf_counter() - t0:.0f} s")
    return time.perf_counter() - start
