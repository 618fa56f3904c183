"""Train a model into a run directory: checkpoints every epoch, per-epoch metrics and predictions,
the best checkpoint by validation accuracy, and a final test evaluation. With --folds K, one
model per stratified fold and a table of per-fold accuracy, loss and macro F1 (mean ± std).

Rerunning the same command on the same --out resumes after the last finished epoch (a larger
--epochs continues a finished run). Examples:

  xailab train --model small_cnn --data fashion_mnist --epochs 5 --out runs/fmnist
  xailab train --model cifar_cnn --data cifar10 --data-root cifar10-jpg.tar.gz --epochs 2 \\
      --augment --out runs/c10
  xailab train --model small_cnn --data fashion_mnist --epochs 3 --optimizer adamw --weight-decay 0.05 \\
      --schedule cosine --warmup-epochs 1 --label-smoothing 0.1 --augment --out runs/fmnist-cos
  xailab train --model binary_cnn --data folder:cats_dogs --folds 5 --epochs 3 --out runs/cv
"""

from __future__ import annotations

import argparse

HELP = "train a model into a run directory (resumable; per-epoch predictions; --folds for k-fold)"

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    from xailab.cli.common import add_normalization_arguments

    p.add_argument("--model", required=True, help="zoo name (small_cnn, cifar_cnn, binary_cnn, "
                   "resnet20, ...) or a model spec used with --weights")
    p.add_argument("--weights", help="start from these weights (safetensors)")
    p.add_argument("--data", required=True, help="cifar10, mnist, fashion_mnist or folder:<path>")
    p.add_argument("--data-root", help="where the dataset's files are (folder or archive)")
    p.add_argument("--out", required=True, help="run directory (an existing run is resumed)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam",
                   help="adam (default), adamw (decoupled weight decay, for transformers) or sgd")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                   help="learning rate per step: constant (default) or cosine down to 0 at the last step")
    p.add_argument("--warmup-epochs", type=float, default=0.0, metavar="E",
                   help="raise the learning rate linearly over the first E epochs (default 0)")
    p.add_argument("--label-smoothing", type=float, default=0.0, metavar="S",
                   help="cross-entropy against (1 - S) * one-hot + S / classes (default 0)")
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
    add_normalization_arguments(p, trains=True)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: none)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.cli.common import normalization
    from xailab.jobs.train import TrainSpec, train_to_run

    spec = TrainSpec(
        model=args.model, weights=args.weights, data=args.data, data_root=args.data_root, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, optimizer=args.optimizer, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule, warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing, augment=args.augment, limit_train=args.limit_train,
        limit_test=args.limit_test, val_fraction=args.val_fraction, track=args.track, track_limit=args.track_limit,
        folds=args.folds, seed=args.seed, device=args.device, workers=args.workers, quiet=args.quiet,
        **normalization(args),
    )
    run_ = train_to_run(spec, args.out)
    if run_.manifest.get("kind") != "kfold":
        print(f"run: {run_.path}")
    return 0
