"""List the registered datasets and where a local copy was found (``--root`` to check one).

With ``--download``, fetch a dataset's files (torchvision's URLs) unless a copy is found:
``xailab datasets cifar10 --download [--root DIR]``.

With ``--export DIR``, write some classes of one dataset as an image folder
(``DIR/<split>/<class>/<name>.png``, lossless), e.g. a two-class folder for a binary study:

  xailab datasets cifar10 --export data/cat_dog --select cat,dog
  xailab datasets cifar10 --root ../shared/data/cifar10-jpg.tar.gz --export data/cat_dog \\
      --select cat,dog --per-class 500
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "list the registered datasets and where their files are"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter")
    p.add_argument("--root", help="check this folder / archive instead of the default places")
    p.add_argument("--classes", action="store_true", help="also print the class names")
    p.add_argument("--export", metavar="DIR", help="write the dataset named by PATTERN as an image folder DIR")
    p.add_argument("--select", metavar="A,B", help="with --export: only these classes (names or indices)")
    p.add_argument("--per-class", type=int, metavar="N", help="with --export: at most N images a class and split")
    p.add_argument("--splits", default="train,test", help="with --export: the splits to write (default train,test)")
    p.add_argument("--download", action="store_true", help="download the dataset(s) if not found (alone, or with --export)")


def run(args: argparse.Namespace) -> int:
    from xailab.core.errors import DataError
    from xailab.data import DATASETS, dataset_info, load_dataset
    from xailab.data.locate import search_dirs

    if args.export:
        return _export(args)
    names = DATASETS.available(args.pattern)
    if args.download:  # fetch each named dataset's train and test files (torchvision's URLs)
        if not names:
            raise DataError(f"no dataset matches {args.pattern!r}; see `xailab datasets`")
        for n in names:
            for split in ("train", "test"):
                ds = load_dataset(n, split, args.root, normalize=False, download=True)
                print(f"{n} {split}: {len(ds)} images at {ds.source}")
    print(f"{'name':15s} {'image':8s} {'classes':>7s} {'train':>6s} {'test':>6s}  found at")
    for n in names:
        info = dataset_info(n)
        h, w = info.image_size
        if args.root:
            try:
                where = load_dataset(n, "test", args.root).source
            except DataError as e:
                where = f"not usable: {e}"
        else:
            found = info.locate("test")
            where = str(found) if found else "not found (root=, $XAILAB_DATA or download=True)"
        print(f"{n:15s} {info.channels}x{h}x{w:<4d} {len(info.classes):7d} {info.sizes.get('train', 0):6d} "
              f"{info.sizes.get('test', 0):6d}  {where}")
        if args.classes:
            print(f"{'':15s} {', '.join(info.classes)}")
    print("any image folder: 'folder:<path>' (<path>/[train|test/]<class>/<image>, or a .tar.gz of it)")
    print(f"default places: {', '.join(str(d) for d in search_dirs())}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """Write ``DIR/<split>/<class>/<name>.png``; a rerun with the same settings does nothing."""
    import json
    import shutil

    import numpy as np
    from PIL import Image

    from xailab.core.errors import InputError
    from xailab.data import DATASETS, load_dataset
    from xailab.data.folder import list_image_folder
    from xailab.data.images import balanced_indices

    source = Path(args.pattern.removeprefix("folder:")).expanduser()
    named = args.pattern in DATASETS.available() or args.pattern in getattr(DATASETS, "_aliases", {})
    if not named and not source.exists():
        raise InputError(f"--export needs a dataset name ({', '.join(DATASETS.available())}) or an image "
                         f"folder / archive, got {args.pattern!r}")
    if args.per_class is not None and args.per_class < 1:
        raise InputError(f"--per-class must be >= 1, got {args.per_class}")
    out = Path(args.export).expanduser()
    settings = {"dataset": args.pattern, "root": str(args.root) if args.root else None, "select": args.select,
                "per_class": args.per_class, "splits": args.splits}
    marker = out / ".xailab-export.json"
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        print(f"{out}: already exported with these settings")
        return 0
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not an export with these settings; choose another folder or remove it")
    tmp = out.parent / f".{out.name}.partial"  # renamed into place at the end: no half export
    shutil.rmtree(tmp, ignore_errors=True)
    counts: dict[str, dict[str, int]] = {}
    if not named and source.exists() and not list_image_folder(source, None).classes:
        counts["."] = {"images": _export_flat(source, tmp, args.per_class)}
    for split in [] if counts else [s.strip() for s in args.splits.split(",") if s.strip()]:
        ds = load_dataset(args.pattern if named else f"folder:{source}", split, args.root,
                          normalize=False, download=args.download)
        keep = _selected(args.select, list(ds.classes))
        targets = ds.targets.numpy() if hasattr(ds.targets, "numpy") else np.asarray(ds.targets)
        idx = np.nonzero(np.isin(targets, keep))[0]
        if args.per_class is not None:
            idx = idx[balanced_indices(targets[idx], args.per_class * len(keep))]
        counts[split] = {}
        for i in idx:
            cls = ds.classes[int(targets[i])]
            dest = tmp / split / cls / f"{Path(ds.names[i]).stem if ds.names else i}_{i:06d}.png"
            dest.parent.mkdir(parents=True, exist_ok=True)
            img = ds.images[i].permute(1, 2, 0).numpy()
            Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(dest)
            counts[split][cls] = counts[split].get(cls, 0) + 1
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / marker.name).write_text(json.dumps(settings))
    if out.exists():
        out.rmdir()  # empty (checked above)
    tmp.rename(out)
    for split, c in counts.items():
        print(f"{out / split}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    if "." in counts:
        print(f"use it as --images {out}")
    else:
        print(f"use it as --data folder:{out} (train) and --images folder:{out}:test:N")
    return 0


def _export_flat(source: Path, dest: Path, n: int | None) -> int:
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


def _selected(select: str | None, classes: list[str]) -> list[int]:
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
