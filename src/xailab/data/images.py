"""Images to explain, from whatever the user points at, prepared for a model.

``spec`` is one of

* an image file, a comma-separated list of files, or a glob (``"photos/*.jpg"``);
* a folder or tarball: flat (unlabelled) or ``<class>/<image>`` (labelled, classes sorted);
* ``"<dataset>:<split>[:N]"`` (``"cifar10:test:16"``) or ``"folder:<path>[:<split>][:N]"``:
  ``N`` images picked class by class in turn (image 0 of class 0, of class 1, ..., then image 1
  of each class), so a small N still covers every class.

    prep = model_info("resnet20")["preprocessing"]
    x, y, names, ds = load_images("cifar10:test:16", prep, root="cifar10-jpg.tar.gz")
    x, y, names, _ = load_images("photos/*.jpg", prep)           # y is None: no labels
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from xailab.core.errors import DataError
from xailab.data.decode import check_upscale, decode_image, warn_notes
from xailab.data.folder import (
    FolderListing,
    decode_all,
    is_archive,
    is_image_name,
    list_image_folder,
)
from xailab.data.image_dataset import ImageDataset
from xailab.data.transforms import Preprocessing


def balanced_indices(targets: Tensor | np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` indices taking one image of each class in turn (deterministic)."""
    y = np.asarray(targets)
    per = [np.nonzero(y == c)[0] for c in np.unique(y)]
    out: list[int] = []
    depth = 0
    while len(out) < min(n, len(y)):
        for idx in per:
            if depth < len(idx) and len(out) < n:
                out.append(int(idx[depth]))
        depth += 1
    return np.array(out, dtype=np.int64)


def _dataset_spec(spec: str) -> tuple[str, str, int | None] | None:
    """``name:split[:N]`` / ``folder:path[:split][:N]`` -> (name, split, N), or None."""
    from xailab.data.registry import DATASETS

    if spec.startswith("folder:"):
        body = spec[len("folder:") :]
        parts = body.rsplit(":", 2)
        n: int | None = None
        split = "test"
        if len(parts) > 1 and parts[-1].isdigit():
            n = int(parts.pop())
        if len(parts) > 1 and not Path(body).exists() and "/" not in parts[-1]:
            split = parts.pop()
        return "folder:" + ":".join(parts), split, n
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 3 or parts[0] not in DATASETS:
        return None
    if len(parts) == 3 and not parts[2].isdigit():
        raise DataError(f"in {spec!r}, N must be a number of images")
    return parts[0], parts[1], int(parts[2]) if len(parts) == 3 else None


def with_count(spec: str, n: int) -> str | None:
    """A dataset spec (``name:split[:N]``) asking for ``n`` images instead, else ``None`` (files,
    folders and ``folder:`` specs have no pool to draw more from)."""
    if spec.strip().startswith("folder:"):
        return None
    parsed = _dataset_spec(spec.strip())
    return None if parsed is None else f"{parsed[0]}:{parsed[1]}:{n}"


def _prepare(x: Tensor, ds: ImageDataset | None, prep: Preprocessing | None) -> Tensor:
    if prep is not None:
        return prep.prepare_uint8(x)
    if ds is not None and ds.normalize:
        return ds.preprocessing.normalize(x.float() / 255.0)
    return x.float() / 255.0


def _decode_items(
    items: Sequence[tuple[str, Callable[[], bytes]]], prep: Preprocessing | None, notes: list[str], skip_bad: bool
) -> tuple[Tensor, list[int]]:
    """Decode items (and prepare them for ``prep``): images and the indices of the items kept."""
    skipped: list[int] = []
    if prep is None:
        x = decode_all(items, notes=notes, skipped=skipped if skip_bad else None).float() / 255.0
        return x, [i for i in range(len(items)) if i not in set(skipped)]
    out, kept = [], []
    for i, (name, read) in enumerate(items):
        try:
            img = decode_image(read(), name, notes)
        except (DataError, OSError) as e:
            if not skip_bad:
                raise DataError(f"cannot read image {name}: {e}") if isinstance(e, OSError) else e from e
            notes.append(f"{name}: skipped ({e})")
            continue
        if prep.input_size is not None:
            check_upscale(name, img.size, prep.input_size, notes, prep.resize)
        out.append(prep.prepare_pil(img))
        kept.append(i)
    if not out:
        raise DataError(f"none of the {len(items)} images could be decoded")
    return torch.stack(out), kept


def _files(paths: Sequence[str], prep: Preprocessing | None, notes: list[str],
           skip_bad: bool = False) -> tuple[Tensor, list[str]]:
    missing = [p for p in paths if not Path(p).expanduser().is_file()]
    if missing:
        raise DataError(f"image file not found: {missing[0]}")
    bad = [p for p in paths if not is_image_name(p)]
    if bad:
        raise DataError(f"not an image file (by its extension): {bad[0]}")
    x, kept = _decode_items([(p, Path(p).expanduser().read_bytes) for p in paths], prep, notes, skip_bad)
    return x, [paths[i] for i in kept]


