"""The run store: one directory per run, everything written atomically.

Layout::

    RUN/
      manifest.json                 versioned; kind, config, and one section per command
      tables/<name>/<part>.parquet  a table is the union of its parts (e.g. one part per epoch)
      arrays/<name>/<chunk>.npy     an array is its chunks concatenated along axis 0, in order
      explanations/<key>/           saved Explanation objects (safetensors + manifest)
      files/...                     figures and pages

Every file is written beside its destination under a dot-name and renamed into place, so a
reader (another command, the report) never sees half a file, an interrupted job leaves only
whole parts behind, and a job that restarts asks :meth:`Run.has_part` to skip finished work.
Several processes may write different parts of one run at once; manifest updates take a lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xailab.core.errors import XailabError

if TYPE_CHECKING:  # pandas is imported by pyarrow when a table is read: a job that only writes needs none
    import pandas as pd

FORMAT = "xailab.run"
VERSION = 1


class RunError(XailabError):
    """A run directory that is missing, not a run, or lacks what was asked for."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    def write(p: Path) -> None:
        p.write_bytes(data)

    return atomic_write(path, write)


def columns_table(columns: Mapping[str, Sequence[Any]]) -> pa.Table:
    """Columns by name (lists or numpy arrays of numbers, booleans or strings) as an arrow table,
    built from their buffers: ``pa.array`` would import pandas (half a second) to look at them.
    Strings are ``large_string``, as pandas writes them, so a part reads back as the DataFrame would."""
    return pa.Table.from_arrays([_arrow_column(v) for v in columns.values()], names=list(columns))


def _arrow_column(values: Sequence[Any]) -> pa.Array:
    arr = np.asarray(values)
    n = len(arr)
    if arr.ndim != 1:
        raise RunError(f"a table column must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "U":
        data = [str(v).encode() for v in values]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in data], out=offsets[1:])
        return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))])
    if arr.dtype.kind == "b":
        bits = np.packbits(arr, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(bits)])
    if arr.dtype.kind in "iuf":
        arr = np.ascontiguousarray(arr)
        return pa.Array.from_buffers(pa.from_numpy_dtype(arr.dtype), n, [None, pa.py_buffer(arr)])
    return pa.array(list(values))  # anything else (None among strings, objects): arrow's own conversion


def _part_name(part: str | int) -> str:
    name = f"{part:08d}" if isinstance(part, int) else str(part)
    if not name or "/" in name or name.startswith(".") or ".." in name:
        raise RunError(f"bad part name {part!r}")
    return name


def _visible(folder: Path, suffix: str) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix == suffix and not p.name.startswith("."))


