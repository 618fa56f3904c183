"""Network dissection: label every unit of some layers with a colour, a Broden concept or a class.

Each unit's top 0.5 % activations (threshold T_k over the whole image set) are upsampled to the
concept masks and compared by IoU (Bau et al. 2017); a unit whose best IoU reaches --threshold
(0.04) is a detector of that concept. --concepts classes labels each unit with the class whose
images activate it most (class-selectivity index as the score).

Examples:
  xailab dissect --model resnet20 --weights ../shared/data/cifar10-resnet/resnet20.safetensors \\
      --images cifar10:test:2000 --data-root ../shared/data/cifar10-jpg.tar.gz \\
      --layers layer1,layer2,layer3 --concepts colour --out runs/dissect-colour
  xailab dissect --model efficientnet_lite0 --pretrained \\
      --images ../shared/data/imagenet/imagenet-samples-256.tar.gz \\
      --max-images 200 --layers _blocks.4,_blocks.10,_relu1 --concepts colour --out runs/dissect-lite0
  xailab dissect --model resnet18 --pretrained --images broden1_224/images \\
      --layers layer3,layer4 --concepts broden:broden1_224 --out runs/dissect-broden
  xailab dissect ... --backend ray --workers 8 --shard-size 256   # passes over shards on Ray, resumable
  xailab dissect --compare runs/dissect-a runs/dissect-b
"""

from __future__ import annotations

import argparse
from functools import partial
from typing import Any

HELP = "network dissection: label units with colours, Broden concepts or classes (IoU of top activations)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="zoo name, TorchScript file, or package.module:factory")
    p.add_argument("--weights", help="weights file (safetensors, or a state dict; never unpickled)")
    p.add_argument("--pretrained", action="store_true", help="a zoo model with its published weights")
    p.add_argument("--num-classes", type=int, help="number of classes of a zoo model, if not its default")
    p.add_argument("--images", help="probe set: dataset:split[:N], a folder or archive, files "
                                    "(ignored with --concepts broden:PATH, which brings its images)")
    p.add_argument("--max-images", type=int, help="use at most this many images")
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--layers", help="comma-separated layers with spatial maps, e.g. layer1,layer2,layer3")
    p.add_argument("--concepts", default="colour", help="colour | classes | broden:<path> (default colour)")
    p.add_argument("--quantile", type=float, default=0.005, help="top-activation quantile per unit (0.005)")
    p.add_argument("--threshold", type=float,
                   help="score from which a unit is labelled (IoU 0.04; class selectivity 0.0)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--gallery-units", type=int, default=8, help="units per layer shown in the galleries")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--no-png", action="store_true", help="skip the figures")
    p.add_argument("--out", help="run directory (created)")
    p.add_argument("--compare", nargs=2, metavar="RUN", help="compare the dissection tables of two runs and exit")
    p.add_argument("--exact-range", action="store_true",
                   help="one more pass for each unit's min and max, binned exactly (what --backend ray gives)")
    from xailab.distributed.options import add_backend_arguments

    add_backend_arguments(p)  # with --backend ray: the passes run over shards of the images on Ray


def _model(args: argparse.Namespace) -> tuple[Any, str]:
    import torch

    from xailab.models import create_model, load_model

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.pretrained:
        model = create_model(args.model, pretrained=True, num_classes=args.num_classes)
    else:
        model = load_model(args.model, args.weights, num_classes=args.num_classes)
    return model.to(device), device


def _compare(a: str, b: str) -> int:
    from xailab.concepts.dissection_report import compare_dissections, load_dissection_table

    cmp = compare_dissections(load_dissection_table(a), load_dissection_table(b), ("a", "b"))
    print(f"a = {a}\nb = {b}")
    for status, g in cmp.groupby("status"):
        labels = ", ".join(f"{r['label']} ({r['units_a']}/{r['units_b']})" for _, r in g.iterrows())
        print(f"{status:>8s}: {labels}")
    return 0


