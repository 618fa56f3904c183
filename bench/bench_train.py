"""Training speed and the cost of the per-epoch records.

* ``fmnist small_cnn`` / ``cifar10 cifar_cnn``: one epoch of :class:`xailab.train.Trainer` on a
  stratified sample of the training split (validation on 10 % of it, recording a sample of the
  test split, checkpoints) against the *floor*: a bare PyTorch loop of the same forward,
  backward and Adam steps over the same batches (interleaved, best of 2). Reported per
  training image, with the full-split epoch extrapolated (``epoch_s_full``).
* ``recorder``: the prediction recorder's storage at the scale of a long study (50,000 instances,
  10 classes, 120 epochs; ``--quick``: 10 epochs): seconds to record one epoch, to read the whole
  predictions table, to read all probabilities, and the bytes on disk.

    python -m bench.bench_train --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.harness import Row, print_table, save_json, timed
from xailab.runs import Run
from xailab.train import (
    PredictionRecorder,
    TrainConfig,
    Trainer,
    read_predictions,
    read_probabilities,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FMNIST = Path("/usr/share/datasets/fashion-mnist")


def _floor_epoch(model: nn.Module, ds: Any, batch_size: int, seed: int) -> float:
    """A bare loop: same batches (ds.get_batch), forward, cross-entropy, backward, Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(ds), generator=g)
    t0 = time.perf_counter()
    for s in range(0, len(ds), batch_size):
        x, y = ds.get_batch(order[s: s + batch_size], generator=g)
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return time.perf_counter() - t0


def bench_training(case: str, data: str, root: Path, model_name: str, n_train: int, n_track: int,
                   full_train: int, repeat: int = 2) -> list[Row]:
    from xailab.data import load_dataset
    from xailab.models import create_model
    from xailab.train.recipe import stratified_sample

    if not root.exists():
        print(f"skip {case}: {root} not found")
        return []
    t0 = time.perf_counter()
    train_all = load_dataset(data, "train", root)
    test = load_dataset(data, "test", root)
    load_s = time.perf_counter() - t0
    train = stratified_sample(train_all, n_train, 0)
    track = stratified_sample(test, n_track, 0)
    from xailab.data import train_val_split

    tr, va = train_val_split(train.targets, 0.1, seed=0)
    k, c = len(train.classes), int(train[0][0].shape[0])
    cfg = TrainConfig(epochs=1, batch_size=128, lr=1e-3, seed=0, device="cpu", quiet=True)

    def ours() -> float:
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=k, in_channels=c)
        with tempfile.TemporaryDirectory() as d:
            res = Trainer(model, train.subset(tr), train.subset(va), config=cfg, run=Path(d) / "run",
                          track=track).fit()
            return float(res.history["train_seconds"].iloc[0])

    def floor() -> float:
        torch.manual_seed(0)
        model = create_model(model_name, num_classes=k, in_channels=c)
        return _floor_epoch(model, train.subset(tr), cfg.batch_size, 0)

    torch.manual_seed(0)  # warm-up: first-call costs (kernel selection, allocations) not timed
    _floor_epoch(create_model(model_name, num_classes=k, in_channels=c), train.subset(range(256)),
                 cfg.batch_size, 0)
    # interleaved, best of `repeat`: the CPU may be shared, and its load drifts
    wall_ours = train_s = floor_s = float("inf")
    for _ in range(repeat):
        w, t = timed(ours)                  # wall: epoch + validation + recording + checkpoints
        wall_ours, train_s = min(wall_ours, w), min(train_s, t)
        floor_s = min(floor_s, floor())
    n = len(tr)
    per_img = wall_ours / n
    return [
        # per image: the whole fit() (training, validation, recording, checkpoints, manifest)
        Row(case, "train epoch", "xailab", per_img,
            extra={"n_train": n, "n_val": len(va), "n_tracked": len(track), "wall_s": wall_ours,
                   "train_s": train_s, "train/floor": train_s / floor_s,
                   "epoch_s_full": per_img * full_train, "load_data_s": load_s}),
        Row(case, "train epoch", "floor", floor_s / n,
            extra={"n_train": n, "epoch_s_full": floor_s / n * full_train}),
    ]


class _Indices:
    """50,000 'instances' whose logits come from a fixed random table (no real model cost)."""

    def __init__(self, n: int, k: int) -> None:
        self.targets = torch.arange(n) % k
        self.classes = [str(i) for i in range(k)]
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.tensor([float(i)]), int(self.targets[i])

    def get_batch(self, idx: Any, augment: bool | None = None, generator: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(idx)
        return idx.float()[:, None], self.targets[idx]


class _TableModel(nn.Module):
    def __init__(self, n: int, k: int, epoch: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(epoch)
        self.table = nn.Parameter(torch.randn(n, k, generator=g) * 3, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def bench_recorder(n: int, k: int, epochs: int) -> list[Row]:
    data = _Indices(n, k)
    with tempfile.TemporaryDirectory() as d:
        run = Run.create(Path(d) / "run", kind="train")
        rec = PredictionRecorder(run, data, batch_size=4096)
        write = []
        for e in range(1, epochs + 1):
            model = _TableModel(n, k, e)
            t0 = time.perf_counter()
            rec.record(model, e)
            write.append(time.perf_counter() - t0)
        read_t, df = timed(lambda: read_predictions(run))
        read_one, _ = timed(lambda: read_predictions(run, epochs=[epochs // 2]))
        read_p, probs = timed(lambda: read_probabilities(run, mmap=False))
        read_inst, _ = timed(lambda: read_predictions(run, instances=list(range(100))))
        assert len(df) == n * epochs and probs.shape == (epochs, n, k)
        table_mb = sum(p.stat().st_size for p in run.table_dir("predictions").iterdir()) / 2**20
        arr_mb = sum(p.stat().st_size for p in run.array_dir("probabilities").iterdir()) / 2**20
    case = f"{n // 1000}k x {k} x {epochs}ep"
    return [
        Row(case, "record one epoch", "xailab", float(np.median(write)) / n,
            extra={"s_per_epoch": float(np.median(write))}),
        Row(case, "read whole table", "xailab", read_t / (n * epochs),
            extra={"s": read_t, "rows": n * epochs, "table_MB": table_mb}),
        Row(case, "read one epoch", "xailab", read_one / n, extra={"s": read_one}),
        Row(case, "read 100 instances", "xailab", read_inst / 100, extra={"s": read_inst}),
        Row(case, "read all probabilities", "xailab", read_p / (n * epochs),
            extra={"s": read_p, "array_MB": arr_mb}),
    ]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small samples, 10 recorder epochs")
    p.add_argument("--json", help="write the rows as JSON")
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args(argv)
    print(f"torch threads: {torch.get_num_threads()}  (the CPU may be shared: compare floor vs xailab "
          "in one run, not figures across runs)")
    rows: list[Row] = []
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # the first optimizer imports torch._dynamo
    if not args.skip_training:
        n_f, n_c, n_t, rep = (2000, 1000, 500, 1) if args.quick else (5000, 2500, 1000, 2)
        rows += bench_training("fmnist small_cnn", "fashion_mnist", FMNIST, "small_cnn", n_f, n_t,
                               54000, rep)
        rows += bench_training("cifar10 cifar_cnn", "cifar10", SHARED / "cifar10-jpg.tar.gz",
                               "cifar_cnn", n_c, n_t, 45000, rep)
    rows += bench_recorder(50000, 10, 10 if args.quick else 120)
    print_table(rows, "training and recording (s/img = seconds per training image or per record row)")
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
