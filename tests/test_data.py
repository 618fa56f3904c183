"""Datasets: readers of the original formats, image folders and tarballs, bad input, the
dataset object, augmentation, statistics, splits, load_images and the ``datasets`` command."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import shared_path
from xailab.core.errors import DataError
from xailab.data import (
    ImageDataset,
    Preprocessing,
    balanced_indices,
    compute_mean_std,
    load_dataset,
    load_images,
    read_image_folder,
)
from xailab.data.readers import SafeUnpickler, parse_idx, read_cifar_batches, read_idx


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every decoded-image cache of these tests out of the home folder."""
    monkeypatch.setenv("XAILAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def _img(colour: tuple[int, int, int], size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Image.Image:
    img = Image.new("RGB", size, colour)
    return img.convert(mode)


def make_folder(root: Path, classes: dict[str, int], *, split: str | None = None, fmt: str = "png",
                size: tuple[int, int] = (8, 8)) -> Path:
    """root/[split/]<class>/<i>.png, class c filled with a grey level 40 * (index + 1)."""
    base = root / split if split else root
    for ci, (c, n) in enumerate(classes.items()):
        (base / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            v = 40 * (ci + 1)
            _img((v, v + i, 255 - v), size).save(base / c / f"{i:03d}.{fmt}")
    return root


# -- idx-ubyte ------------------------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08}[arr.dtype.type]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return head + arr.tobytes()


def test_idx_roundtrip_plain_and_gzip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(arr))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), arr)


@pytest.mark.parametrize("data", [b"\x01\x02\x03\x04", b"\x00\x00\x08\x03\x00\x00\x00\x02", b""])
def test_idx_bad_magic_or_truncated(data: bytes) -> None:
    with pytest.raises(DataError):
        parse_idx(data, "x")


def test_idx_truncated_data_names_file() -> None:
    arr = np.zeros((4, 5), dtype=np.uint8)
    with pytest.raises(DataError, match="truncated"):
        parse_idx(_idx_bytes(arr)[:-3], "short.idx")


def _fake_mnist(root: Path, n: int = 20, prefix: str = "t10k") -> None:
    root.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    x = g.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    y = (np.arange(n) % 10).astype(np.uint8)
    (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(x)))
    (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(y)))


def test_mnist_from_root_and_torchvision_layout(tmp_path: Path) -> None:
    _fake_mnist(tmp_path / "MNIST" / "raw")
    ds = load_dataset("mnist", "test", root=tmp_path)  # root/MNIST/raw found
    assert len(ds) == 20 and ds.channels == 1 and ds.image_size == (28, 28)
    assert ds.classes == [str(i) for i in range(10)] and ds.targets.tolist()[:3] == [0, 1, 2]
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", "train", root=tmp_path)


# -- CIFAR batches --------------------------------------------------------------------------------
def _cifar_arrays(n: int) -> tuple[np.ndarray, list[int]]:
    g = np.random.default_rng(1)
    return g.integers(0, 256, (n, 3072), dtype=np.uint8), [int(v) for v in g.integers(0, 10, n)]


def test_cifar_python_batches_via_safe_unpickler(tmp_path: Path) -> None:
    data, labels = _cifar_arrays(6)
    for name in ["test_batch", *[f"data_batch_{i}" for i in range(1, 6)]]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels}, f, protocol=2)
    x, y = read_cifar_batches(tmp_path, "test")
    assert x.shape == (6, 3, 32, 32) and y.tolist() == labels
    np.testing.assert_array_equal(x.reshape(6, -1), data)
    ds = load_dataset("cifar10", "train", root=tmp_path)
    assert len(ds) == 30 and ds.classes[0] == "airplane"


def test_cifar_binary_batches(tmp_path: Path) -> None:
    data, labels = _cifar_arrays(4)
    rec = np.concatenate([np.array(labels, dtype=np.uint8)[:, None], data], axis=1)
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
    x, y = read_cifar_batches(tmp_path, "test")
    assert y.tolist() == labels
    np.testing.assert_array_equal(x.reshape(4, -1), data)
    (tmp_path / "test_batch.bin").write_bytes(rec.tobytes()[:-7])
    with pytest.raises(DataError, match="not a multiple"):
        read_cifar_batches(tmp_path, "test")


