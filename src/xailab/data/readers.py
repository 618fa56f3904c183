"""Readers for the original files of MNIST-like and CIFAR-10 datasets, with no code execution.

* idx-ubyte (MNIST, Fashion-MNIST; LeCun et al. 1998): a big-endian header ``0 0 type ndim``,
  ``ndim`` uint32 sizes, then the raw array; optionally gzip-compressed.
* CIFAR-10 binary version (``data_batch_N.bin``): records of 1 label byte + 3,072 pixel bytes
  (1,024 red, 1,024 green, 1,024 blue, row-major). Decoded directly.
* CIFAR-10 python version (``data_batch_N``): Python pickles of ``{"data", "labels"}``. Read with
  :class:`SafeUnpickler`, which only builds numpy arrays and plain containers: a pickle that
  names any other callable is refused, so a tampered file cannot run code.

    images, labels = read_cifar_batches(Path("cifar-10-batches-py"), "test")  # uint8 [N,3,32,32]
    images = read_idx(Path("t10k-images-idx3-ubyte.gz"))                      # uint8 [N,28,28]
"""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path
from typing import IO, Any, ClassVar

import numpy as np

from xailab.core.errors import DataError
from xailab.places import cifar_format

_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_NUMPY2 = int(np.__version__.split(".")[0]) >= 2

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCHES = ("test_batch",)


# -- idx-ubyte ----------------------------------------------------------------------------------
def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode an idx file's bytes (gzip-compressed or not) into a numpy array."""
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DataError(f"{name}: corrupt gzip data ({e})") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{name}: not an idx-ubyte file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated idx header")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header < count * dtype.itemsize:
        raise DataError(f"{name}: truncated idx data: header says {dims}, file holds fewer values")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: Path) -> np.ndarray:
    """Read an ``*-idx?-ubyte`` file (``.gz`` or not)."""
    try:
        return parse_idx(Path(path).read_bytes(), str(path))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


# -- CIFAR-10 -----------------------------------------------------------------------------------
class SafeUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays, dtypes and builtin containers; anything else is refused.

    The original CIFAR-10 batches (Python 2 pickles) need nothing more; re-pickled copies made
    with Python 3 also use ``_codecs.encode`` for bytes, which only encodes a string.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles; only encodes text
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"refused to load '{module}.{name}': only numpy arrays may appear in a data batch"
            )
        if module.startswith("numpy.core.") and _NUMPY2:  # numpy 2 moved numpy.core to numpy._core
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def safe_unpickle(f: IO[bytes], name: str) -> Any:
    """Unpickle ``f`` with :class:`SafeUnpickler` (latin-1 for Python 2 pickles)."""
    try:
        return SafeUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{name}: {e}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{name}: corrupt pickle ({type(e).__name__}: {e})") from e


def _decode_cifar_python(obj: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(obj, dict):
        raise DataError(f"{name}: expected a dict of 'data' and 'labels', got {type(obj).__name__}")
    obj = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = obj.get("data"), obj.get("labels", obj.get("fine_labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{name}: no 'data' array / 'labels' in this CIFAR batch")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{name}: 'data' should be uint8 [N, 3072], got {data.dtype} {data.shape}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _decode_cifar_binary(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    rec = 1 + 3072
    if len(data) == 0 or len(data) % rec:
        raise DataError(f"{name}: size {len(data)} is not a multiple of CIFAR-10 records ({rec} bytes)")
    arr = np.frombuffer(data, dtype=np.uint8).reshape(-1, rec)
    return arr[:, 1:].reshape(-1, 3, 32, 32).copy(), arr[:, 0].astype(np.int64)


def cifar_batch_names(split: str) -> tuple[str, ...]:
    if split == "train":
        return CIFAR_TRAIN_BATCHES
    if split == "test":
        return CIFAR_TEST_BATCHES
    raise DataError(f"CIFAR-10 has splits 'train' and 'test', not {split!r}")


def read_cifar_batches(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` from a directory of original batches: uint8 ``[N,3,32,32]``, labels."""
    fmt = cifar_format(root)
    if fmt is None:
        raise DataError(f"no CIFAR-10 batches (data_batch_1, test_batch[.bin]) in {root}")
    parts = []
    for b in cifar_batch_names(split):
        p = root / (b + ".bin" if fmt == "binary" else b)
        if not p.is_file():
            raise DataError(f"CIFAR-10 {split} split incomplete: {p} is missing")
        if fmt == "binary":
            parts.append(_decode_cifar_binary(p.read_bytes(), str(p)))
        else:
            with p.open("rb") as f:
                parts.append(_decode_cifar_python(safe_unpickle(f, str(p)), str(p)))
    return np.concatenate([a for a, _ in parts]), np.concatenate([b for _, b in parts])


def read_cifar_tar(path: Path, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """CIFAR-10 batches read in place from ``cifar-10-{python,binary}.tar.gz``; None if absent."""
    wanted = cifar_batch_names(split)
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")):
                    return None  # an image folder, not the original batches
                stem = base[:-4] if base.endswith(".bin") else base
                if not m.isfile() or stem not in wanted:
                    continue
                f = tar.extractfile(m)
                if f is None:
                    continue
                name = f"{path}:{m.name}"
                if base.endswith(".bin"):
                    found[stem] = _decode_cifar_binary(f.read(), name)
                else:
                    found[stem] = _decode_cifar_python(safe_unpickle(io.BytesIO(f.read()), name), name)
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if not found:
        return None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise DataError(f"CIFAR-10 {split} split incomplete in {path}: missing {', '.join(missing)}")
    return np.concatenate([found[w][0] for w in wanted]), np.concatenate([found[w][1] for w in wanted])
