"""Evaluate a trained model: accuracy, per-class accuracy, confusion matrix, macro precision,
recall and F1, and loss. Either a run made by `xailab train` (its best checkpoint by default; the
result is stored in the run) or any model spec with a weights file. Examples:

  xailab evaluate --run runs/c10
  xailab evaluate --run runs/c10 --checkpoint 3 --split train --limit 5000
  xailab evaluate --model resnet20 --weights resnet20.safetensors --data cifar10 --data-root c10.tgz
  xailab evaluate --run runs/explain   # an explain run: the methods' scoreboard (= xailab compare)
"""

from __future__ import annotations

import argparse

HELP = "evaluate a trained run or a model + weights on a dataset (accuracy, confusion, F1)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", help="a run made by `xailab train`")
    p.add_argument("--checkpoint", default="best", help="best (default), last or an epoch number")
    p.add_argument("--model", help="zoo name or model spec (with --weights), instead of --run")
    p.add_argument("--weights", help="weights file for --model (safetensors or a safe checkpoint)")
    p.add_argument("--data", help="dataset (default with --run: the run's)")
    p.add_argument("--data-root", help="where the dataset's files are")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate a stratified sample of N")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="with --model: also store the evaluation in this run directory")
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit sample")
    from xailab.distributed.options import add_backend_arguments

    add_backend_arguments(p)  # for an explain run (= compare); a model's evaluation stays local


def run(args: argparse.Namespace) -> int:
    from xailab.core.errors import InputError
    from xailab.data import load_dataset
    from xailab.distributed.options import backend_from_args
    from xailab.runs import Run
    from xailab.train import check_model_fits, evaluate, resolve_device, save_evaluation
    from xailab.train.recipe import (
        build_model,
        model_from_run,
        model_normalization,
        stratified_sample,
    )

    backend_from_args(args)  # refuses --workers / --address without --backend ray
    if args.backend == "ray" and not (args.run and Run.open(args.run).manifest.get("kind") == "explain"):
        raise InputError("--backend ray applies to an explain run (its methods' scoreboard); evaluating a "
                         "model is one forward pass per image and runs here")
    if bool(args.run) == bool(args.model):
        raise InputError("give either --run RUN, or --model SPEC with --weights FILE and --data NAME")
    device = resolve_device(args.device)
    store = None
    if args.run:
        store = Run.open(args.run)
        if store.manifest.get("kind") == "explain":  # evaluate the explanations, not the model
            from xailab.cli import main

            print(f"{args.run} is an explain run: scoring its methods (as `xailab compare {args.run}`)")
            return main(["compare", str(args.run), "--device", args.device, *_backend_argv(args)])
        cfg = store.manifest.get("config") or {}
        name = args.data or cfg.get("data")
        root = args.data_root if args.data or args.data_root else cfg.get("data_root")
        if not name:
            raise InputError(f"run {args.run} does not name its dataset; pass --data")
        model, meta = model_from_run(store, args.checkpoint)
        what = f"run {args.run}, checkpoint {args.checkpoint} (epoch {meta.get('epoch', '?')})"
    else:
        if not args.data:
            raise InputError("--model needs --data NAME (and usually --weights FILE)")
        name, root = args.data, args.data_root
        model, what = None, f"model {args.model}" + (f" with {args.weights}" if args.weights else "")
    ds = stratified_sample(load_dataset(name, args.split, root), args.limit, args.seed)
    k, channels = len(ds.classes), int(ds[0][0].shape[0])
    if model is None:
        model = build_model(args.model, num_classes=k, in_channels=channels, weights=args.weights)
        norm = model_normalization(model, channels)  # what the weights were trained on
    else:
        d = (store.manifest.get("dataset") or {}) if store is not None else {}
        norm = (tuple(d["mean"]), tuple(d["std"])) if d.get("mean") and len(d["mean"]) == channels else None
    if norm is not None:
        ds = ds.with_options(mean=norm[0], std=norm[1])
    model.to(device)
    check_model_fits(model, ds, k, device)
    ev = evaluate(model, ds, batch_size=args.batch_size, device=device, classes=list(ds.classes), progress=True)
    print(f"{what} on {name} ({args.split}, {len(ds)} items)\n")
    print(ev.format())
    if store is None and args.out:
        store = Run.create(args.out, kind="evaluate", config={"command": "evaluate", "model": args.model,
                                                              "weights": args.weights, "data": name,
                                                              "data_root": root})
    if store is not None:
        label = args.split if args.checkpoint == "best" or not args.run else f"{args.split}@{args.checkpoint}"
        if args.limit:
            label += f"@n{len(ds)}"
        save_evaluation(store, ev, label)
        print(f"\nstored in {store.path} (tables evaluation, per_class, confusion; part {label!r})")
    return 0


def _backend_argv(args: argparse.Namespace) -> list[str]:
    """The distributed flags, passed on to ``xailab compare``."""
    if args.backend != "ray":
        return []
    out = ["--backend", "ray", "--shard-size", str(args.shard_size), "--cpus-per-worker", str(args.cpus_per_worker),
           "--gpus-per-worker", str(args.gpus_per_worker)]
    out += ["--address", args.address] if args.address else []
    out += ["--workers", str(args.workers)] if args.workers else []
    return out
