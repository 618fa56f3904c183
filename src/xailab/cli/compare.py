"""Compare the explanation methods of a run: agreement, faithfulness, sanity, time.

Reads the maps ``xailab explain`` saved in RUN and writes tables ``agreement``,
``agreement_images``, ``faithfulness``, ``faithfulness_curves``, ``sanity`` and ``scoreboard``
plus figures under RUN/files/metrics/, then prints the scoreboard. The model defaults to the
one the run's manifest records.

Examples:
  xailab compare runs/cifar
  xailab compare runs/cifar --reference saliency --top 5 --steps 64 --no-sanity
  xailab compare runs/cifar --backend ray --workers 8    # faithfulness shard by shard on Ray
"""

from __future__ import annotations

import argparse

HELP = "compare a run's methods: agreement, deletion/insertion, sanity check, time (scoreboard)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("run", help="run directory written by `xailab explain`")
    p.add_argument("--model", help="zoo name, TorchScript file, or package.module:factory (default: the run's)")
    p.add_argument("--weights", help="weights file (default: the run's)")
    p.add_argument("--pretrained", action="store_true", help="a zoo model with its published weights (default: as the run was made)")
    p.add_argument("--num-classes", type=int, help="number of classes of a zoo model, if not its default")
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
    p.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    p.add_argument("--batch-size", type=int, default=64, help="most perturbed images in one forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    from xailab.distributed.options import add_backend_arguments

    add_backend_arguments(p)  # with --backend ray: faithfulness (the per-image part) runs on Ray


def run(args: argparse.Namespace) -> int:
    import torch

    from xailab.core.errors import InputError
    from xailab.distributed.options import backend_from_args
    from xailab.metrics.scoreboard import CompareSettings, compare_run, format_board
    from xailab.runs import Run, RunError

    if not 0 < args.top <= 100:
        raise InputError(f"--top is a percentage of pixels in (0, 100], got {args.top}")
    run_ = Run.open(args.run)
    config = run_.manifest.get("config", {})
    spec = args.model or config.get("model")
    weights = args.weights if args.weights is not None else (config.get("weights") if not args.model else None)
    if not spec:
        raise RunError(f"run {run_.path} does not record its model; pass --model (and --weights)")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        from xailab.models import create_model, load_model
    except ImportError as e:  # the model zoo is a separate room of the package
        raise RunError(f"cannot load model {spec!r}: xailab.models is not available ({e})") from None
    num_classes = args.num_classes or config.get("num_classes")
    if args.pretrained or (not args.model and not weights and config.get("pretrained")):
        model = create_model(spec, pretrained=True, num_classes=num_classes).to(device)
    else:
        model = load_model(spec, weights, num_classes=num_classes).to(device)
    target: str | int = int(args.target) if args.target.lstrip("-").isdigit() else args.target
    settings = CompareSettings(
        top=args.top / 100.0, steps=args.steps, deletion_fill=args.fill, faithfulness_runs=args.runs,
        sanity=not args.no_sanity, sanity_images=args.sanity_images, sanity_steps=args.sanity_steps,
        batch_size=args.batch_size, target=target, seed=args.seed,
    )
    methods = [_canonical(m) for m in args.methods.split(",") if m.strip()] if args.methods else None
    reference = _canonical(args.reference) if args.reference else None
    backend = backend_from_args(args)
    if backend is not None:
        from xailab.distributed.faithfulness import faithfulness_on_ray

        faithfulness_on_ray(run_, model, settings, backend=backend, methods=methods)
    board = compare_run(run_, model, reference=reference, methods=methods, settings=settings,
                        figures_on=not args.no_figures)
    print()
    print(format_board(board, run_.manifest.get("compare", {}).get("reference", "")))
    print(f"\ntables: agreement, agreement_images, faithfulness, sanity, scoreboard in {run_.path / 'tables'}")
    if not args.no_figures:
        print(f"figures: {run_.path / 'files' / 'metrics'}")
    return 0


def _canonical(name: str) -> str:
    """The registered name of a method (aliases such as ``ig`` resolved), else ``name`` as given."""
    from xailab.core.registry import METHODS, RegistryError

    try:
        return METHODS.canonical(name.strip())
    except RegistryError:
        return name.strip()
