"""Where a registered dataset's files are looked for, without importing torch.

The default places (:func:`search_dirs`, documented in :mod:`xailab.data.locate`) and the probe
that says whether a candidate folder or file holds a dataset's split (:func:`holds_split`).
:mod:`xailab.data` reads datasets with them; ``xailab datasets`` lists where each one was found
with them alone, so the listing starts without torch.
"""

from __future__ import annotations

import os
from pathlib import Path

from xailab.core.errors import DataError

SPLIT_NAMES = ("train", "test", "val", "valid", "validation")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")


def cache_dir() -> Path:
    """``$XAILAB_CACHE`` or ``~/.cache/xailab``."""
    return Path(os.environ.get("XAILAB_CACHE") or Path.home() / ".cache" / "xailab").expanduser()


def is_archive(path: Path) -> bool:
    """Whether ``path`` is named as a tar archive (``.tar``, ``.tar.gz``, ...)."""
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def search_dirs() -> list[Path]:
    """The default places, in order (see :mod:`xailab.data.locate`)."""
    dirs = [Path(p).expanduser() for p in os.environ.get("XAILAB_DATA", "").split(os.pathsep) if p]
    dirs += [cache_dir() / "datasets", Path("/usr/share/datasets"), Path.cwd().parent / "shared" / "data"]
    seen: list[Path] = []
    for d in dirs:
        if d not in seen:
            seen.append(d)
    return seen


def candidate_roots(root: str | Path | None, subpaths: tuple[str, ...]) -> list[Path]:
    """``root`` itself and ``root/<subpath>``, or every default place / subpath."""
    if root is not None:
        r = Path(root).expanduser()
        if not r.exists():
            raise DataError(f"data directory not found: {r}")
        return [r] + [r / s for s in subpaths if (r / s).exists()]
    return [d / s for d in search_dirs() for s in subpaths if (d / s).exists()]


def cifar_format(root: Path) -> str | None:
    """``"binary"``, ``"python"`` or ``None`` for a directory of CIFAR-10 batches."""
    if (root / "test_batch.bin").is_file() or (root / "data_batch_1.bin").is_file():
        return "binary"
    if (root / "test_batch").is_file() or (root / "data_batch_1").is_file():
        return "python"
    return None


def idx_files(root: Path, split: str) -> tuple[Path, Path] | None:
    """The images and labels files of an MNIST-like ``split`` in ``root`` (or ``root/raw``)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None or not root.is_dir():
        return None
    for d in (root, root / "raw"):
        imgs = sorted(d.glob(f"{prefix}-images*idx3-ubyte*"))
        labs = sorted(d.glob(f"{prefix}-labels*idx1-ubyte*"))
        if imgs and labs:
            return imgs[0], labs[0]
    return None


def looks_like_folder_of(root: Path, classes: tuple[str, ...]) -> bool:
    """A directory with split folders, or with a folder named as one of the classes."""
    return root.is_dir() and any((root / s).is_dir() for s in (*SPLIT_NAMES, *classes) if "/" not in s)


def holds_split(name: str, classes: tuple[str, ...], root: Path, split: str) -> bool:
    """Whether ``root`` (a candidate of dataset ``name``) looks like it holds ``split``."""
    if root.is_file():
        return is_archive(root)
    if name == "cifar10" and cifar_format(root):
        return True
    return idx_files(root, split) is not None or looks_like_folder_of(root, classes)


def locate(name: str, classes: tuple[str, ...], candidates: tuple[str, ...], split: str = "test") -> Path | None:
    """The first default place holding dataset ``name``'s ``split``, or None."""
    for c in candidate_roots(None, candidates):
        try:
            if holds_split(name, classes, c, split):
                return c
        except DataError:
            continue
    return None