def test_cifar_python_tarball_read_in_place(tmp_path: Path) -> None:
    data, _ = _cifar_arrays(3)
    labels = [3, 5, 0]
    src = tmp_path / "cifar-10-batches-py"
    src.mkdir()
    for name in ["test_batch", *[f"data_batch_{i}" for i in range(1, 6)]]:
        with open(src / name, "wb") as f:
            pickle.dump({"data": data, "labels": labels}, f, protocol=2)
    arc = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    ds = load_dataset("cifar10", "test", root=arc)
    assert len(ds) == 3 and ds.targets.tolist() == labels
    two = load_dataset("cifar10", "train", root=arc, classes=["cat", "dog"])
    assert two.targets.tolist() == [0, 1] * 5 and two.classes == ["cat", "dog"]


def test_download_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.datasets.utils as tvu

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    monkeypatch.setattr(tvu, "download_url", offline)
    with pytest.raises(DataError, match="could not download cifar10"):
        load_dataset("cifar10", "test", root=tmp_path, download=True)
    with pytest.raises(DataError, match="could not download"):
        load_dataset("mnist", "test", root=tmp_path, download=True)


class _Touch:
    """Unpickling this would create a file (as a real attack would run a command)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


def test_cifar_batch_that_would_run_code_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({"data": _Touch(target), "labels": [0]}, f, protocol=2)
    with pytest.raises(DataError, match="refused"):
        read_cifar_batches(tmp_path, "test")
    assert not target.exists()


def test_safe_unpickler_allows_arrays_only() -> None:
    buf = io.BytesIO(pickle.dumps({"a": np.arange(3)}, protocol=2))
    assert SafeUnpickler(buf).load()["a"].tolist() == [0, 1, 2]
    with pytest.raises(pickle.UnpicklingError):
        SafeUnpickler(io.BytesIO(pickle.dumps(Path("x")))).load()


# -- image folders --------------------------------------------------------------------------------
def test_folder_dataset_layout_labels_and_stats(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cat": 3, "dog": 2})
    (tmp_path / "cat" / "notes.txt").write_text("not an image")  # skipped by extension
    (tmp_path / ".hidden").mkdir()
    ds = load_dataset(f"folder:{tmp_path}", "train")
    assert ds.classes == ["cat", "dog"] and ds.targets.tolist() == [0, 0, 0, 1, 1]
    assert ds.names[0] == "cat/000.png" and ds.channels == 3 and ds.image_size == (8, 8)
    mean, std = compute_mean_std(ds)
    x = ds.images.double() / 255
    assert mean == pytest.approx(tuple(x.mean((0, 2, 3)).tolist()), abs=1e-4)
    assert std == pytest.approx(tuple(x.std((0, 2, 3), unbiased=False).tolist()), abs=1e-4)
    assert ds.mean == mean  # folder datasets are normalised with their own statistics
    assert compute_mean_std(tmp_path)[0] == mean


def test_folder_with_splits_uses_train_statistics(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 2, "b": 2}, split="train")
    make_folder(tmp_path, {"a": 1, "b": 1}, split="test")
    tr, te = load_dataset(f"folder:{tmp_path}", "train"), load_dataset(f"folder:{tmp_path}", "test")
    assert len(tr) == 4 and len(te) == 2 and te.mean == tr.mean and te.std == tr.std
    with pytest.raises(DataError, match="no 'val' folder"):
        load_dataset(f"folder:{tmp_path}", "val")


def test_folder_class_selection_relabels(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cat": 2, "dog": 2, "frog": 1})
    ds = load_dataset(f"folder:{tmp_path}", classes=["dog", "cat"])
    assert ds.classes == ["dog", "cat"] and ds.targets.tolist() == [0, 0, 1, 1]
    with pytest.raises(DataError, match="horse"):
        load_dataset(f"folder:{tmp_path}", classes=["horse"])


def test_folder_mixed_sizes_and_grey(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _img((10, 10, 10), (8, 8), "L").save(tmp_path / "a" / "0.png")
    _img((20, 20, 20), (8, 8), "L").save(tmp_path / "a" / "1.png")
    _img((30, 30, 30), (16, 12), "L").save(tmp_path / "b" / "0.png")  # resized to the common 8x8
    ds = load_dataset(f"folder:{tmp_path}")
    assert ds.channels == 1 and ds.image_size == (8, 8) and len(ds) == 3
    ds = load_dataset(f"folder:{tmp_path}", image_size=(4, 6), channels=3)
    assert ds.images.shape == (3, 3, 4, 6)


def test_folder_tarball_read_in_place(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "pets", {"cat": 2, "dog": 2}, split="train")
    make_folder(src, {"cat": 1, "dog": 1}, split="test", fmt="jpg")
    arc = tmp_path / "pets.tar.gz"
    with tarfile.open(arc, "w:gz") as tar:
        tar.add(src, arcname="pets")  # one top folder: stripped
    ds = load_dataset(f"folder:{arc}", "test")
    assert len(ds) == 2 and ds.classes == ["cat", "dog"] and ds.names == ["test/cat/000.jpg", "test/dog/000.jpg"]
    assert not (tmp_path / "test").exists()  # nothing extracted


@pytest.mark.parametrize("case", ["missing", "empty", "no_images", "empty_class", "flat"])
def test_folder_bad_input(tmp_path: Path, case: str) -> None:
    root = tmp_path / "data"
    if case != "missing":
        root.mkdir()
    if case == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "labels.csv").write_text("a,b")
    if case == "empty_class":
        make_folder(root, {"cat": 1})
        (root / "dog").mkdir()
    if case == "flat":
        _img((1, 2, 3)).save(root / "x.png")
    match = {"missing": "not found", "empty": "no images", "no_images": "holds no images",
             "empty_class": "'dog'.*holds no images", "flat": "no class folders"}[case]
    with pytest.raises(DataError, match=match):
        load_dataset(f"folder:{root}")


def test_undecodable_image_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cat": 2, "dog": 1})
    bad = tmp_path / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*broken\.jpg"):
        load_dataset(f"folder:{tmp_path}")


def test_truncated_png_is_named(tmp_path: Path) -> None:
    make_folder(tmp_path, {"cat": 1, "dog": 1}, size=(32, 32))
    p = tmp_path / "cat" / "000.png"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match=r"000\.png"):
        load_dataset(f"folder:{tmp_path}")


def test_builtin_dataset_missing_root_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_dataset("cifar10", "test", root=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"root=.*download=True"):
        load_dataset("fashion_mnist", "test", root=tmp_path / "empty")


def test_decoded_cache_is_reused(tmp_path: Path) -> None:
    make_folder(tmp_path / "d", {"a": 2, "b": 2})
    first = read_image_folder(tmp_path / "d", cache=True)
    cached = list((Path(__import__("os").environ["XAILAB_CACHE"]) / "decoded").glob("*.npz"))
    assert len(cached) == 1
    again = read_image_folder(tmp_path / "d", cache=True)
    assert torch.equal(first.images, again.images) and again.names == first.names
    _img((0, 0, 0)).save(tmp_path / "d" / "a" / "new.png")  # changed folder: new key
    assert len(read_image_folder(tmp_path / "d", cache=True).names) == 5


# -- the dataset object ---------------------------------------------------------------------------
@pytest.fixture
def small_ds() -> ImageDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 3, 6, 6), generator=g, dtype=torch.uint8)
    return ImageDataset(x, [i % 3 for i in range(12)], ["a", "b", "c"], name="toy",
                        mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), split="train", crop_padding=2)


def test_items_normalised_and_denormalised(small_ds: ImageDataset) -> None:
    x, y = small_ds[4]
    assert x.dtype == torch.float32 and x.shape == (3, 6, 6) and y == 1
    raw = small_ds.images[4].float() / 255
    torch.testing.assert_close(small_ds.denormalize(x), raw)
    torch.testing.assert_close(x[1], (raw[1] - 0.4) / 0.25)
    plain = small_ds.with_options(normalize=False)
    torch.testing.assert_close(plain[4][0], raw)
    assert np.array_equal(np.asarray(small_ds.raw_image(4)), small_ds.images[4].permute(1, 2, 0).numpy())


def test_subset_keeps_metadata_and_views(small_ds: ImageDataset) -> None:
    sub = small_ds.subset([5, 1, 7])
    assert len(sub) == 3 and sub.targets.tolist() == [2, 1, 1] and sub.classes == small_ds.classes
    assert sub.mean == small_ds.mean and sub.names == ["train/00005", "train/00001", "train/00007"]
    torch.testing.assert_close(sub[0][0], small_ds[5][0])
    subsub = sub.subset([2])
    assert subsub.targets.tolist() == [1] and torch.equal(subsub.images[0], small_ds.images[7])
    assert sub.class_counts() == {"a": 0, "b": 2, "c": 1}


def test_augmentation_is_a_shifted_or_flipped_copy(small_ds: ImageDataset) -> None:
    aug = small_ds.with_options(augment=True, normalize=False)
    g = torch.Generator().manual_seed(3)
    x, _ = aug.get_batch(range(12), generator=g)
    padded = torch.nn.functional.pad(small_ds.images.float() / 255, (2, 2, 2, 2))
    for i in range(12):  # each output is a 6x6 window of the padded image, maybe mirrored
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(x[i], w) or torch.equal(x[i], w.flip(-1)) for w in windows)
    x2, _ = aug.get_batch(range(12), generator=torch.Generator().manual_seed(3))
    assert torch.equal(x, x2)  # same seed, same augmentation
    assert not torch.equal(x, small_ds.with_options(normalize=False).get_batch(range(12))[0])


def test_batches_cover_everything_once(small_ds: ImageDataset) -> None:
    seen = torch.cat([y for _, y in small_ds.batches(5, shuffle=True, seed=1)])
    assert len(seen) == 12 and sorted(seen.tolist()) == sorted(small_ds.targets.tolist())
    assert sum(len(y) for _, y in small_ds.batches(5, drop_last=True)) == 10
    loader = torch.utils.data.DataLoader(small_ds, batch_size=4)
    xb, yb = next(iter(loader))
    assert xb.shape == (4, 3, 6, 6) and yb.tolist() == [0, 1, 2, 0]


def test_preprocessing_resize_crop_matches_torchvision() -> None:
    from torchvision import transforms as T

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    prep = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), input_size=(224, 224), resize=256)
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(prep.mean, prep.std)])(img)
    torch.testing.assert_close(prep.prepare_pil(img), ref)


# -- splits ---------------------------------------------------------------------------------------
LABELS = np.array([0] * 50 + [1] * 30 + [2] * 20)


def test_train_val_split_is_stratified_deterministic_and_disjoint() -> None:
    from xailab.data import train_val_split

    tr, va = train_val_split(LABELS, 0.1, seed=0)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert sorted([*tr, *va]) == list(range(100))
    assert np.bincount(LABELS[va]).tolist() == [5, 3, 2]
    tr2, va2 = train_val_split(torch.tensor(LABELS), 0.1, seed=0)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)
    assert not np.array_equal(va, train_val_split(LABELS, 0.1, seed=1)[1])
    assert len(train_val_split(LABELS, 0.0)[1]) == 0
    with pytest.raises(DataError):
        train_val_split(LABELS, 1.0)


def test_stratified_kfold_partitions_and_keeps_proportions() -> None:
    from xailab.data import stratified_kfold

    folds = stratified_kfold(LABELS, k=5, seed=0)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held.tolist()) == list(range(100))
    for fit, h in folds:
        assert np.bincount(LABELS[h]).tolist() == [10, 6, 4] and not set(fit) & set(h)
        assert len(fit) + len(h) == 100
    again = stratified_kfold(LABELS, k=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again, strict=True))
    with pytest.raises(DataError, match="at least"):
        stratified_kfold(LABELS, k=25)


# -- load_images ----------------------------------------------------------------------------------
def test_load_images_files_glob_and_folders(tmp_path: Path) -> None:
    make_folder(tmp_path / "lab", {"a": 2, "b": 2}, size=(10, 12))
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        _img((50 * i, 0, 0), (10, 12)).save(flat / f"{i}.png")
    prep = Preprocessing(mean=(0.5,) * 3, std=(0.5,) * 3, input_size=(8, 8))
    x, y, names, ds = load_images(str(flat), prep)
    assert x.shape == (3, 3, 8, 8) and y is None and ds is None and names[0].endswith("0.png")
    x, y, names, ds = load_images(str(flat / "*.png"), prep)
    assert x.shape[0] == 3 and y is None
    x, y, names, ds = load_images(f"{flat / '0.png'},{flat / '2.png'}", None)
    assert x.shape == (2, 3, 12, 10) and float(x.max()) <= 1.0
    x, y, names, ds = load_images(str(tmp_path / "lab"), prep, max_images=3)
    assert y is not None and y.tolist() == [0, 1, 0] and ds is not None and ds.classes == ["a", "b"]
    with pytest.raises(DataError, match="cannot find images"):
        load_images(str(tmp_path / "nothing_here"), prep)


def test_load_images_dataset_spec_is_class_balanced(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 3, "b": 3, "c": 3})
    _, y, names, _ = load_images(f"folder:{tmp_path}:train:5", None)
    assert y is not None and y.tolist() == [0, 1, 2, 0, 1] and len(names) == 5
    assert balanced_indices(np.array([1, 1, 0, 0, 2]), 4).tolist() == [2, 0, 4, 3]


@pytest.mark.shared_data
def test_mnist_test_set_from_shared_data() -> None:
    root = shared_path("mnist")
    ds = load_dataset("mnist", "test", root=root)
    assert len(ds) == 10000 and ds.class_counts()["1"] == 1135
    x, y, _, _ = load_images("mnist:test:20", None, root=root)
    assert x.shape == (20, 1, 28, 28) and y is not None and y[:10].tolist() == list(range(10))


@pytest.mark.shared_data
def test_fashion_mnist_debian_package() -> None:
    root = Path("/usr/share/datasets/fashion-mnist")
    if not (root / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("apt-get install dataset-fashion-mnist")
    ds = load_dataset("fashion_mnist", "test", root=root)
    assert len(ds) == 10000 and set(ds.class_counts().values()) == {1000}
    assert ds.classes[9] == "Ankle boot"


@pytest.mark.slow
@pytest.mark.shared_data
def test_cifar10_jpeg_tarball_test_split() -> None:
    tar = shared_path("cifar10-jpg.tar.gz")
    ds = load_dataset("cifar10", "test", root=tar)
    assert len(ds) == 10000 and ds.image_size == (32, 32) and set(ds.class_counts().values()) == {1000}
    catdog = load_dataset(f"folder:{tar}", "test", classes=["cat", "dog"])
    assert catdog.classes == ["cat", "dog"] and len(catdog) == 2000
    assert torch.equal(catdog.images[0], ds.images[ds.targets == 3][0])


def test_datasets_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from xailab.cli import main

    assert main(["datasets", "--classes"]) == 0
    out = capsys.readouterr().out
    assert "cifar10" in out and "fashion_mnist" in out and "Ankle boot" in out and "folder:<path>" in out
    assert main(["datasets", "mnist", "--root", str(tmp_path)]) == 0
    assert "not usable" in capsys.readouterr().out


def test_datasets_download_fetches_train_and_test(monkeypatch, capsys) -> None:
    """``xailab datasets NAME --download`` asks for both splits with download=True (no network
    here: the loader is replaced); an unknown name is a clear error."""
    import xailab.data
    from xailab.cli import main

    calls = []

    class Stub:
        source = "/somewhere"

        def __len__(self) -> int:
            return 3

    def fake(name, split, root=None, *, normalize=True, download=False, **kw):
        calls.append((name, split, download))
        return Stub()

    monkeypatch.setattr(xailab.data, "load_dataset", fake)
    assert main(["datasets", "mnist", "--download"]) == 0
    assert calls[:2] == [("mnist", "train", True), ("mnist", "test", True)]
    assert "mnist train: 3 images at /somewhere" in capsys.readouterr().out
    assert main(["datasets", "nothing_like_this*", "--download"]) == 2
