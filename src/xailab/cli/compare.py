"""Compare the explanation methods of a run: agreement, faithfulness, sanity, time.

Reads the maps ``xailab explain`` saved in RUN and writes tables ``agreement``,
``agreement_images``, ``faithfulness``, ``faithfulness_curves``, ``faithfulness_extra`` (ROAD,
infidelity), ``metric_checks``, ``sanity``, ``scoreboard`` and ``verdict``
plus figures under RUN/files/metrics/, then prints the scoreboard. The model defaults to the
one the run's manifest records.

Examples:
  xailab compare runs/cifar
  xailab compare runs/cifar --reference saliency --top 5 --steps 64 --no-sanity
  xailab compare runs/cifar --metrics road --road-steps 20 --no-metric-checks
  xailab compare runs/cifar --backend ray --workers 8    # faithfulness shard by shard on Ray
"""

from __future__ import annotations

import argparse

HELP = "compare a run's methods: agreement, deletion/insertion, sanity check, time (scoreboard)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_model_arguments
    from xailab.distributed.options import add_backend_arguments

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("run", help="run directory written by `xailab explain`")
    add_model_arguments(p, from_run=True)
    p.add_argument("--methods", help="comma-separated subset of the run's methods (default: all)")
    p.add_argument("--reference", help="method avg_iou compares with (default: gradcam if present)")
    p.add_argument("--top", type=float, default=10.0, help="top region for IoU, in percent of pixels (default 10)")
    p.add_argument("--target", default="0",
                   help="which explained target column to score: its name (true, top1, ...) or index (default 0)")
    p.add_argument("--steps", type=int, default=32, help="deletion/insertion steps (default 32)")
    p.add_argument("--fill", type=float, default=0.0, help="value of deleted pixels (default 0, the mean of normalised inputs)")
    p.add_argument("--runs", type=int, default=32, help="random subsets per image for faithfulness correlation")
    p.add_argument("--sanity-images", type=int, default=4, help="images used by the randomisation test (default 4)")
    p.add_argument("--sanity-steps", type=int, default=6, help="re-explanations along the randomisation cascade")
    p.add_argument("--no-sanity", action="store_true", help="skip the randomisation test")
    p.add_argument("--metrics", default="road,infidelity",
                   help="per-image metrics beside deletion/insertion: road, infidelity (the default: both), irof, or none")
    p.add_argument("--road-steps", type=int, default=10, help="ROAD removal levels (default 10: 5, 15, ..., 95 %%)")
    p.add_argument("--infidelity-patch", type=int, default=0,
                   help="side of infidelity's squares in pixels (default 0: an eighth of the image side)")
    p.add_argument("--check-images", type=int, default=16,
                   help="images of the reference method used to check the metrics themselves (default 16)")
    p.add_argument("--no-metric-checks", action="store_true",
                   help="skip the checks of the metrics (noise resilience, reactivity)")
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--batch-size", type=int, default=64, help="most perturbed images in one forward pass")
    p.add_argument("--seed", type=int, default=0)
    add_backend_arguments(p)  # with --backend ray: faithfulness (the per-image part) runs on Ray


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.cli.common import model_override, names
    from xailab.distributed.options import backend_from_args
    from xailab.jobs.compare import CompareSpec, compare_to_run
    from xailab.metrics.scoreboard import CompareSettings, format_board

    target: str | int = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    settings = CompareSettings(
        top=args.top / 100.0, steps=args.steps, deletion_fill=args.fill, faithfulness_runs=args.runs,
        sanity=not args.no_sanity, sanity_images=args.sanity_images, sanity_steps=args.sanity_steps,
        batch_size=args.batch_size, target=target, seed=args.seed,
        extra_metrics=tuple(m for m in names(args.metrics) if m != "none"), road_steps=args.road_steps,
        infidelity_patch=args.infidelity_patch, metric_checks=not args.no_metric_checks,
        check_images=args.check_images,
    )
    spec = CompareSpec(model=model_override(args), settings=settings, methods=names(args.methods) or None,
                       reference=args.reference, figures=not args.no_figures, backend=backend_from_args(args))
    run_ = compare_to_run(spec, args.run)
    compare = run_.manifest.get("compare", {})
    print()
    print(format_board(run_.read_table("scoreboard"), compare.get("reference", "")))
    print(f"\ntables: {', '.join(compare.get('tables', []))} in {run_.path / 'tables'}")
    if not args.no_figures:
        print(f"figures: {run_.path / 'files' / 'metrics'}")
    return 0
