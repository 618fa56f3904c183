"""Explain images with one or more methods and targets; write maps, tables and PNG overlays into a run.

Examples:
  xailab explain --model resnet20 --weights resnet20.safetensors --images cifar10:test:16 \\
      --data-root ../shared/data/cifar10-jpg.tar.gz --methods saliency,integrated_gradients,gradcam \\
      --targets true,top1,top2,least --out runs/explain
  xailab explain --model efficientnet_lite0 --pretrained --images photos/ --methods lime \\
      --set lime.num_samples=500 --out runs/photos
  xailab explain --model small_cnn --weights best.safetensors --images fashion_mnist:test:16 \\
      --methods gradient_shap --set gradient_shap.background=fashion_mnist:train:100 --out runs/shap
  xailab explain ... --backend ray --workers 2 --shard-size 256     # shards over Ray workers, resumable
"""

from __future__ import annotations

import argparse

HELP = "explain images with attribution methods into a run (maps, tables, PNG overlays)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_model_arguments
    from xailab.distributed.options import add_backend_arguments

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(p)
    p.add_argument("--class-names", help="file of class names: a JSON list, or one name per line")
    p.add_argument("--images", required=True,
                   help="image files (comma-separated), a folder, or dataset:split[:N], e.g. cifar10:test:16")
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="leave out image files that cannot be decoded (listed in the run) instead of stopping")
    p.add_argument("--methods", required=True,
                   help="comma-separated method names (see `xailab methods`); NAME=METHOD runs METHOD under "
                        "its own NAME, so several settings of one method sit side by side "
                        "(ig_black=integrated_gradients,ig_noise=integrated_gradients --set ig_black.baseline=black ...)")
    p.add_argument("--targets", default="top1", help="comma-separated: true, top1, top2, ..., least, all, or class indices")
    p.add_argument("--layer", help="layer for CAM methods (default: the last conv block)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="a method parameter, e.g. integrated_gradients.n_steps=64 (repeatable)")
    p.add_argument("--batch-size", type=int, default=64, help="most samples in one forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="cheap settings (few samples/steps) for a first look")
    p.add_argument("--mistakes", type=int, default=0, metavar="K",
                   help="also explain K images of the same split the model gets wrong (dataset specs only)")
    p.add_argument("--png", choices=("none", "grid", "all"), default="grid",
                   help="PNG overlays: one grid of methods x targets per image (default), also one figure "
                        "per image and method with its colour bar (all), or none")
    p.add_argument("--no-png", dest="png", action="store_const", const="none", help="same as --png none")
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    add_backend_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    import sys

    from xailab.cli.common import model_spec, parse_sets
    from xailab.core.targets import parse_target_list
    from xailab.distributed.options import backend_from_args
    from xailab.jobs.explain import ExplainSpec, explain_to_run, method_list

    spec = ExplainSpec(
        model=model_spec(args), images=args.images, methods=method_list(args.methods),
        targets=tuple(parse_target_list(args.targets)), data_root=args.data_root, class_names=args.class_names,
        method_params=parse_sets(args.set), layer=args.layer, batch_size=args.batch_size, seed=args.seed,
        quick=args.quick, png=args.png, backend=backend_from_args(args), skip_bad_images=args.skip_bad_images,
        mistakes=args.mistakes,
    )
    run_ = explain_to_run(spec, args.out)
    print(f"run: {run_.path}")
    if args.png != "none":
        print(f"overlays: {run_.path / 'files' / 'overlays'}")
    refused = (run_.manifest.get("explain") or {}).get("refused") or {}
    for method, why in refused.items():
        print(f"xailab explain: refused {method}: {why}", file=sys.stderr)
    return 2 if refused else 0
