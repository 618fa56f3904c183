"""The house's floors, measured from the code's own imports (every ``import``, also inside functions).

* no import from a lower floor to a higher one (``FLOOR`` below; ``report`` reads only the run
  store and the drawing code);
* no import cycle between modules;
* no ``_private`` name imported from another package;
* the CLI modules define no job logic: they parse, call a job, print (no run written, no model or
  image loaded, no torch) — the jobs in ``xailab.jobs`` do that, and Python calls the same jobs.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "xailab"

# a room may import the rooms on lower floors only (and itself)
FLOOR = {
    "core": 0,
    "xailab": 1, "runs": 1,  # the package root re-exports the kernel
    "places": 1,  # where datasets are looked for, without torch (the listings)
    "data": 2, "methods": 2, "plotting": 2, "drawing": 2,
    "models": 3, "metrics": 3, "concepts": 3, "report": 3,
    "train": 4, "distributed": 4,
    "dynamics": 5, "audit": 5,
    "counterfactual": 5, "distill": 5,
    "jobs": 6,
    "steps": 7, "demo": 8, "studies": 8,  # lists of command steps; whoever runs them passes the runner
    "cli": 9,
}
ONLY = {"report": {"runs", "plotting", "drawing"}, "core": set(), "runs": {"core"}}


def _modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> list[tuple[str, str]]:
    """``(imported module, imported name or "")`` for every xailab import in ``module``."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out: list[tuple[str, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "xailab":
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    out.append((full, "") if full in MODULES else (target, alias.name))
        elif isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "xailab"]
    return out


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "xailab"


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def test_every_room_has_a_floor() -> None:
    rooms = {_room(m) for m in MODULES}
    assert rooms <= set(FLOOR), f"rooms without a floor in this test: {sorted(rooms - set(FLOOR))}"


def test_no_import_reaches_up_a_floor() -> None:
    wrong = []
    for m, imports in GRAPH.items():
        a = _room(m)
        for target, _ in imports:
            b = _room(target)
            if a == b:
                continue
            if FLOOR[b] >= FLOOR[a] or (a in ONLY and b not in ONLY[a]):
                wrong.append(f"{m} -> {target}")
    assert not wrong, "imports from a lower floor to a higher one (or across one floor):\n" + "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph = {m: {t for t, _ in imports if t in MODULES and t != m} for m, imports in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_no_private_name_imported_across_packages() -> None:
    wrong = []
    for m, imports in GRAPH.items():
        package = m if MODULES[m].name == "__init__.py" else m.rsplit(".", 1)[0]
        for target, name in imports:
            if name.startswith("_") and not name.startswith("__"):
                owner = target if MODULES.get(target, Path()).name == "__init__.py" else target.rsplit(".", 1)[0]
                if owner != package:
                    wrong.append(f"{m}: from {target} import {name}")
    assert not wrong, "private names imported across packages:\n" + "\n".join(wrong)


# -- the CLI is a thin face --------------------------------------------------------------------
JOB_CALLS = {"create", "update_manifest", "write_table", "write_array", "load_model", "create_model", "load_images",
             "load_weights", "save", "explain", "fit"}
NOT_IN_CLI = {"torch", "xailab.train", "xailab.methods", "xailab.audit", "xailab.concepts.ice", "xailab.concepts.tcav",
              "xailab.concepts.dissection"}  # listing (models, datasets) and reading runs (flow, report) are printing


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _room(m) == "cli"))
def test_cli_modules_define_no_job_logic(module: str) -> None:
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    calls = sorted({node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                    for node in ast.walk(tree) if isinstance(node, ast.Call)} & JOB_CALLS)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not calls, f"{module} calls {calls}: that is a job's work (xailab.jobs)"
    assert not imported & NOT_IN_CLI, f"{module} imports {sorted(imported & NOT_IN_CLI)}: a job's work"


def test_every_run_writing_job_has_the_shape_of_a_job() -> None:
    """Each job module of ``xailab.jobs`` offers ``*_to_run(spec, out)`` with a frozen spec dataclass."""
    import dataclasses
    import importlib
    import inspect

    found = defaultdict(list)
    for m in sorted(x for x in MODULES if x.startswith("xailab.jobs.")):
        mod = importlib.import_module(m)
        for name, fn in vars(mod).items():
            if name.endswith("_to_run") and inspect.isfunction(fn) and fn.__module__ == m:
                params = list(inspect.signature(fn).parameters)
                if params[:2] == ["spec", "out"]:
                    spec_type = fn.__annotations__.get("spec")
                    cls = getattr(mod, spec_type) if isinstance(spec_type, str) else spec_type
                    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{m}.{name}"
                    found[m].append(name)
    jobs = {n for names in found.values() for n in names}
    assert {"explain_to_run", "compare_to_run", "crosscheck_to_run", "train_to_run", "evaluate_to_run",
            "adversarial_to_run", "poison_to_run", "backdoor_to_run", "ice_to_run", "concept_maps_to_run",
            "tcav_to_run", "dissect_to_run"} <= jobs, sorted(jobs)
