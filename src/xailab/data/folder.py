"""Image folders: ``root/<class>/*.jpg`` (torchvision's ImageFolder layout), as a directory or a
tarball read in place, decoded once into uint8 and cached.

Layout rules:

* ``root/<split>/<class>/...`` when ``root`` holds ``train/``, ``test/`` or ``val/`` folders;
  otherwise ``root/<class>/...`` serves every split (split it yourself with ``train_val_split``).
* Class = the first folder under the split; images may lie deeper. Hidden files and folders are
  ignored, so are files whose extension is not an image's (``README.txt``, ``labels.csv``).
  A file with an image extension that cannot be decoded is an error naming it.
* A tarball (``.tar.gz``, ``.tgz``, ``.tar``) whose members all share one top folder is read as
  if that folder were the root.
* Images of different sizes are scaled and centre-cropped to ``image_size``, by default the most
  common size in the folder. Grey or colour: ``channels``, by default that of the first image.

Decoded folders of at least :data:`CACHE_MIN_IMAGES` images are cached as ``.npz`` under
``$XAILAB_CACHE`` (default ``~/.cache/xailab``) in ``decoded/``, keyed by path, size and
modification time, so CIFAR-10's 60,000 JPEGs are decoded once per machine.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from xailab.core.errors import DataError
from xailab.data.decode import check_upscale, decode_image
from xailab.data.transforms import resize_center_crop
from xailab.places import SPLIT_NAMES, cache_dir, is_archive

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
CACHE_MIN_IMAGES = 2000
_CACHE_VERSION = "1"


@dataclass
class FolderData:
    """Decoded images ``uint8 [N, C, H, W]``, labels, class names and a name per image."""

    images: Tensor
    targets: np.ndarray
    classes: list[str]
    names: list[str]
    labelled: bool


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _hidden(rel: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in rel.split("/"))


# -- listing ------------------------------------------------------------------------------------
def _list_dir(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        rel = os.path.relpath(dirpath, root)
        if rel != ".":
            out.append(f"{rel.replace(os.sep, '/')}/")  # folders too, so an empty class is seen
        for f in filenames:
            if not f.startswith("."):
                out.append(f if rel == "." else f"{rel.replace(os.sep, '/')}/{f}")
    return sorted(out)


def _read_tar(path: Path) -> dict[str, bytes]:
    """Every image member's bytes (paths relative to the single top folder, if any)."""
    blobs: dict[str, bytes] = {}
    others: list[str] = []
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                name = m.name.lstrip("./")
                if not m.isfile() or _hidden(name):
                    continue
                if not is_image_name(name):
                    others.append(name)
                    continue
                f = tar.extractfile(m)
                if f is not None:
                    blobs[name] = f.read()
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read the archive {path}: {e}") from e
    tops = {n.split("/", 1)[0] for n in [*blobs, *others] if "/" in n}
    loose = any("/" not in n for n in [*blobs, *others])
    if len(tops) == 1 and not loose and next(iter(tops)) not in SPLIT_NAMES:
        cut = len(next(iter(tops))) + 1
        blobs = {k[cut:]: v for k, v in blobs.items()}
    return blobs


