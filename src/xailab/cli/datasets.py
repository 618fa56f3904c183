"""List the registered datasets and where a local copy was found (``--root`` to check one)."""

from __future__ import annotations

import argparse

HELP = "list the registered datasets and where their files are"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter")
    p.add_argument("--root", help="check this folder / archive instead of the default places")
    p.add_argument("--classes", action="store_true", help="also print the class names")


def run(args: argparse.Namespace) -> int:
    from xailab.core.errors import DataError
    from xailab.data import DATASETS, dataset_info, load_dataset
    from xailab.data.locate import search_dirs

    names = DATASETS.available(args.pattern)
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
