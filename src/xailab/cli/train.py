"""Train a model into a run directory: checkpoints every epoch, per-epoch metrics and predictions,
the best checkpoint by validation accuracy, and a final test evaluation. With --folds K, one
model per stratified fold and a table of per-fold accuracy, loss and macro F1 (mean ± std).

Rerunning the same command on the same --out resumes after the last finished epoch (a larger
--epochs continues a finished run). Examples:

  xailab train --model small_cnn --data fashion_mnist --epochs 5 --out runs/fmnist
  xailab train --model cifar_cnn --data cifar10 --data-root cifar10-jpg.tar.gz --epochs 2 \\
      --augment --out runs/c10
  xailab train --model binary_cnn --data folder:cats_dogs --folds 5 --epochs 3 --out runs/cv
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

HELP = "train a model into a run directory (resumable; per-epoch predictions; --folds for k-fold)"

# settings that may change when resuming (the rest must match the run's manifest)
_RESUMABLE = {"epochs", "device", "quiet", "workers", "eval_batch_size"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo name (small_cnn, cifar_cnn, binary_cnn, "
                   "resnet20, ...) or a model spec used with --weights")
    p.add_argument("--weights", help="start from these weights (safetensors)")
    p.add_argument("--data", required=True, help="cifar10, mnist, fashion_mnist or folder:<path>")
    p.add_argument("--data-root", help="where the dataset's files are (folder or archive)")
    p.add_argument("--out", required=True, help="run directory (an existing run is resumed)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--augment", action="store_true", help="random crop and flip while training")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on a stratified sample of N")
    p.add_argument("--limit-test", type=int, metavar="N", help="test on a stratified sample of N")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of the training split held out to choose the best epoch (0: none)")
    p.add_argument("--track", choices=["test", "val", "train", "none"], default=None,
                   help="whose predictions to record every epoch (default: test; none with --folds)")
    p.add_argument("--track-limit", type=int, metavar="N", help="record a stratified sample of N")
    p.add_argument("--folds", type=int, metavar="K", help="stratified K-fold training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = ["model", "weights", "data", "data_root", "epochs", "batch_size", "lr", "optimizer",
            "momentum", "weight_decay", "augment", "limit_train", "limit_test", "val_fraction",
            "track", "track_limit", "folds", "seed", "device", "workers"]
    return {"command": "train", **{k: getattr(args, k) for k in keys}}


def _check_resume(out: Path, settings: dict[str, Any]) -> bool:
    """True if ``out`` is a new run; a RunError if it exists but is another run or not a run."""
    from xailab.runs import Run, RunError

    if not out.exists():
        return True
    if not (out / "manifest.json").exists():
        if out.is_dir() and not any(out.iterdir()):
            return True
        raise RunError(f"{out} exists and is not an xailab run; choose another --out")
    old = Run.open(out).manifest.get("config") or {}
    diffs = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items()
             if k not in _RESUMABLE and old.get(k) != v]
    if diffs:
        raise RunError(f"run {out} was made with other settings ({'; '.join(diffs)}); rerun with "
                       "the same settings to resume it, or choose another --out")
    return False


def _cleanup(out: Path, new: bool) -> None:
    """Remove a run this command created if it holds no finished epoch."""
    if new and out.is_dir() and not any(out.rglob("epoch-*.optim.safetensors")):
        shutil.rmtree(out, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    from xailab.runs import Run
    from xailab.train import (
        TrainConfig,
        Trainer,
        check_model_fits,
        evaluate,
        load_weights,
        save_evaluation,
        train_kfold,
    )
    from xailab.train.recipe import (
        build_model,
        checkpoint_file,
        model_normalization,
        prepare_data,
        stratified_indices,
    )
    from xailab.train.trainer import merge_section, seed_everything

    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                      optimizer=args.optimizer, momentum=args.momentum,
                      weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                      num_workers=args.workers, quiet=args.quiet)
    if args.folds is not None and args.folds < 2:
        from xailab.core.errors import InputError

        raise InputError(f"--folds needs at least 2 folds, got {args.folds}")
    track = args.track or ("none" if args.folds else "test")
    settings = _settings(args)
    settings["track"] = track
    out = Path(args.out)
    new = _check_resume(out, settings)

    # everything that can fail on bad input happens before the run directory exists
    data = prepare_data(args.data, args.data_root, augment=args.augment, limit_train=args.limit_train,
                        limit_test=args.limit_test, val_fraction=0.0 if args.folds else args.val_fraction,
                        seed=args.seed, test=not args.folds)
    for note in data.notes:
        print(f"note: {note}")
    k = len(data.classes)

    def make_model(fold: int = 0) -> Any:
        return build_model(args.model, num_classes=k, in_channels=data.channels, weights=args.weights)

    seed_everything(args.seed)  # the initial weights, too, follow --seed
    model = make_model()
    norm = model_normalization(model, data.channels) if args.weights else None
    if norm is not None:  # pretrained weights: feed the inputs they were trained on
        data = data.normalized(*norm)
    check_model_fits(model, data.plain, k)
    model_info = {"name": args.model, "weights": args.weights, "num_outputs": k,
                  "in_channels": data.channels}

    try:
        if args.folds:
            parent = Run.create(out, kind="kfold", config=settings)
            parent.update_manifest("dataset", data.describe(args.data, args.data_root))
            parent.update_manifest("model", {**model_info, "class": type(model).__name__})
            parent.update_manifest("classes", data.classes)
            print(f"run: {out}  ({args.folds}-fold, {len(data.full)} items, {k} classes)")
            res = train_kfold(make_model, data.full, k=args.folds, config=cfg, run=parent,
                              eval_dataset=data.plain, track="val" if track == "val" else None,
                              fold_config=settings)
            for fold in range(1, args.folds + 1):
                merge_section(Run.open(out / "folds" / f"fold-{fold}"), "model", model_info)
            print(res.format())
            return 0

        tracked = {"test": data.test, "val": data.val, "train": data.plain, "none": None}[track]
        if track != "none" and tracked is None:
            print(f"note: no {track} set to track; per-epoch predictions are not recorded")
        idx = stratified_indices(tracked.targets, args.track_limit, args.seed) if tracked is not None else None
        run_ = Run.create(out, kind="train", config=settings)
        run_.update_manifest("dataset", data.describe(args.data, args.data_root))
        merge_section(run_, "model", model_info)
        print(f"run: {out}  ({len(data.train)} training items, {k} classes)")
        result = Trainer(model, data.train, data.val, config=cfg, run=run_, track=tracked,
                         track_indices=idx).fit()
    except BaseException:
        _cleanup(out, new)
        raise

    h = result.history
    print(f"\n{'epoch':>5s} {'train_loss':>10s} {'train_acc':>9s} {'val_loss':>9s} {'val_acc':>8s} {'seconds':>8s}")
    for r in h.itertuples():
        print(f"{r.epoch:5d} {r.train_loss:10.4f} {r.train_acc:9.4f} {r.val_loss:9.4f} {r.val_acc:8.4f} "
              f"{r.seconds:8.1f}")
    if result.best_val_acc is not None:
        print(f"best epoch {result.best_epoch} (validation accuracy {result.best_val_acc:.4f})")
    if data.test is not None:
        load_weights(checkpoint_file(run_, "best"), model)
        ev = evaluate(model, data.test, batch_size=cfg.eval_batch_size, classes=data.classes)
        save_evaluation(run_, ev, "test")
        print(f"test (best checkpoint, epoch {result.best_epoch}): accuracy {ev.accuracy:.4f}  "
              f"loss {ev.loss:.4f}  macro F1 {ev.f1_macro:.4f}  ({ev.n} items)")
    print(f"run: {out}")
    return 0
