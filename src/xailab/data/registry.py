"""The dataset registry and :func:`load_dataset`.

Registered: ``cifar10`` (Krizhevsky 2009), ``mnist`` (LeCun et al. 1998), ``fashion_mnist``
(Xiao et al. 2017). Any image folder loads as ``"folder:<path>"``. Each built-in dataset reads
whatever copy the user has: the original files (CIFAR batches, binary or python; idx-ubyte, gz
or not), an image folder, or a tarball of either, read in place.

    ds = load_dataset("cifar10", "train", root="~/data/cifar-10-batches-py", augment=True)
    pets = load_dataset("folder:~/data/pets", "test")       # mean/std from pets' train split
    catdog = load_dataset("cifar10", classes=["cat", "dog"])  # binary: cat = 0, dog = 1
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xailab.core.errors import DataError
from xailab.core.registry import Registry
from xailab.data.folder import FolderData, is_image_name, read_image_folder
from xailab.data.image_dataset import ImageDataset, compute_mean_std
from xailab.data.locate import candidate_roots, search_dirs
from xailab.data.locate import download as download_files
from xailab.data.readers import (
    CIFAR10_CLASSES,
    read_cifar_batches,
    read_cifar_tar,
    read_idx,
)
from xailab.places import (
    cifar_format,
    idx_files,
    is_archive,
    locate,
    looks_like_folder_of,
)

DATASETS: Registry[Any] = Registry("dataset", loader="xailab.data")

Arrays = tuple[np.ndarray, np.ndarray, list[str] | None, list[str] | None]  # images, labels, names, classes


@dataclass(frozen=True)
class DatasetInfo:
    """A registered dataset: what it is, its constants and how to read a copy of it."""

    name: str
    description: str
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: dict[str, int] = field(default_factory=dict)
    candidates: tuple[str, ...] = ()
    flip: bool = True
    crop_padding: int = 4
    reader: Callable[[Path, str], Arrays | None] | None = None

    def __call__(self, split: str = "train", root: str | Path | None = None, **kwargs: Any) -> ImageDataset:
        return load_dataset(self.name, split, root, **kwargs)

    def locate(self, split: str = "test") -> Path | None:
        """The first default place holding this dataset's ``split``, or None."""
        return locate(self.name, self.classes, self.candidates, split) if self.reader is not None else None


# -- readers of the built-in datasets ---------------------------------------------------------
def _folder_arrays(root: Path, split: str, info: DatasetInfo) -> Arrays:
    d = read_image_folder(root, split, channels=info.channels)
    classes = d.classes
    if sorted(classes) == sorted(info.classes) and classes != list(info.classes):
        d = read_image_folder(root, split, channels=info.channels, classes=list(info.classes))
        classes = d.classes
    if not d.labelled:
        raise DataError(f"{root} holds images but no class folders; {info.name} needs labels")
    return d.images.numpy(), d.targets, d.names, classes


def _read_cifar(root: Path, split: str) -> Arrays | None:
    """The original batches (a folder or tarball of them), or None (perhaps an image folder)."""
    if root.is_file():
        got = read_cifar_tar(root, split) if is_archive(root) else None
    else:
        got = read_cifar_batches(root, split) if cifar_format(root) else None
    return (got[0], got[1], None, None) if got is not None else None


def _read_mnist_like(root: Path, split: str) -> Arrays | None:
    if split not in ("train", "test"):
        raise DataError(f"MNIST-like datasets have splits 'train' and 'test', not {split!r}")
    files = idx_files(root, split)
    if files is None:
        return None  # perhaps an image folder: the caller reads it
    x, y = read_idx(files[0]), read_idx(files[1])
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{files[0]} / {files[1]}: expected images [N, H, W] and labels [N], got {x.shape} / {y.shape}")
    return x[:, None].astype(np.uint8), y.astype(np.int64), None, None