def run(args: argparse.Namespace) -> int:
    from xailab.core.errors import InputError

    if args.compare:
        return _compare(*args.compare)
    missing = [f"--{n}" for n in ("model", "layers", "out") if not getattr(args, n)]
    if missing:
        raise InputError(f"give {', '.join(missing)} (see xailab dissect --help)")

    from xailab.concepts.dissection import DEFAULT_IOU_THRESHOLD, dissect, dissect_classes
    from xailab.concepts.dissection_concepts import BrodenDataset, ColourConcepts
    from xailab.concepts.dissection_report import dissection_to_run
    from xailab.data import load_images
    from xailab.distributed.options import backend_from_args
    from xailab.models import get_preprocessing

    backend = backend_from_args(args)
    config = {"model": args.model, "weights": args.weights, "pretrained": args.pretrained,
              "images": args.images, "data_root": args.data_root, "concepts": args.concepts.strip()}
    model, device = _model(args)
    config["device"] = device
    out: Any = args.out
    run_dissect: Any = dissect
    run_classes: Any = dissect_classes
    if backend is not None:  # the passes on Ray, their shards in the run (rerun = resume)
        from xailab.distributed.dissection import dissect_classes_on_ray, dissect_on_ray
        from xailab.runs.store import Run

        out = Run.create(args.out, kind="dissection", config=config)
        run_dissect = partial(dissect_on_ray, backend=backend, run=out)
        run_classes = partial(dissect_classes_on_ray, backend=backend, run=out)
    prep = get_preprocessing(model)
    kind = args.concepts.strip()
    names: list[str] | None = None
    common: dict[str, Any] = {"quantile": args.quantile, "batch_size": args.batch_size}
    if args.exact_range and backend is None:
        common["exact_range"] = True
    if kind.lower().startswith("broden:"):
        broden = BrodenDataset(kind.split(":", 1)[1], prep, max_images=args.max_images)
        images: Any = broden
        display = prep.denormalize if prep is not None else None
        print(f"dissecting {len(broden)} Broden images against {len(broden.names)} concepts")
        thr = DEFAULT_IOU_THRESHOLD if args.threshold is None else args.threshold
        res = run_dissect(model, broden, args.layers, broden, threshold=thr, **common)
    else:
        if not args.images:
            raise InputError("give --images (dataset:split[:N], a folder or archive)")
        x, y, names, ds = load_images(args.images, prep, root=args.data_root, max_images=args.max_images)
        if prep is not None:
            display = prep.denormalize
        elif ds is not None and ds.normalize:
            display = ds.preprocessing.denormalize
        else:
            display = None
        images = x
        if kind.lower() in ("colour", "color", "colours", "colors"):
            print(f"dissecting {len(x)} images against 11 colour concepts")
            thr = DEFAULT_IOU_THRESHOLD if args.threshold is None else args.threshold
            res = run_dissect(model, x, args.layers, ColourConcepts(display), threshold=thr, **common)
        elif kind.lower() == "classes":
            class_names = list(ds.classes) if ds is not None else None
            if y is None:
                raise InputError("--concepts classes needs labelled images (a dataset spec or a folder of class folders)")
            print(f"class-level dissection of {len(x)} labelled images")
            res = run_classes(model, x, args.layers, labels=y, class_names=class_names,
                              threshold=0.0 if args.threshold is None else args.threshold, **common)
        else:
            raise InputError(f"unknown --concepts {kind!r}: give colour, classes or broden:<path>")
    run_ = dissection_to_run(res, out, model=model, images=images, display=display, names=names,
                             gallery_units=args.gallery_units, png=not args.no_png, config=config)
    print(f"done in {res.seconds:.1f} s")
    for _, r in res.summary().iterrows():
        print(f"  {r['layer']:>12s}: {r['labelled']:4d}/{r['units']:<4d} units labelled, "
              f"{r['distinct']} labels; top: {r['top_labels'] or '-'}")
    files = run_.manifest["dissection"]["files"]
    print(f"table: {run_.path / files['csv']}")
    if not args.no_png:
        print(f"figures: {run_.path / 'files' / 'dissection'}")
    return 0
