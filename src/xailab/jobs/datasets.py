"""The dataset jobs: download a dataset's files, export classes of a dataset as an image folder.

    export_dataset(ExportSpec("cifar10", select="cat,dog", per_class=500), "data/cat_dog")

The same as ``xailab datasets NAME --download`` and ``xailab datasets NAME --export DIR``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExportSpec:
    """What ``xailab datasets PATTERN --export DIR`` is asked to do."""

    dataset: str
    root: str | None = None
    select: str | None = None
    per_class: int | None = None
    splits: str = "train,test"
    download: bool = False


def download_datasets(names: list[str], root: str | None, *, pattern: str = "*",
                      log: Callable[[str], None] = print) -> None:
    """Fetch each named dataset's train and test files (torchvision's URLs) unless a copy is found."""
    from xailab.core.errors import DataError
    from xailab.data import load_dataset

    if not names:
        raise DataError(f"no dataset matches {pattern!r}; see `xailab datasets`")
    for n in names:
        for split in ("train", "test"):
            ds = load_dataset(n, split, root, normalize=False, download=True)
            log(f"{n} {split}: {len(ds)} images at {ds.source}")


def export_dataset(spec: ExportSpec, out_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Write ``DIR/<split>/<class>/<name>.png``; a rerun with the same settings does nothing."""
    args = spec
    import json
    import shutil

    from xailab.core.errors import InputError
    from xailab.data import DATASETS
    from xailab.data.folder import list_image_folder

    source = Path(args.dataset.removeprefix("folder:")).expanduser()
    named = args.dataset in DATASETS
    if not named and not source.exists():
        raise InputError(f"--export needs a dataset name ({', '.join(DATASETS.available())}) or an image "
                         f"folder / archive, got {args.dataset!r}")
    if args.per_class is not None and args.per_class < 1:
        raise InputError(f"--per-class must be >= 1, got {args.per_class}")
    out = Path(out_dir).expanduser()
    settings = {"dataset": args.dataset, "root": str(args.root) if args.root else None, "select": args.select,
                "per_class": args.per_class, "splits": args.splits}
    marker = out / ".xailab-export.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        log(f"{out}: already exported with these settings")
        return out
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not an export with these settings; choose another folder or remove it")
    tmp = out.parent / f".{out.name}.partial"  # renamed into place at the end: no half export
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    if not named and source.exists() and not list_image_folder(source, None).classes:
        counts["."] = {"images": export_flat(source, tmp, args.per_class)}
    for split in [] if counts else [s.strip() for s in args.splits.split(",") if s.strip()]:
        counts[split] = _export_split(args, source if not named else None, split, tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / marker.name).write_text(json.dumps(settings))
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    for split, c in counts.items():
        log(f"{out / split}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if "." in counts:
        log(f"use it as --images {out}")
    else:
        log(f"use it as --data folder:{out} (train) and --images folder:{out}:test:N")
    return out


def _export_split(args: ExportSpec, folder: Path | None, split: str, tmp: Path) -> dict[str, int]:
    """Write one split's selected images as ``tmp/<split>/<class>/*.png``; images per class."""
    import numpy as np
    from PIL import Image

    from xailab.data import load_dataset
    from xailab.data.images import balanced_indices

    ds = load_dataset(args.dataset if folder is None else f"folder:{folder}", split, args.root,
                      normalize=False, download=args.download)
    keep = selected_classes(args.select, list(ds.classes))
    targets = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
    idx = np.nonzero(np.isin(targets, keep))[0]
    if args.per_class is not None:
        idx = idx[balanced_indices(targets[idx], args.per_class * len(keep))]
    counts: dict[str, int] = {}
    for i in idx:
        cls = ds.classes[int(targets[i])]
        dest = tmp / split / cls / f"{Path(ds.names[i]).stem if ds.names else i}_{i:06d}.png"
        dest.parent.mkdir(parents=True, exist_ok=True)
        img = ds.images[i].permute(1, 2, 0).numpy()
        Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(dest)
        counts[cls] = counts.get(cls, 0) + 1
    return counts


def export_flat(source: Path, dest: Path, n: int | None) -> int:
    """An unlabelled folder or archive: ``n`` images spread evenly over its sorted names."""
    import numpy as np

    from xailab.data.folder import decode_image, list_image_folder

    items = sorted(list_image_folder(source, None).items, key=lambda it: it[0])
    idx = np.arange(len(items))
    if n is not None and n < len(items):
        idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    dest.mkdir(parents=True, exist_ok=True)
    for i in idx:
        name, read = items[int(i)]
        decode_image(read(), name).convert("RGB").save(dest / f"{Path(name).stem}.png")
    return len(idx)


def selected_classes(select: str | None, classes: list[str]) -> list[int]:
    """Class names or indices, comma-separated, as sorted indices (default: every class)."""
    from xailab.core.errors import InputError

    if not select:
        return list(range(len(classes)))
    out = []
    for s in (v.strip() for v in select.split(",") if v.strip()):
        if s in classes:
            out.append(classes.index(s))
        elif s.isdigit() and int(s) < len(classes):
            out.append(int(s))
        else:
            raise InputError(f"class {s!r} is not in the dataset; its classes: {', '.join(classes)}")
    return sorted(set(out))
