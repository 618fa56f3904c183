"""The one dataset type: decoded uint8 images in memory, labels, classes and normalisation.

Every loader (CIFAR batches, idx-ubyte files, image folders, tarballs) decodes once into a
``uint8 [N, C, H, W]`` tensor; items are converted to float on access, so an epoch over
CIFAR-10 costs no JPEG decoding.

    ds = load_dataset("cifar10", "test", root="cifar10-jpg.tar.gz")
    x, y = ds[0]                      # float [3, 32, 32] normalised, int label
    ds.classes[y], ds.denormalize(x)  # 'airplane', back to [0, 1]
    xb, yb = ds.get_batch([0, 1, 2])  # a batch without a DataLoader
    val = ds.subset(idx)              # same classes / mean / std
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from xailab.core.errors import DataError
from xailab.data.transforms import Preprocessing, random_crop_flip, tensor_to_pil

Indices = Sequence[int] | np.ndarray | Tensor


class ImageDataset(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """Images held as ``uint8 [N, C, H, W]``; ``ds[i] -> (float [C, H, W], int label)``.

    Args:
        images: uint8 tensor ``[N, C, H, W]``.
        targets: labels ``[N]`` in ``0 .. len(classes) - 1``.
        classes: class names, index = label.
        name: dataset name (``"cifar10"``, ``"folder:/data/pets"``).
        mean, std: per-channel normalisation of pixels in ``[0, 1]``.
        normalize: whether items are normalised (``(x - mean) / std``) or left in ``[0, 1]``.
        augment: random crop (zero padding ``crop_padding``) and, if ``flip``, horizontal flip
            on every access (training only).
        names: a name per image (its file path inside the source), for reports.
        split: ``"train"``, ``"test"``, ...
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor | Sequence[int] | np.ndarray,
        classes: Sequence[str],
        *,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        normalize: bool = True,
        augment: bool = False,
        flip: bool = True,
        crop_padding: int = 4,
        names: Sequence[str] | None = None,
        split: str = "",
        source: str = "",
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        if targets.shape != (images.shape[0],):
            raise DataError(f"{images.shape[0]} images but {targets.numel()} labels")
        if len(images) == 0:
            raise DataError(f"dataset {name} ({split or 'all'}) holds no images")
        if int(targets.min()) < 0 or int(targets.max()) >= len(classes):
            raise DataError(f"labels must lie in 0..{len(classes) - 1}, got {int(targets.min())}..{int(targets.max())}")
        self._images = images
        self._targets = targets
        self._index: Tensor | None = None  # rows of _images this view holds (subsets)
        self._names = list(names) if names is not None else None
        self.classes = list(classes)
        self.name = name
        self.split = split
        self.source = source
        self.channels = int(images.shape[1])
        self.image_size = (int(images.shape[2]), int(images.shape[3]))
        self.preprocessing = Preprocessing(mean=tuple(mean), std=tuple(std), channels=self.channels)
        self.normalize = normalize
        self.augment = augment
        self.flip = flip
        self.crop_padding = crop_padding

    # -- the Dataset protocol -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index) if self._index is not None else len(self._images)

    def _rows(self, idx: Tensor) -> Tensor:
        return self._index[idx] if self._index is not None else idx

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        row = int(self._rows(torch.tensor([i % len(self)]))[0])
        x = self._images[row : row + 1]
        return self._convert(x, self.augment, None)[0], int(self._targets[row])

    def _convert(self, x: Tensor, augment: bool, generator: torch.Generator | None) -> Tensor:
        if augment:  # on uint8: 4x less to move; black padding as torchvision's RandomCrop
            x = random_crop_flip(x, padding=self.crop_padding, flip=self.flip, generator=generator)
        x = x.float() / 255.0
        return self.preprocessing.normalize(x) if self.normalize else x

    # -- fast paths ---------------------------------------------------------------------------
    def get_batch(
        self, indices: Indices, *, augment: bool | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Images ``[B, C, H, W]`` (float, as items) and labels ``[B]`` for ``indices``."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        rows = self._rows(idx)
        aug = self.augment if augment is None else augment
        return self._convert(self._images[rows], aug, generator), self._targets[rows].clone()

    def batches(
        self,
        batch_size: int = 128,
        *,
        shuffle: bool = False,
        seed: int = 0,
        augment: bool | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Iterate ``(images, labels)`` batches with no DataLoader (fast on few cores).

        With ``shuffle`` the order, like the augmentation, is drawn from ``seed`` alone.
        """
        g = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self), generator=g) if shuffle else torch.arange(len(self))
        stop = len(self) - (len(self) % batch_size if drop_last else 0)
        for s in range(0, stop, batch_size):
            yield self.get_batch(order[s : s + batch_size], augment=augment, generator=g)

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images as one float batch (no augmentation) and all labels."""
        return self.get_batch(torch.arange(len(self)), augment=False)

    # -- views --------------------------------------------------------------------------------
    @property
    def targets(self) -> Tensor:
        """Labels ``[N]`` (long)."""
        return self._targets[self._index] if self._index is not None else self._targets

    @property
    def images(self) -> Tensor:
        """The raw ``uint8 [N, C, H, W]`` images of this view."""
        return self._images[self._index] if self._index is not None else self._images

    @property
    def names(self) -> list[str]:
        """A name per image: its path inside the source, or ``<split>/<index>``."""
        base = self._names if self._names is not None else [f"{self.split or 'img'}/{i:05d}" for i in range(len(self._images))]
        if self._index is None:
            return list(base)
        return [base[int(i)] for i in self._index]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def mean(self) -> tuple[float, ...]:
        return self.preprocessing.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.preprocessing.std

    def denormalize(self, x: Tensor) -> Tensor:
        """Items (or batches) of this dataset back to ``[0, 1]``: ``x * std + mean``.

        Identity when the dataset was loaded with ``normalize=False``.
        """
        return self.preprocessing.denormalize(x) if self.normalize else x

    def raw_image(self, i: int) -> Image.Image:
        """Image ``i`` as decoded (no augmentation, no normalisation), for reports."""
        row = int(self._rows(torch.tensor([i]))[0])
        return tensor_to_pil(self._images[row])

    def subset(self, indices: Indices) -> ImageDataset:
        """A view on some images; classes, mean, std, augmentation are kept."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long).reshape(-1)
        if len(idx) and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} images")
        out = copy.copy(self)
        out._index = self._rows(idx % max(len(self), 1))
        return out

    def with_options(self, **changes: Any) -> ImageDataset:
        """A copy with other ``normalize`` / ``augment`` / ``flip`` / ``crop_padding`` /
        ``mean`` / ``std`` (the images are shared)."""
        out = copy.copy(self)
        mean = changes.pop("mean", None)
        std = changes.pop("std", None)
        for k, v in changes.items():
            if k not in ("normalize", "augment", "flip", "crop_padding"):
                raise TypeError(f"with_options() got an unexpected option {k!r}")
            setattr(out, k, v)
        if mean is not None or std is not None:
            out.preprocessing = Preprocessing(
                mean=tuple(mean if mean is not None else self.mean),
                std=tuple(std if std is not None else self.std),
                channels=self.channels,
            )
        return out

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.targets, minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts, strict=True)}

    def __repr__(self) -> str:
        c, (h, w) = self.channels, self.image_size
        return (
            f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"classes={len(self.classes)}, size={c}x{h}x{w}, augment={self.augment})"
        )


def compute_mean_std(
    dataset_or_folder: ImageDataset | str | Any, max_images: int = 5000
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixels in ``[0, 1]``.

    Uses at most ``max_images`` images, evenly spaced over the dataset (deterministic).
    ``dataset_or_folder``: an :class:`ImageDataset`, or a folder / tarball of class folders.

        mean, std = compute_mean_std("data/pets/train")
    """
    if isinstance(dataset_or_folder, ImageDataset):
        images = dataset_or_folder.images
    else:
        from xailab.data.folder import read_image_folder

        images = read_image_folder(dataset_or_folder, split=None, max_images=max_images).images
    n = len(images)
    take = np.unique(np.linspace(0, n - 1, num=min(n, max_images)).round().astype(np.int64))
    x = images[torch.from_numpy(take)].to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3), unbiased=False)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
