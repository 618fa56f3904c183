"""Counterfactual explanations: the smallest change to an image that changes the model's decision.

Kinds (--kinds, comma-separated):
  pixel      optimisation in pixel space (Wachter et al. 2017): loss to the target + lambda *
             distance (l1, l2, tv), lambda searched per image until the class flips with the least change
  region     the fewest superpixels whose fill (blur, mean, donor) flips the decision (SEDC; greedy,
             or beam search with --beam)
  prototype  the nearest training images of the target class in the model's feature space (and of
             the predicted class); needs --reference
  concept    the fewest ICE concepts to remove (or, with --reference, add) in the basis's layer; needs --basis

Targets: top2 (default), least, other (any class but the current one), a class index or name.
An image that cannot be flipped within the budget is reported as "not found within N ...".

Examples:
  xailab counterfactual --model small_cnn --weights w.safetensors --images fashion_mnist:test:16 \\
      --kinds pixel,region --target top2 --out runs/cf
  xailab counterfactual --run runs/fm --images fashion_mnist:test:8 --kinds prototype,region --fill donor \\
      --reference fashion_mnist:train:2000 --target other --out runs/cf-proto
  xailab counterfactual --model resnet20 --weights resnet20.safetensors --images cifar10:test:8 \\
      --kinds concept --basis runs/ice --reference cifar10:train:1000 --out runs/cf-concepts
"""

from __future__ import annotations

import argparse

HELP = "counterfactuals: what would have to change (pixel, region, prototype, concept)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_model_arguments

    add_model_arguments(p, required=False)
    p.add_argument("--run", help="a training run (xailab train): its model and best weights")
    p.add_argument("--images", required=True, help="files, a folder, or dataset:split[:N] (e.g. fashion_mnist:test:16)")
    p.add_argument("--data-root", help="where the dataset of --images (and --reference) lies")
    p.add_argument("--kinds", default="pixel,region", help="pixel, region, prototype, concept (comma-separated)")
    p.add_argument("--target", default="top2", help="top2, least, other, a class index or a class name")
    p.add_argument("--distance", default="l1+l2", help="pixel: l1, l2, tv or a sum such as l1+l2")
    p.add_argument("--lam", type=float, default=0.1, help="pixel: the first weight of the distance")
    p.add_argument("--search-steps", type=int, default=5, help="pixel: rounds of the search over lambda")
    p.add_argument("--steps", type=int, default=100, help="pixel: optimisation steps per round")
    p.add_argument("--lr", type=float, default=0.01, help="pixel: Adam's step size, in pixels")
    p.add_argument("--fill", default="blur", choices=["blur", "mean", "donor"], help="region: what replaces a superpixel")
    p.add_argument("--beam", type=int, default=1, help="region: beam width (1: greedy)")
    p.add_argument("--max-regions", type=int, default=8, help="region: the most superpixels changed")
    p.add_argument("--attribution", help="region: rank superpixels by this method's map (default: removal effect)")
    p.add_argument("--reference", help="training images, dataset:split[:N]: prototypes, plausibility, donors")
    p.add_argument("--k", type=int, default=5, help="nearest neighbours for prototypes and plausibility")
    p.add_argument("--basis", help="concept: an ICE run (xailab concepts ice) of the same model")
    p.add_argument("--max-concepts", type=int, default=3, help="concept: the most concepts edited")
    p.add_argument("--png", type=int, default=8, help="figures per kind (found ones first)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (new)")


def run(args: argparse.Namespace) -> int:
    """Parse into a :class:`~xailab.jobs.counterfactual.CounterfactualSpec` and run it."""
    from xailab.cli.common import model_spec, names
    from xailab.jobs.counterfactual import CounterfactualSpec, counterfactual_to_run

    spec = CounterfactualSpec(
        model=model_spec(args) if args.model else None, images=args.images, run=args.run, data_root=args.data_root,
        kinds=names(args.kinds), target=args.target, distance=args.distance, lam=args.lam,
        search_steps=args.search_steps, steps=args.steps, lr=args.lr, fill=args.fill, beam=args.beam,
        max_regions=args.max_regions, attribution=args.attribution, reference=args.reference, k=args.k,
        basis=args.basis, max_concepts=args.max_concepts, png=args.png, batch_size=args.batch_size, seed=args.seed,
        device=args.device)
    counterfactual_to_run(spec, args.out)
    print(f"run: {args.out}")
    return 0