CIFAR10 = DATASETS.register("cifar10", family="natural", aliases=("cifar-10", "cifar"))(
    DatasetInfo(
        "cifar10",
        "CIFAR-10: 32x32 colour photos of 10 classes (Krizhevsky 2009)",
        CIFAR10_CLASSES,
        (32, 32),
        3,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        {"train": 50000, "test": 10000},
        ("cifar10", "cifar-10-batches-bin", "cifar-10-batches-py", "cifar-10-binary.tar.gz",
         "cifar-10-python.tar.gz", "cifar10-jpg.tar.gz", "cifar10-jpg", "CIFAR10"),
        reader=_read_cifar,
    )
)
MNIST = DATASETS.register("mnist", family="digits")(
    DatasetInfo(
        "mnist",
        "MNIST: 28x28 grey handwritten digits (LeCun et al. 1998)",
        tuple(str(i) for i in range(10)),
        (28, 28),
        1,
        (0.1307,),
        (0.3081,),
        {"train": 60000, "test": 10000},
        ("mnist", "MNIST/raw", "MNIST"),
        flip=False,
        crop_padding=2,
        reader=_read_mnist_like,
    )
)
FASHION_MNIST = DATASETS.register("fashion_mnist", family="fashion", aliases=("fashion-mnist", "fmnist"))(
    DatasetInfo(
        "fashion_mnist",
        "Fashion-MNIST: 28x28 grey photos of clothing, 10 classes (Xiao et al. 2017)",
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        (28, 28),
        1,
        (0.2860,),
        (0.3530,),
        {"train": 60000, "test": 10000},
        ("fashion-mnist", "fashion_mnist", "FashionMNIST/raw", "FashionMNIST"),
        flip=True,
        crop_padding=2,
        reader=_read_mnist_like,
    )
)


# -- loading ------------------------------------------------------------------------------------
def _pick_classes(
    x: np.ndarray | torch.Tensor, y: np.ndarray, names: list[str] | None, all_classes: Sequence[str], wanted: Sequence[str]
) -> tuple[Any, np.ndarray, list[str] | None]:
    unknown = [c for c in wanted if c not in all_classes]
    if unknown:
        raise DataError(f"unknown classes {unknown}; this dataset has: {', '.join(all_classes)}")
    old = [list(all_classes).index(c) for c in wanted]
    keep = np.isin(y, old)
    remap = np.full(len(all_classes), -1, dtype=np.int64)
    remap[old] = np.arange(len(old))
    idx = np.nonzero(keep)[0]
    sel_names = [names[i] for i in idx] if names is not None else None
    return x[idx], remap[y[idx]], sel_names


