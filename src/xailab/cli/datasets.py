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

HELP = "list the registered datasets and where their files are"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter")
    p.add_argument("--root", help="check this folder / archive instead of the default places")
    p.add_argument("--classes", action="store_true", help="also print the class names")
    p.add_argument("--export", metavar="DIR", help="write the dataset named by PATTERN as an image folder DIR")
    p.add_argument("--select", metavar="A,B", help="with --export: only these classes (names or indices)")
    p.add_argument("--per-class", type=int, metavar="N", help="with --export: at most N images a class and split")
    p.add_argument("--splits", default="train,test", help="with --export: the splits to write (default train,test)")
    p.add_argument("--download", action="store_true", help="download the dataset(s) if not found (alone, or with --export)")


def run(args: argparse.Namespace) -> int:
    """Export, download or list (from the catalogue: no torch unless ``--root``); returns the exit status."""
    from xailab.cli.listings import catalogue, dataset_line, found_at, matching
    from xailab.places import search_dirs

    if args.export:
        from xailab.jobs.datasets import ExportSpec, export_dataset

        export_dataset(ExportSpec(dataset=args.pattern, root=args.root, select=args.select, per_class=args.per_class,
                                  splits=args.splits, download=args.download), args.export)
        return 0
    rows = catalogue()["datasets"]
    names = matching(rows, args.pattern)
    if args.download:  # fetch each named dataset's train and test files (torchvision's URLs)
        from xailab.jobs.datasets import download_datasets

        download_datasets(names, args.root, pattern=args.pattern)
    print(f"{'name':15s} {'image':8s} {'classes':>7s} {'train':>6s} {'test':>6s}  found at")
    for n in names:
        print(dataset_line(n, rows[n], _usable_at(n, args.root) if args.root else found_at(n, rows[n])))
        if args.classes:
            print(f"{'':15s} {', '.join(rows[n]['classes'])}")
    print("any image folder: 'folder:<path>' (<path>/[train|test/]<class>/<image>, or a .tar.gz of it)")
    print(f"default places: {', '.join(str(d) for d in search_dirs())}")
    return 0


def _usable_at(name: str, root: str) -> str:
    """Where ``name``'s test split is read from under ``root``, or why it cannot be (reads it)."""
    from xailab.core.errors import DataError
    from xailab.data import load_dataset

    try:
        return str(load_dataset(name, "test", root).source)
    except DataError as e:
        return f"not usable: {e}"
