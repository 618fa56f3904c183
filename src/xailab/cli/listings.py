"""What ``xailab methods``, ``models`` and ``datasets`` print, from a catalogue kept as data.

The registries fill when their rooms are imported, and those import torch (seconds). The
listings print from :data:`xailab.cli.catalogue.CATALOGUE` instead, which starts in a fraction
of a second; ``tests/test_listings.py`` checks that it equals what the live registries hold
(:func:`live_catalogue`). After registering a method, model or dataset, rewrite it with

    python -m xailab.cli.listings
"""

from __future__ import annotations

import fnmatch
import pprint
import sys
from pathlib import Path
from typing import Any

Rows = dict[str, dict[str, Any]]


def live_catalogue() -> dict[str, Rows]:
    """The listings' rows read from the registries (imports every method, model and dataset)."""
    from xailab.core.registry import METHODS
    from xailab.data import DATASETS, dataset_info
    from xailab.models import MODELS, model_info

    methods = {}
    for n in METHODS.available():
        doc = (METHODS.get(n).__doc__ or "").strip()
        methods[n] = {"family": METHODS.family(n), "summary": doc.splitlines()[0] if doc else "",
                      "aliases": METHODS.aliases(n)}
    models = {}
    for n in MODELS.available():
        i = model_info(n)
        models[n] = {"family": i["family"], "in_channels": i["in_channels"],
                     "input_size": list(i["input_size"]) if i["input_size"] else None,
                     "num_classes": i["num_classes"], "weights": i["weights"], "description": i["description"],
                     "mean": list(i["mean"]), "std": list(i["std"]), "resize": i["resize"],
                     "aliases": MODELS.aliases(n)}
    datasets = {}
    for n in DATASETS.available():
        d = dataset_info(n)
        datasets[n] = {"family": DATASETS.family(n), "channels": d.channels, "image_size": list(d.image_size),
                       "classes": list(d.classes), "sizes": dict(d.sizes), "candidates": list(d.candidates),
                       "readable": d.reader is not None}
    return {"methods": methods, "models": models, "datasets": datasets}


def catalogue() -> dict[str, Rows]:
    """The stored catalogue (no torch)."""
    from xailab.cli.catalogue import CATALOGUE

    return CATALOGUE


def matching(rows: Rows, pattern: str, family: str | None = None) -> list[str]:
    """Names matching a shell-style ``pattern`` (and ``family``), sorted, as ``Registry.available``."""
    return sorted(n for n, r in rows.items() if fnmatch.fnmatch(n, pattern) and (family is None or r["family"] == family))


def method_lines(rows: Rows, names: list[str]) -> list[str]:
    """One line per method: name, family, summary, aliases."""
    out = []
    for n in names:
        r = rows[n]
        also = f" (also: {', '.join(r['aliases'])})" if r["aliases"] else ""
        out.append(f"{n:24s} {r['family']:13s} {r['summary']}{also}")
    return out


def model_lines(rows: Rows, names: list[str], details: bool) -> list[str]:
    """The model table: name, family, input, classes, pretrained, description (and details)."""
    out = [f"{'name':20s} {'family':13s} {'input':10s} {'classes':>7s}  {'pretrained':10s} description"]
    for n in names:
        r = rows[n]
        size = r["input_size"]
        shape = f"{r['in_channels']}x{size[0]}x{size[1]}" if size else f"{r['in_channels']}xHxW"
        pre = "yes" if r["weights"] else "-"
        also = f" (also: {', '.join(r['aliases'])})" if r["aliases"] else ""
        out.append(f"{n:20s} {r['family']:13s} {shape:10s} {r['num_classes']:7d}  {pre:10s} {r['description']}{also}")
        if details:
            mean = ", ".join(f"{v:.4f}" for v in r["mean"])
            std = ", ".join(f"{v:.4f}" for v in r["std"])
            resize = f"resize {r['resize']}, centre-crop, " if r["resize"] else ""
            out.append(f"{'':20s} preprocessing: {resize}mean ({mean}), std ({std})")
            if r["weights"]:
                out.append(f"{'':20s} weights: {r['weights']}")
    return out


def dataset_line(name: str, r: dict[str, Any], where: str) -> str:
    """One dataset: name, image shape, classes, train and test sizes, where it was found."""
    h, w = r["image_size"]
    return (f"{name:15s} {r['channels']}x{h}x{w:<4d} {len(r['classes']):7d} {r['sizes'].get('train', 0):6d} "
            f"{r['sizes'].get('test', 0):6d}  {where}")


def found_at(name: str, r: dict[str, Any]) -> str:
    """Where the default places hold ``name``'s test split (:func:`xailab.places.locate`)."""
    from xailab.places import locate

    found = locate(name, tuple(r["classes"]), tuple(r["candidates"]), "test") if r["readable"] else None
    return str(found) if found else "not found (root=, $XAILAB_DATA or download=True)"


def write(path: Path | None = None) -> Path:
    """Rewrite ``xailab/cli/catalogue.py`` from the live registries."""
    path = path or Path(__file__).with_name("catalogue.py")
    body = pprint.pformat(live_catalogue(), width=150, compact=True, sort_dicts=True)
    path.write_text(
        '"""The listings\' catalogue: written by ``python -m xailab.cli.listings``, checked against the\n'
        'registries by tests/test_listings.py. Do not edit by hand."""\n\n'
        "from typing import Any\n\n"
        f"CATALOGUE: dict[str, dict[str, dict[str, Any]]] = {body}\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    print(f"wrote {write(Path(sys.argv[1]) if len(sys.argv) > 1 else None)}")