def _load_builtin(
    info: DatasetInfo, split: str, root: str | Path | None, download_ok: bool
) -> tuple[Arrays, Path]:
    assert info.reader is not None
    cands = candidate_roots(root, info.candidates)
    tried = [str(c) for c in cands]
    for cand in cands:  # the original files first
        got = info.reader(cand, split)
        if got is not None:
            return got, cand
    for cand in cands:  # then an image folder of this dataset's layout
        if cand.is_file() or looks_like_folder_of(cand, info.classes):
            return _folder_arrays(cand, split, info), cand
    if download_ok:
        where = download_files(info.name, root)
        got = info.reader(where, split)
        if got is not None:
            return got, where
    looked = f"looked in: {', '.join(tried)}" if tried else (
        f"looked in {root}" if root is not None else f"looked under: {', '.join(str(d) for d in search_dirs())}"
    )
    raise DataError(
        f"{info.name} ({split}) not found; {looked}. Pass root= a folder with the original files, "
        f"an image folder or a .tar.gz, set XAILAB_DATA, or use download=True (needs the network)"
    )


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    *,
    download: bool = False,
    augment: bool = False,
    normalize: bool = True,
    classes: Sequence[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    cache: bool | None = None,
) -> ImageDataset:
    """Load a registered dataset or an image folder, decoded into memory.

    Args:
        name: ``"cifar10"``, ``"mnist"``, ``"fashion_mnist"`` or ``"folder:<path>"`` (a folder
            or tarball of ``<class>/<image>``, optionally under ``train/`` and ``test/``).
        split: ``"train"`` or ``"test"`` (image folders: any split folder they have).
        root: where the files are; default: the places of :mod:`xailab.data.locate`.
        download: fetch the original files with torchvision's URLs if not found.
        augment: random crop and flip on access (training).
        normalize: items as ``(x - mean) / std`` (else in ``[0, 1]``).
        classes: keep only these classes, relabelled ``0..len(classes) - 1`` in this order.
        image_size, channels: image folders only: size and channels every image is brought to.
        mean, std: override the normalisation (default: the dataset's constants; image folders:
            computed from their training split).
        cache: image folders: keep the decoded ``.npz`` cache (default: when >= 2,000 images).
    """
    if name.startswith("folder:") or (name not in DATASETS.available() and Path(name).expanduser().exists()):
        return _load_folder(name.removeprefix("folder:") or str(root or ""), split, augment=augment,
                            normalize=normalize, classes=classes, image_size=image_size,
                            channels=channels, mean=mean, std=std, cache=cache)
    info: DatasetInfo = DATASETS.get(name)
    (x, y, names, found_classes), where = _load_builtin(info, split, root, download)
    all_classes = list(found_classes or info.classes)
    xt = torch.from_numpy(np.ascontiguousarray(x))
    if classes is not None:
        xt, y, names = _pick_classes(xt, y, names, all_classes, classes)
        all_classes = list(classes)
    if xt.shape[1] != info.channels:
        from xailab.data.transforms import convert_channels

        xt = convert_channels(xt, info.channels)
    return ImageDataset(
        xt, y, all_classes, name=info.name, mean=mean or info.mean, std=std or info.std,
        normalize=normalize, augment=augment, flip=info.flip, crop_padding=info.crop_padding,
        names=names, split=split, source=str(where),
    )


def _load_folder(
    path: str, split: str, *, augment: bool, normalize: bool, classes: Sequence[str] | None,
    image_size: int | tuple[int, int] | None, channels: int | None,
    mean: Sequence[float] | None, std: Sequence[float] | None, cache: bool | None,
) -> ImageDataset:
    if not path:
        raise DataError("folder: needs a path, e.g. 'folder:data/pets'")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"image folder not found: {root}")
    d: FolderData = read_image_folder(root, split, classes=classes, image_size=image_size, channels=channels, cache=cache)
    if not d.labelled:
        raise DataError(f"{root} holds images but no class folders (<root>/<class>/<image>); "
                        "use xailab.data.load_images for unlabelled images")
    h, w = int(d.images.shape[-2]), int(d.images.shape[-1])
    if mean is None or std is None:
        stats = d
        if split != "train":
            try:  # normalise every split with the training split's statistics
                stats = read_image_folder(root, "train", classes=d.classes, image_size=(h, w),
                                          channels=d.images.shape[1], cache=cache)
            except DataError:
                stats = d
        m, s = compute_mean_std(ImageDataset(stats.images, stats.targets, stats.classes, name="stats",
                                             mean=(0.0,) * stats.images.shape[1], std=(1.0,) * stats.images.shape[1]))
        mean, std = mean or m, std or tuple(max(v, 1e-3) for v in s)
    return ImageDataset(
        d.images, d.targets, d.classes, name=f"folder:{path}", mean=mean, std=std, normalize=normalize,
        augment=augment, flip=True, crop_padding=max(1, min(h, w) // 8), names=d.names, split=split,
        source=str(root),
    )


def dataset_info(name: str) -> DatasetInfo:
    """The registered :class:`DatasetInfo` of ``name``."""
    info: DatasetInfo = DATASETS.get(name)
    return info


__all__ = ["CIFAR10", "DATASETS", "FASHION_MNIST", "MNIST", "DatasetInfo", "dataset_info", "is_image_name", "load_dataset"]