def load_images(
    spec: str | Sequence[str],
    preprocessing: Preprocessing | None = None,
    *,
    root: str | Path | None = None,
    max_images: int | None = None,
    notes: list[str] | None = None,
    skip_bad: bool = False,
) -> tuple[Tensor, Tensor | None, list[str], ImageDataset | None]:
    """Load images to explain: ``(images [N, C, H, W], labels [N] or None, names, dataset or None)``.

    Args:
        spec: files, a glob, a folder or tarball, or a dataset spec (see the module docstring).
        preprocessing: the model's (:func:`xailab.models.model_info` / ``model.preprocessing``):
            images are converted to its channels, resized and centre-cropped to its input size
            and normalised with its mean / std. ``None``: images keep their size (a folder of
            mixed sizes is brought to its most common size), dataset images are normalised
            with the dataset's statistics, files are left in ``[0, 1]``.
        root: where a named dataset lies (see :func:`xailab.data.load_dataset`).
        max_images: keep at most this many (class-balanced when labelled).
        notes: a list to which what was done to the images is appended (16-bit scaled, alpha
            composited over white, upscaled more than 4x; see :mod:`xailab.data.decode`); the
            same notes are given as one warning.
        skip_bad: leave out image files that cannot be decoded (each one noted, with the
            reason) instead of refusing them all; a named dataset has no such files.
    """
    notes = [] if notes is None else notes
    seen = len(notes)
    try:
        return _load(spec, preprocessing, root, max_images, notes, skip_bad)
    finally:
        warn_notes(notes[seen:])


def _load(
    spec: str | Sequence[str], preprocessing: Preprocessing | None, root: str | Path | None,
    max_images: int | None, notes: list[str], skip_bad: bool,
) -> tuple[Tensor, Tensor | None, list[str], ImageDataset | None]:
    from xailab.data.registry import load_dataset

    if not isinstance(spec, str):
        x, names = _files([str(s) for s in spec], preprocessing, notes, skip_bad)
        return x[:max_images], None, names[:max_images], None
    spec = spec.strip()
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and is_archive(path)):
        lst = list_image_folder(path, None)
        if lst.classes and skip_bad:
            return _from_dataset(_labelled_folder(path, lst, notes), max_images, preprocessing, notes)
        if lst.classes:  # labelled: keep a dataset for class names and raw images
            ds = load_dataset(f"folder:{path}", "train", normalize=False, cache=False)
            return _from_dataset(ds, max_images, preprocessing, notes)
        items = lst.items[:max_images] if max_images else lst.items
        x, kept = _decode_items(items, preprocessing, notes, skip_bad)
        return x, None, [items[i][0] for i in kept], None
    if path.is_file():
        x, names = _files([spec], preprocessing, notes, skip_bad)
        return x, None, names, None
    ds_spec = _dataset_spec(spec)
    if ds_spec is not None:
        name, split, n = ds_spec
        ds = load_dataset(name, split, root, normalize=preprocessing is None)
        limit = min(v for v in (n, max_images, len(ds)) if v is not None)
        return _from_dataset(ds, limit, preprocessing, notes)
    if any(ch in spec for ch in "*?["):
        paths = sorted(p for p in glob.glob(str(path)) if is_image_name(p))
        if not paths:
            raise DataError(f"no image files match {spec!r}")
        x, names = _files(paths[:max_images] if max_images else paths, preprocessing, notes, skip_bad)
        return x, None, names, None
    if "," in spec:
        x, names = _files([p.strip() for p in spec.split(",") if p.strip()], preprocessing, notes, skip_bad)
        return x[:max_images], None, names[:max_images], None
    raise DataError(
        f"cannot find images at {spec!r}: give an image file, a glob, a folder or .tar.gz, "
        "or a dataset spec such as 'cifar10:test:16' or 'folder:data/pets:test:8'"
    )


def _labelled_folder(path: Path, lst: FolderListing, notes: list[str]) -> ImageDataset:
    """A labelled folder decoded without its undecodable images (``skip_bad``)."""
    skipped: list[int] = []
    images = decode_all(lst.items, notes=notes, skipped=skipped)
    keep = [i for i in range(len(lst.items)) if i not in set(skipped)]
    c = images.shape[1]
    return ImageDataset(images, lst.targets[keep], lst.classes, name=f"folder:{path}", mean=(0.0,) * c,
                        std=(1.0,) * c, normalize=False, names=[lst.names[i] for i in keep])


def _from_dataset(
    ds: ImageDataset, limit: int | None, prep: Preprocessing | None, notes: list[str]
) -> tuple[Tensor, Tensor, list[str], ImageDataset]:
    idx = balanced_indices(ds.targets, limit) if limit is not None and limit < len(ds) else np.arange(len(ds))
    sub = ds.subset(idx)
    if prep is not None and prep.input_size is not None and len(sub):
        h, w = sub.images.shape[-2:]
        check_upscale(f"{len(sub)} images of {ds.name}", (int(w), int(h)), prep.input_size, notes, prep.resize)
    if prep is not None and len(sub) and int(sub.images.shape[1]) != prep.channels:
        have, want = int(sub.images.shape[1]), prep.channels
        how = "repeated" if have == 1 else "averaged"
        notes.append(f"{len(sub)} images of {ds.name}: {have}-channel images {how} to the model's {want} channels")
    return _prepare(sub.images, sub, prep), sub.targets.clone(), sub.names, sub
