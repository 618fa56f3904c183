"""Every example in README.md, docs/**/*.md and the `Examples:` of every command's --help.

How examples are tested (docs/README-like rule, stated in docs/architecture.md):

* every ``xailab ...`` command in a code block (continuation lines joined, ``#`` comments
  dropped, ``;`` separating commands) is parsed by the real argument parser, and the names it
  uses are checked: zoo models, methods, dataset specs and the classes it names must exist;
* a command holding ``...`` (or ``[OPTIONS]``-style brackets) is a synopsis, not an example: it
  is counted, not run;
* every example command is executed, shrunk, by :mod:`tests.test_examples_run` (which lists
  the few that cannot run here, with the reason); the README's Python snippet is executed here
  the same way (``dataset:split:N`` becomes ``:2``, ``n_steps=N`` 4, ``num_samples=N`` 16).
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

import xailab.cli
from tests.conftest import shared_path
from xailab.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(text: str) -> Iterator[tuple[str, str]]:
    """``(language, body)`` of each fenced code block."""
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        yield m.group(1), m.group(2)


def _commands_in(body: str) -> Iterator[str]:
    joined = re.sub(r"\\\n\s*", " ", body)
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ").strip()
        for part in _split(line):
            if part.startswith("xailab "):
                yield part


def _split(line: str) -> list[str]:
    """A line split on ``;`` outside quotes, each part without its ``#`` comment."""
    try:
        lex = shlex.shlex(line, posix=True, punctuation_chars=";")
        lex.commenters = "#"
        lex.whitespace_split = True
        words = list(lex)
    except ValueError:
        return [line]
    parts, cur = [], []
    for w in words:
        if w == ";":
            parts.append(cur)
            cur = []
        else:
            cur.append(w)
    return [shlex.join(p) for p in [*parts, cur] if p]


def help_examples() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for info in pkgutil.iter_modules(xailab.cli.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"xailab.cli.{info.name}")
        name = getattr(mod, "COMMAND", info.name)
        doc = mod.__doc__ or ""
        if "Examples:" in doc:
            out[f"xailab {name} --help"] = list(_commands_in(doc.split("Examples:", 1)[1]))
    return out


def all_examples() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for path in DOCS:
        for lang, body in _blocks(path.read_text(encoding="utf-8")):
            if lang in ("", "bash", "sh", "console", "shell"):
                found += [(str(path.relative_to(ROOT)), c) for c in _commands_in(body)]
    for where, cmds in help_examples().items():
        found += [(where, c) for c in cmds]
    return found


def is_synopsis(cmd: str) -> bool:
    return "..." in cmd or bool(re.search(r"\[--?\w", cmd))


EXAMPLES = all_examples()


def test_examples_are_found() -> None:
    assert len(EXAMPLES) >= 80
    assert len({w for w, _ in EXAMPLES if w.endswith("--help")}) >= 5


@pytest.mark.parametrize(("where", "cmd"), [e for e in EXAMPLES if not is_synopsis(e[1])],
                         ids=[f"{w}:{c[:60]}" for w, c in EXAMPLES if not is_synopsis(c)])
def test_every_example_parses_and_names_what_exists(where: str, cmd: str) -> None:
    argv = shlex.split(cmd)[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:
        if e.code == 0 and ("--help" in argv or "-h" in argv):
            return  # the help was printed
        pytest.fail(f"{where}: `{cmd}` does not parse (exit {e.code})")
    check_names(vars(args), where, cmd)


def check_names(args: dict[str, object], where: str, cmd: str) -> None:
    """The zoo models, methods, dataset specs and classes an example names exist."""
    from xailab.core.registry import METHODS
    from xailab.data.registry import DATASETS
    from xailab.models import MODELS

    model = args.get("model")
    if isinstance(model, str) and ":" not in model and "/" not in model and "." not in model:
        assert model in MODELS, f"{where}: unknown model {model!r} in `{cmd}`"
    methods = args.get("methods")
    if isinstance(methods, str):
        for m in methods.split(","):
            assert m.split("=")[-1].strip() in METHODS, f"{where}: unknown method {m!r} in `{cmd}`"
    spec = next((v for k in ("images", "data", "random") if isinstance(v := args.get(k), str)), None)
    dataset = spec.split(":")[0] if spec and ":" in spec and not spec.startswith("folder:") else spec
    if dataset in DATASETS:
        classes = args.get("classes") or args.get("class_")
        known = set(DATASETS.get(dataset).classes)
        for c in (classes.split(",") if isinstance(classes, str) else classes or []):
            assert str(c) in known or str(c).isdigit(), f"{where}: {dataset} has no class {c!r} in `{cmd}`"


# -- executed examples, shrunk ------------------------------------------------------------------
SHRINK = [
    (r"\b((?:cifar10|fashion_mnist|mnist):(?:test|train)):\d+", r"\1:2"),
    (r"--epochs \d+", "--epochs 1"),
    (r"n_steps=\d+", "n_steps=4"),
    (r"num_samples=\d+", "num_samples=16"),
    (r"--runs \d+", "--runs 2"),
]


def shrink(text: str, out: Path) -> str:
    for pattern, repl in SHRINK:
        text = re.sub(pattern, repl, text)
    text = re.sub(r"(?<![\w./])runs/", f"{out}/", text)
    return text.replace("W.safetensors", "../shared/data/cifar10-resnet/resnet20.safetensors")


def test_readme_python_snippet_runs_shrunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shared_path("cifar10-resnet", "resnet20.safetensors")
    shared_path("cifar10-jpg.tar.gz")
    code = next(body for lang, body in _blocks((ROOT / "README.md").read_text()) if lang == "python")
    monkeypatch.chdir(ROOT)
    namespace: dict[str, object] = {}
    exec(compile(shrink(code, tmp_path), "README.md", "exec"), namespace)
    assert namespace["result"].maps.shape[:2] == (2, 4)  # type: ignore[attr-defined]
