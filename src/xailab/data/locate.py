"""Where datasets are looked for when no ``root`` is given, and torchvision downloads.

The library reads the ``root`` it is given. Without one, it looks, in this order, in

1. every folder of ``$XAILAB_DATA`` (``os.pathsep``-separated),
2. ``$XAILAB_CACHE/datasets`` (default ``~/.cache/xailab/datasets``, where downloads go),
3. ``/usr/share/datasets`` (Debian's ``dataset-fashion-mnist`` package installs there),
4. ``../shared/data`` from the working directory (the layout of a development checkout),

for the dataset's usual folder or file names (``cifar-10-batches-py``, ``MNIST/raw``,
``fashion-mnist``, ``cifar10-jpg.tar.gz``, ...; see each dataset's ``candidates``).
"""

from __future__ import annotations

from pathlib import Path

from xailab.core.errors import DataError
from xailab.places import cache_dir, candidate_roots, search_dirs

__all__ = ["candidate_roots", "download", "search_dirs"]


def download(dataset: str, root: str | Path | None) -> Path:
    """Download the original files with torchvision's URLs and checksums; return their folder.

    Only the archive is fetched and checked (md5); the files are then read by xailab's own
    readers, never unpickled by torchvision.
    """
    from torchvision.datasets import CIFAR10, MNIST, FashionMNIST
    from torchvision.datasets.utils import download_and_extract_archive, download_url

    base = Path(root).expanduser() if root is not None else cache_dir() / "datasets"
    try:
        base.mkdir(parents=True, exist_ok=True)
        if dataset == "cifar10":
            if not (base / CIFAR10.base_folder / "test_batch").is_file():
                download_and_extract_archive(CIFAR10.url, str(base), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
            return base / CIFAR10.base_folder
        cls = {"mnist": MNIST, "fashion_mnist": FashionMNIST}[dataset]
        raw = base / cls.__name__ / "raw"
        for filename, md5 in cls.resources:
            if (raw / filename).is_file() or (raw / filename.removesuffix(".gz")).is_file():
                continue
            for mirror in cls.mirrors:
                try:
                    download_url(f"{mirror}{filename}", str(raw), filename=filename, md5=md5)
                    break
                except Exception:  # try the next mirror
                    continue
            else:
                raise DataError(f"could not download {filename} from {', '.join(cls.mirrors)}")
        return raw
    except DataError:
        raise
    except Exception as e:  # URLError, HTTPError, OSError, checksum RuntimeError
        raise DataError(
            f"could not download {dataset} ({type(e).__name__}: {e}). Without the network, pass "
            "root= a folder holding the original files (or an image folder / .tar.gz)"
        ) from e