# -- layout -------------------------------------------------------------------------------------
def _select(
    files: list[str], root: Path, split: str | None, classes: Sequence[str] | None
) -> tuple[list[tuple[str, str]], list[str], str | None]:
    """(path, class) pairs of the images of ``split``; the class list; the split folder used."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    splits = sorted(tops & set(SPLIT_NAMES))
    used: str | None = None
    if splits:
        if split is None:
            split = "train" if "train" in splits else splits[0]
        if split not in splits:
            raise DataError(f"no '{split}' folder in {root} (it has: {', '.join(splits)})")
        used = split
        files = [f[len(split) + 1 :] for f in files if f.startswith(split + "/")]
    class_dirs = sorted({f.split("/", 1)[0] for f in files if "/" in f})
    if not class_dirs:  # a flat folder of images: unlabelled
        imgs = [f for f in files if is_image_name(f)]
        if classes:
            raise DataError(f"{root} has no class folders, so classes={list(classes)} cannot be selected")
        return [(f, "") for f in imgs], [], used
    per_class: dict[str, list[str]] = {c: [] for c in class_dirs}
    for f in files:
        if "/" in f and is_image_name(f):
            per_class[f.split("/", 1)[0]].append(f)
    if classes is not None:
        unknown = [c for c in classes if c not in per_class]
        if unknown:
            raise DataError(f"no class folder {unknown} in {root}{'/' + used if used else ''}; found: {', '.join(class_dirs)}")
        chosen = list(classes)
    else:
        chosen = class_dirs
    for c in chosen:
        if not per_class[c]:
            raise DataError(f"class folder '{c}' in {root}{'/' + used if used else ''} holds no images")
    pairs = [(f, c) for c in chosen for f in sorted(per_class[c])]
    return pairs, chosen, used


# -- decoding -----------------------------------------------------------------------------------
def _grey(img: Image.Image) -> bool:
    if img.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    if img.mode == "P":
        a = np.asarray(img.convert("RGB"))
        return bool((a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all())
    return False


def decode_all(
    items: Sequence[tuple[str, Callable[[], bytes]]],
    *,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    notes: list[str] | None = None,
    skipped: list[int] | None = None,
) -> Tensor:
    """Decode ``(name, read_bytes)`` items into one uint8 ``[N, C, H, W]`` tensor; what was
    changed (deep or transparent images, large upscales) is appended to ``notes``. With a
    ``skipped`` list, an image that cannot be read is left out (its index appended, a note
    saying why) instead of stopping everything."""
    arrays: list[np.ndarray] = []
    kept: list[str] = []
    mode = {1: "L", 3: "RGB"}.get(channels or 0)
    for i, (name, read) in enumerate(items):
        try:
            try:
                data = read()
            except OSError as e:
                raise DataError(f"cannot read image {name}: {e}") from e
            img = decode_image(data, name, notes)
        except DataError as e:
            if skipped is None:
                raise
            skipped.append(i)
            if notes is not None:
                notes.append(f"{name}: skipped ({e})")
            continue
        kept.append(name)
        if mode is None:
            mode = "L" if _grey(img) else "RGB"
        arrays.append(np.asarray(img.convert(mode), dtype=np.uint8))
    if not arrays:
        raise DataError("no images to decode" if not skipped else f"none of the {len(items)} images could be decoded")
    sizes = Counter(a.shape[:2] for a in arrays)
    target = tuple(image_size) if image_size is not None else sizes.most_common(1)[0][0]
    for i, a in enumerate(arrays):
        if a.shape[:2] != target:
            check_upscale(kept[i], (a.shape[1], a.shape[0]), target, notes)
            img = Image.fromarray(a, mode=mode)
            arrays[i] = np.asarray(resize_center_crop(img, (int(target[0]), int(target[1]))), dtype=np.uint8)
    stack = np.stack(arrays)
    if stack.ndim == 3:
        stack = stack[:, :, :, None]
    return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()


# -- cache --------------------------------------------------------------------------------------
def _cache_file(signature: str) -> Path:
    return cache_dir() / "decoded" / f"{hashlib.sha1(signature.encode()).hexdigest()[:20]}.npz"


def _cache_load(path: Path) -> FolderData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return FolderData(
                images=torch.from_numpy(z["images"].copy()),
                targets=z["targets"].astype(np.int64),
                classes=[str(c) for c in z["classes"]],
                names=[str(n) for n in z["names"]],
                labelled=bool(z["labelled"]),
            )
    except (OSError, ValueError, KeyError):
        return None


def _cache_save(path: Path, d: FolderData) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            tmp,
            images=d.images.numpy(),
            targets=d.targets,
            classes=np.array(d.classes, dtype=str),
            names=np.array(d.names, dtype=str),
            labelled=np.array(d.labelled),
        )
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not cache decoded images in {path.parent}: {e}", stacklevel=3)


@dataclass
class FolderListing:
    """The images of a folder, not decoded: ``(display name, read bytes)`` items and labels."""

    items: list[tuple[str, Callable[[], bytes]]]
    names: list[str]
    targets: np.ndarray
    classes: list[str]


def list_image_folder(
    root: str | Path,
    split: str | None = None,
    *,
    classes: Sequence[str] | None = None,
    max_images: int | None = None,
    _listing: list[str] | None = None,
) -> FolderListing:
    """List a folder's (or tarball's) images by the layout rules, without decoding them."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    blobs: dict[str, bytes] | None = None
    if root.is_file():
        if not is_archive(root):
            raise DataError(f"{root} is a file, not a folder or a .tar.gz of images")
        blobs = _read_tar(root)
        listing = sorted(blobs)
    else:
        listing = _listing if _listing is not None else _list_dir(root)
    pairs, class_list, used = _select(listing, root, split, classes)
    where = f"{root}/{used}" if used else str(root)
    if not pairs:
        raise DataError(f"no images found in {where} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    if max_images is not None and len(pairs) > max_images:
        take = np.unique(np.linspace(0, len(pairs) - 1, max_images).round().astype(int))
        pairs = [pairs[i] for i in take]
    prefix = f"{used}/" if used else ""

    def reader(rel: str) -> Callable[[], bytes]:
        if blobs is not None:
            data = blobs[prefix + rel]
            return lambda: data
        return lambda: (root / (prefix + rel)).read_bytes()

    index = {c: i for i, c in enumerate(class_list)}
    return FolderListing(
        items=[(f"{root}/{prefix}{rel}", reader(rel)) for rel, _ in pairs],
        names=[prefix + rel for rel, _ in pairs],
        targets=np.array([index.get(c, 0) for _, c in pairs], dtype=np.int64),
        classes=class_list,
    )


def _signature(root: Path, archive: bool) -> tuple[str, bool, list[str]]:
    """What identifies the folder's content for the cache (the archive's size and time, or each
    image's), whether it is big enough to cache by default, and the directory's listing."""
    stat = root.stat()
    if archive:
        return f"{_CACHE_VERSION}|{root.resolve()}|{stat.st_size}|{stat.st_mtime_ns}", stat.st_size > 4 << 20, []
    listing = _list_dir(root)
    h = hashlib.sha1()
    n_images = 0
    for f in listing:
        if is_image_name(f):
            n_images += 1
            st = (root / f).stat()
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return f"{_CACHE_VERSION}|{root.resolve()}|{h.hexdigest()}", n_images >= CACHE_MIN_IMAGES, listing


# -- entry point --------------------------------------------------------------------------------
def read_image_folder(
    root: str | Path,
    split: str | None = None,
    *,
    classes: Sequence[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    max_images: int | None = None,
    cache: bool | None = None,
) -> FolderData:
    """Decode an image folder (directory or tarball); see the module docstring for the rules.

    Args:
        root: a directory or ``.tar.gz`` archive.
        split: ``"train"``, ``"test"``, ... when ``root`` has split folders (``None``: ``train``).
        classes: class folders to keep, in the order of their labels (default: all, sorted).
        image_size: ``(H, W)`` (or one int) every image is brought to.
        channels: 1 or 3 (default: grey if the first image is grey).
        max_images: decode at most this many, evenly spaced (e.g. for statistics).
        cache: use the decoded cache (default: when the folder has >= 2,000 images).
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    archive = root.is_file()
    if archive and not is_archive(root):
        raise DataError(f"{root} is a file, not a folder or a .tar.gz of images")
    signature, big, listing = _signature(root, archive)
    signature += f"|{split}|{list(classes) if classes else None}|{size}|{channels}|{max_images}"
    use_cache = big if cache is None else cache
    cfile = _cache_file(signature)
    if use_cache and cfile.is_file():
        hit = _cache_load(cfile)
        if hit is not None:
            return hit
    lst = list_image_folder(root, split, classes=classes, max_images=max_images,
                            _listing=None if archive else listing)
    out = FolderData(
        images=decode_all(lst.items, image_size=size, channels=channels),
        targets=lst.targets,
        classes=lst.classes,
        names=lst.names,
        labelled=bool(lst.classes),
    )
    if use_cache:
        _cache_save(cfile, out)
    return out
