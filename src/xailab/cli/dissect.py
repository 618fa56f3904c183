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

HELP = "network dissection: label units with colours, Broden concepts or classes (IoU of top activations)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_model_arguments

    add_model_arguments(p, required=False)
    p.add_argument("--images", help="probe set: dataset:split[:N], a folder or archive, files "
                                    "(ignored with --concepts broden:PATH, which brings its images)")
    p.add_argument("--max-images", type=int, help="use at most this many images")
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--layers", help="comma-separated layers with spatial maps, e.g. layer1,layer2,layer3")
    p.add_argument("--concepts", default="colour", help="colour | classes | broden:<path> (default colour)")
    p.add_argument("--quantile", type=float, default=0.005, help="top-activation quantile per unit (0.005)")
    p.add_argument("--threshold", type=float,
                   help="score from which a unit is labelled, else no clear concept (IoU 0.04; class selectivity 0.3)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--gallery-units", type=int, default=8, help="units per layer shown in the galleries")
    p.add_argument("--no-png", action="store_true", help="skip the figures")
    p.add_argument("--out", help="run directory (created)")
    p.add_argument("--compare", nargs=2, metavar="RUN", help="compare the dissection tables of two runs and exit")
    p.add_argument("--exact-range", action="store_true",
                   help="one more pass for each unit's min and max, binned exactly (what --backend ray gives)")
    from xailab.distributed.options import add_backend_arguments

    add_backend_arguments(p)  # with --backend ray: the passes run over shards of the images on Ray


def _compare(a: str, b: str) -> int:
    from xailab.concepts.dissection_report import compare_dissections, load_dissection_table

    cmp = compare_dissections(load_dissection_table(a), load_dissection_table(b), ("a", "b"))
    print(f"a = {a}\nb = {b}")
    for status, g in cmp.groupby("status"):
        labels = ", ".join(f"{r['label']} ({r['units_a']}/{r['units_b']})" for _, r in g.iterrows())
        print(f"{status:>8s}: {labels}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.core.errors import InputError

    if args.compare:
        return _compare(*args.compare)
    missing = [f"--{n}" for n in ("model", "layers", "out") if not getattr(args, n)]
    if missing:
        raise InputError(f"give {', '.join(missing)} (see xailab dissect --help)")

    from xailab.cli.common import model_spec
    from xailab.distributed.options import backend_from_args
    from xailab.jobs.dissect import DissectSpec, dissect_to_run

    spec = DissectSpec(
        model=model_spec(args), layers=args.layers, images=args.images, max_images=args.max_images,
        data_root=args.data_root, concepts=args.concepts, quantile=args.quantile, threshold=args.threshold,
        batch_size=args.batch_size, gallery_units=args.gallery_units, png=not args.no_png,
        exact_range=args.exact_range, backend=backend_from_args(args),
    )
    run_ = dissect_to_run(spec, args.out)
    files = run_.manifest["dissection"]["files"]
    print(f"table: {run_.path / files['csv']}")
    if not args.no_png:
        print(f"figures: {run_.path / 'files' / 'dissection'}")
    return 0