class Run:
    """A run directory. ``Run.create(path, kind=...)`` to start one, ``Run.open(path)`` to read."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    # -- life cycle -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], kind: str, config: dict[str, Any] | None = None) -> Run:
        """Create the run (or reopen it, if it exists, to resume: its manifest is kept)."""
        run = cls(path)
        run.path.mkdir(parents=True, exist_ok=True)
        with run._lock():
            if not run.manifest_path.exists():
                manifest = {
                    "format": FORMAT,
                    "version": VERSION,
                    "kind": kind,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "config": config or {},
                }
                atomic_write_text(run.manifest_path, json.dumps(manifest, indent=2, default=str))
        return run

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Run:
        run = cls(path)
        if not run.path.is_dir():
            raise RunError(f"no run at {run.path}")
        if not run.manifest_path.is_file():
            raise RunError(f"{run.path} is not an xailab run (no manifest.json)")
        m = run.manifest
        if m.get("format") != FORMAT:
            raise RunError(f"{run.path}/manifest.json is not an xailab run manifest")
        if int(m.get("version", 0)) > VERSION:
            raise RunError(f"{run.path} was written by a newer xailab (run format {m['version']})")
        return run

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunError(f"{self.path} is not an xailab run (no manifest.json)") from None
        except IsADirectoryError:
            raise RunError(f"{self.path} is not an xailab run (manifest.json is a folder)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{self.manifest_path} is corrupt: {e}") from None
        if not isinstance(data, dict):
            raise RunError(f"{self.manifest_path} is not an xailab run manifest (a JSON {type(data).__name__}, "
                           "not an object)")
        return data

    @contextmanager
    def _lock(self) -> Iterator[None]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def update_manifest(self, section: str, value: Any) -> None:
        """Set ``manifest[section] = value`` (read-modify-write under a lock, atomically)."""
        with self._lock():
            m = self.manifest
            m[section] = value
            atomic_write_text(self.manifest_path, json.dumps(m, indent=2, default=str))

    # -- tables ---------------------------------------------------------------------------------
    def table_dir(self, name: str) -> Path:
        return self.path / "tables" / name

    def write_table(self, name: str, data: pd.DataFrame | pa.Table | Mapping[str, Sequence[Any]],
                    part: str | int = "all") -> Path:
        """Write one part of table ``name`` (replacing a part of the same name): a DataFrame, an
        arrow table, or columns by name (:func:`columns_table`, read back as the same DataFrame)."""
        if isinstance(data, Mapping):
            table = columns_table(data)
        else:
            table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
        dest = self.table_dir(name) / f"{_part_name(part)}.parquet"
        return atomic_write(dest, lambda p: pq.write_table(table, p))

    def has_part(self, name: str, part: str | int) -> bool:
        return (self.table_dir(name) / f"{_part_name(part)}.parquet").is_file()

    def table_parts(self, name: str) -> list[str]:
        return [p.stem for p in _visible(self.table_dir(name), ".parquet")]

    def tables(self) -> list[str]:
        root = self.path / "tables"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def read_table(self, name: str, columns: list[str] | None = None, filters: Any = None) -> pd.DataFrame:
        """All parts of table ``name`` as one DataFrame (``filters`` as in ``pyarrow.parquet``)."""
        files = _visible(self.table_dir(name), ".parquet")
        if not files:
            have = ", ".join(self.tables()) or "none"
            raise RunError(f"run {self.path} has no table '{name}' (tables: {have})")
        parts = [pq.read_table(f, columns=columns, filters=filters) for f in files]
        return pa.concat_tables(parts, promote_options="default").to_pandas()

    # -- arrays ---------------------------------------------------------------------------------
    def array_dir(self, name: str) -> Path:
        return self.path / "arrays" / name

    def write_array(self, name: str, array: Any, chunk: str | int = 0) -> Path:
        """Write one chunk of array ``name`` (a numpy array or a tensor)."""
        if hasattr(array, "detach"):
            array = array.detach().cpu().numpy()
        arr = np.ascontiguousarray(array)
        if arr.dtype == object:
            raise RunError("object arrays cannot be stored (they would need pickle)")
        dest = self.array_dir(name) / f"{_part_name(chunk)}.npy"

        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)

        return atomic_write(dest, write)

    def has_chunk(self, name: str, chunk: str | int) -> bool:
        return (self.array_dir(name) / f"{_part_name(chunk)}.npy").is_file()

    def array_chunks(self, name: str) -> list[str]:
        return [p.stem for p in _visible(self.array_dir(name), ".npy")]

    def arrays(self) -> list[str]:
        root = self.path / "arrays"
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def read_array(self, name: str, chunks: list[str] | None = None, mmap: bool = False) -> np.ndarray:
        files = _visible(self.array_dir(name), ".npy")
        if chunks is not None:
            wanted = {_part_name(c) for c in chunks}
            files = [f for f in files if f.stem in wanted]
        if not files:
            have = ", ".join(self.arrays()) or "none"
            raise RunError(f"run {self.path} has no array '{name}' (arrays: {have})")
        parts = [np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None) for f in files]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    # -- files ----------------------------------------------------------------------------------
    def file(self, relpath: str) -> Path:
        """Path of a file under ``RUN/files`` (folders created); write it with atomic_write."""
        p = self.path / "files" / relpath
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"
