"""Shards of a run: a deterministic split of the images, and each shard's files in the run store.

A job over ``N`` images is cut into contiguous shards of ``shard_size`` images,
``[0, s), [s, 2s), ...``; shard ``k`` of method ``m`` is one unit of work. Its output lies in the
run beside the finished results, under ``shards/``::

    RUN/shards/<method>/<lo>-<hi>/         the shard's Explanation (maps of images lo..hi-1)
    RUN/shards/<method>/<lo>-<hi>.done     its completion marker (JSON), written LAST

Both are written atomically (a folder or file renamed into place), the marker after the maps.
So a shard is complete exactly when its marker exists and names the same method spec; a
worker killed in between leaves maps without a marker, and they are overwritten, never read.
When every shard of a method is complete the driver joins them (:func:`merge`) into the
ordinary ``RUN/explanations/<method>/``, the layout the single-process run writes, so every
reader (``report``, ``compare``, ``evaluate``) reads a distributed run unchanged.

    plan = shard_plan(50_000, 256)           # 196 shards, the last of 80 images
    todo = [s for s in plan if not is_complete(run.path, "saliency", s, spec)]
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.runs.store import RunError, atomic_write, atomic_write_text

SHARDS = "shards"


@dataclass(frozen=True, order=True)
class Shard:
    """Images ``lo .. hi-1`` (global indices into the job's images)."""

    lo: int
    hi: int

    @property
    def key(self) -> str:
        return f"{self.lo:08d}-{self.hi:08d}"

    def __len__(self) -> int:
        return self.hi - self.lo


def shard_plan(n_images: int, shard_size: int) -> list[Shard]:
    """Contiguous shards of ``shard_size`` images covering ``range(n_images)`` (the last may be short).

    The plan depends on ``n_images`` and ``shard_size`` only, so a rerun of the same command
    finds the same shards; a rerun with another ``shard_size`` redoes the method from scratch.
    """
    if shard_size < 1:
        raise InputError(f"shard size must be >= 1, got {shard_size}")
    return [Shard(lo, min(n_images, lo + shard_size)) for lo in range(0, n_images, shard_size)]


def shard_dir(run_path: Path, method: str, shard: Shard) -> Path:
    return Path(run_path) / SHARDS / method / shard.key


def marker_path(run_path: Path, method: str, shard: Shard) -> Path:
    return Path(run_path) / SHARDS / method / f"{shard.key}.done"


def read_marker(run_path: Path, method: str, shard: Shard) -> dict[str, Any] | None:
    """The shard's completion record, or None if the shard is not complete."""
    path = marker_path(run_path, method, shard)
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_complete(run_path: Path, method: str, shard: Shard, spec: str) -> bool:
    """Whether the shard's marker exists and was written for this method spec."""
    marker = read_marker(run_path, method, shard)
    return marker is not None and marker.get("spec") == spec and (
        shard_dir(run_path, method, shard).is_dir() or rows_path(run_path, method, shard).is_file())


def rows_path(run_path: Path, name: str, shard: Shard) -> Path:
    return Path(run_path) / SHARDS / name / f"{shard.key}.parquet"


def write_rows(run_path: Path, name: str, shard: Shard, rows: pd.DataFrame, spec: str, meta: dict[str, Any]) -> None:
    """Store one shard's table rows (``shards/<name>/<lo>-<hi>.parquet``), then its marker."""
    marker_path(run_path, name, shard).unlink(missing_ok=True)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    atomic_write(rows_path(run_path, name, shard), lambda p: pq.write_table(table, p))
    record = {"method": name, "lo": shard.lo, "hi": shard.hi, "spec": spec, **meta}
    atomic_write_text(marker_path(run_path, name, shard), json.dumps(record, indent=1, default=str))


def read_rows(run_path: Path, name: str, plan: list[Shard], spec: str) -> pd.DataFrame:
    """The rows of every shard of ``name`` in order (all must be complete, as for :func:`merge`)."""
    missing = [s.key for s in plan if not is_complete(run_path, name, s, spec)]
    if missing:
        raise RunError(f"{name}: {len(missing)} of {len(plan)} shards are not complete (first: {missing[0]}); "
                       "run the same command again to finish them")
    return pd.concat([pq.read_table(rows_path(run_path, name, s)).to_pandas() for s in plan], ignore_index=True)


def remove(run_path: Path, name: str) -> None:
    """Delete every shard of ``name`` (once their join is stored)."""
    shutil.rmtree(Path(run_path) / SHARDS / name, ignore_errors=True)
    root = Path(run_path) / SHARDS
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def write_shard(run_path: Path, method: str, shard: Shard, result: Explanation, spec: str,
                meta: dict[str, Any]) -> None:
    """Store one shard's maps, then its marker (the marker last: it is the commit)."""
    if len(result) != len(shard):
        raise RunError(f"shard {shard.key} of {method}: {len(result)} images explained, {len(shard)} expected")
    marker_path(run_path, method, shard).unlink(missing_ok=True)  # a redo is incomplete until its marker
    result.save(shard_dir(run_path, method, shard))
    record = {"method": method, "lo": shard.lo, "hi": shard.hi, "spec": spec,
              "seconds": result.seconds, "evaluations": result.evaluations,
              "host": meta.get("host", socket.gethostname()), "pid": meta.get("pid", os.getpid()), **meta}
    atomic_write_text(marker_path(run_path, method, shard), json.dumps(record, indent=1, default=str))


def merge(run_path: Path, method: str, plan: list[Shard], spec: str) -> Explanation:
    """Join the complete shards of ``method`` in image order into one Explanation.

    Raises RunError if a shard is missing or was made with another spec (nothing half-written
    is ever read: only shards with a matching marker are loaded).
    """
    missing = [s.key for s in plan if not is_complete(run_path, method, s, spec)]
    if missing:
        raise RunError(f"{method}: {len(missing)} of {len(plan)} shards are not complete "
                       f"(first: {missing[0]}); run the same command again to finish them")
    return Explanation.concat([Explanation.load(shard_dir(run_path, method, s)) for s in plan])


def timings(run_path: Path, method: str, plan: list[Shard]) -> pd.DataFrame:
    """One row per shard of ``method``: images, seconds (wall and CPU), evaluations, host, worker,
    start and end (Unix time)."""
    rows = []
    for s in plan:
        m = read_marker(run_path, method, s) or {}
        rows.append({"method": method, "lo": s.lo, "hi": s.hi, "images": len(s),
                     "seconds": float(m.get("seconds", float("nan"))),
                     "evaluations": int(m.get("evaluations", 0)), "host": str(m.get("host", "")),
                     "pid": int(m.get("pid", 0)), "worker": int(m.get("worker", -1)),
                     "cpu_seconds": float(m.get("cpu_seconds", float("nan"))),
                     "started": float(m.get("started", float("nan"))),
                     "ended": float(m.get("ended", float("nan")))})
    return pd.DataFrame(rows)


def remove_saved(run_path: Path) -> list[str]:
    """Delete the shards of every method the run already holds whole (same spec); returns them.

    Called once the joined maps are saved, so a finished run holds each map once.
    """
    root = Path(run_path) / SHARDS
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        spec_file = Path(run_path) / "explanations" / f".{folder.name}.spec"
        saved = (Path(run_path) / "explanations" / folder.name / "manifest.json").is_file()
        if not (folder.is_dir() and saved and spec_file.is_file()):
            continue
        spec = spec_file.read_text()
        markers = [json.loads(p.read_text()) for p in folder.glob("*.done")]
        if all(m.get("spec") == spec for m in markers):
            shutil.rmtree(folder)
            removed.append(folder.name)
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    return removed
