"""The ``xailab`` command: a thin face over the library.

Each subcommand is a module of this package defining ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int``; adding a command is adding a module. Errors that are the user's input
(:class:`~xailab.core.errors.XailabError`) print as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from xailab.core.errors import XailabError


def _commands() -> dict[str, ModuleType]:
    out: dict[str, ModuleType] = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(mod, "run") and hasattr(mod, "add_arguments"):
            out[getattr(mod, "COMMAND", info.name)] = mod
    return out


class OneLineParser(argparse.ArgumentParser):
    """A parser whose usage errors are one line (the usage itself is in ``--help``); the
    subcommands' parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with one line naming the problem."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``only``, the arguments of that command alone (the
    others keep their one-line help), so ``xailab --help`` and each command start fast."""
    from xailab import __version__

    parser = OneLineParser(
        prog="xailab", description="Explain, measure and audit PyTorch image classifiers."
    )
    parser.add_argument("--version", action="version", version=f"xailab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in sorted(_commands().items()):
        p = sub.add_parser(
            name, help=mod.HELP, description=mod.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if only is None or name == only:
            mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``xailab ARGV``; a user error prints one line and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=next((a for a in argv if not a.startswith("-")), ""))
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except XailabError as e:
        print(f"xailab {args.command}: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `xailab flow RUN | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # disk full, permission denied, a path that vanished: the machine, not a bug
        print(f"xailab {args.command}: error: {os_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xailab {args.command}: interrupted (finished work is kept; run again to resume)", file=sys.stderr)
        return 130


def os_message(e: OSError) -> str:
    """One line for an operating-system error, naming the file; a full disk says what to do."""
    where = f": {e.filename}" if e.filename else ""
    text = f"{e.strerror or e}{where}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        text += " (what was finished is kept; free some space and run the command again to resume)"
    return text


if __name__ == "__main__":
    sys.exit(main())
