"""Datasets: CIFAR-10, MNIST, Fashion-MNIST and any image folder, decoded once into memory.

    from xailab.data import load_dataset, train_val_split
    ds = load_dataset("cifar10", "train", root="data/cifar10-jpg.tar.gz", augment=True)
    train_idx, val_idx = train_val_split(ds.targets, 0.1, seed=0)
    x, y = ds.subset(train_idx).get_batch(range(128))

See docs/data-and-models.md.
"""

from xailab.data.folder import read_image_folder
from xailab.data.image_dataset import ImageDataset, compute_mean_std
from xailab.data.images import balanced_indices, load_images
from xailab.data.registry import DATASETS, DatasetInfo, dataset_info, load_dataset
from xailab.data.splits import stratified_kfold, train_val_split
from xailab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from xailab.places import cache_dir

__all__ = [
    "DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DatasetInfo",
    "ImageDataset",
    "Preprocessing",
    "balanced_indices",
    "cache_dir",
    "compute_mean_std",
    "dataset_info",
    "load_dataset",
    "load_images",
    "read_image_folder",
    "stratified_kfold",
    "train_val_split",
]
