"""The ratio table of docs/benchmarks.md from the method benches' JSON rows, both layouts.

    BENCH_LAYOUT=nchw python -m bench.bench_cam --threads 1 --clock cpu --json out/cam-nchw.json
    BENCH_LAYOUT=channels_last python -m bench.bench_cam ... --json out/cam-channels_last.json
    python -m bench.ratio_table out/            # every <bench>-<layout>.json there

A cell is reference / xailab (> 1: xailab faster) and, after the slash, floor / xailab (the
share of xailab's time that its unavoidable model passes take). Seconds are CPU seconds when
the row has them (``extra.cpu_s``, or a bench run with ``--clock cpu``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

LAYOUTS = ("nchw", "channels_last")
OURS = "xailab"


def seconds(row: dict[str, Any]) -> float:
    cpu = row.get("extra", {}).get("cpu_s")
    return float(cpu) if cpu is not None else float(row["seconds_per_image"])


def cells(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], tuple[float, float | None]]:
    """``(case, method, reference) -> (reference / xailab, floor / xailab)``."""
    ours = {(r["case"], r["method"]): seconds(r) for r in rows if r["impl"] == OURS}
    floor = {(r["case"], r["method"]): seconds(r) for r in rows if r["impl"] == "floor"}
    out = {}
    for r in rows:
        key = (r["case"], r["method"])
        if r["impl"] in (OURS, "floor") or r["impl"].startswith(OURS) or key not in ours or ours[key] <= 0:
            continue
        f = floor.get(key)
        out[(*key, r["impl"])] = (seconds(r) / ours[key], f / ours[key] if f is not None else None)
    return out


def table(folder: Path) -> str:
    per_layout: dict[str, dict[tuple[str, str, str], tuple[float, float | None]]] = {}
    for layout in LAYOUTS:
        merged: dict[tuple[str, str, str], tuple[float, float | None]] = {}
        for f in sorted(folder.glob(f"*-{layout}.json")):
            merged.update(cells(json.loads(f.read_text())))
        per_layout[layout] = merged
    keys = sorted(set().union(*per_layout.values()), key=lambda k: (k[1], k[0], k[2]))
    lines = ["| method | case | reference | NCHW: ref / xailab (floor / xailab) | channels-last: ref / xailab (floor / xailab) |",
             "|---|---|---|---|---|"]
    for k in keys:
        row = []
        for layout in LAYOUTS:
            c = per_layout[layout].get(k)
            row.append("-" if c is None else f"{c[0]:.2f}" + (f" ({c[1]:.2f})" if c[1] is not None else ""))
        lines.append(f"| {k[1]} | {k[0]} | {k[2]} | {row[0]} | {row[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else ".")))
