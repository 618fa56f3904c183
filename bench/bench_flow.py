"""Instance flow at scale: a 50,000-instance x 120-epoch prediction history (6 million rows).

Measures, on a synthetic history written the way the trainer's recorder writes it (one Parquet
part per epoch: epoch, instance, label, predicted, confidence, p_label):

* writing the history (seconds for all 120 parts),
* the Sankey of one true class over 10 epochs (``select_history`` + ``sankey``): the bounded
  reader against the obvious way (``Run.read_table`` of everything, then pandas),
* the same for all classes over 10 epochs, the instance table, and the whole page,
* peak memory of each (``harness.peak_memory_mb``: sampled RSS growth on CPU), measured in a
  fresh process per view so that memory an earlier view freed (but the allocator kept) does
  not hide growth.

``s/img`` in the harness table is seconds per instance in the view; ``total_s`` (and the
second table) is the wall time of the whole view. ``--quick``: 5,000 instances x 24 epochs.

    python -m bench.bench_flow [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.harness import Row, peak_memory_mb, print_table, save_json, timed
from xailab.dynamics import instance_table, sankey, select_history
from xailab.dynamics.page import flow_page
from xailab.runs import Run

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_history(run: Run, n: int, epochs: int, seed: int = 0) -> None:
    """A plausible learning history: accuracy rises, predictions are sticky, errors favour a
    per-class confuser (cat <-> dog, automobile <-> truck, ...)."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    label = np.repeat(np.arange(k), n // k + 1)[:n].astype(np.int32)
    rng.shuffle(label)
    difficulty = rng.beta(2, 5, n)
    confuser = np.array([8, 9, 0, 5, 7, 3, 2, 4, 0, 1], dtype=np.int32)
    pred = rng.integers(0, k, n).astype(np.int32)
    inst = np.arange(n, dtype=np.int64)
    for e in range(1, epochs + 1):
        p_right = (0.1 + 0.85 * (1 - np.exp(-e / (8 + 40 * difficulty)))) * (1 - 0.6 * difficulty)
        move = rng.random(n) < 0.35
        right = rng.random(n) < p_right
        wrong = np.where(rng.random(n) < 0.6, confuser[label], rng.integers(0, k, n))
        pred = np.where(move, np.where(right, label, wrong), pred).astype(np.int32)
        conf = np.clip(0.3 + 0.6 * p_right + rng.normal(0, 0.1, n), 0.1, 1.0).astype(np.float32)
        run.write_table("predictions", pd.DataFrame({
            "epoch": np.full(n, e, np.int32), "instance": inst, "label": label, "predicted": pred,
            "confidence": conf, "p_label": np.where(pred == label, conf, conf / 3).astype(np.float32),
        }), part=e)


def read_all_then_pandas(run: Run, cls: int, lo: int, hi: int) -> pd.DataFrame:
    """The obvious way: read the whole table, filter in pandas, pivot, count pairs."""
    df = run.read_table("predictions")
    df = df[(df["label"] == cls) & (df["epoch"] >= lo) & (df["epoch"] <= hi)]
    wide = df.pivot(index="instance", columns="epoch", values="predicted")
    out = []
    for a, b in zip(wide.columns[:-1], wide.columns[1:], strict=True):
        c = wide.groupby([a, b]).size().rename("count").reset_index()
        c.insert(0, "epoch", a)
        out.append(c)
    return pd.concat(out)


def _view(method: str, impl: str, path: str, span: str, tmp: str) -> Callable[[], Any]:
    run = Run.open(path)
    lo, hi = (int(x) for x in span.split("-"))
    views: dict[tuple[str, str], Callable[[], Any]] = {
        ("sankey 1 class 10ep", "xailab"):
            lambda: sankey(select_history(run, true_classes=["cat"], epochs=span)),
        ("sankey 1 class 10ep", "read-all+pandas"): lambda: read_all_then_pandas(run, 3, lo, hi),
        ("sankey all 10ep", "xailab"): lambda: sankey(select_history(run, epochs=span)),
        ("table 1 class 10ep", "xailab"):
            lambda: instance_table(select_history(run, true_classes=["cat"], epochs=span)),
        ("page 1 class 10ep", "xailab"):
            lambda: flow_page(run, Path(tmp) / "flow.html", true_classes=["cat"], epochs=span),
        ("sankey all epochs", "xailab"): lambda: sankey(select_history(run)),
    }
    return views[(method, impl)]


def _fresh_peak(method: str, impl: str, path: str, span: str, tmp: str) -> float:
    """Peak RSS growth of one view in this (fresh) process, after the same small warm-up for
    every view (one epoch of one class, one part read into pandas): library start-up costs
    (Arrow's thread pools and allocator) are not the view's."""
    run = Run.open(path)
    lo = span.split("-")[0]
    sankey(select_history(run, true_classes=[0], epochs=f"{lo}-{lo}"))
    run.read_table("predictions", filters=[("epoch", "=", int(lo))])
    fn = _view(method, impl, path, span, tmp)
    return peak_memory_mb(fn)[0]


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5,000 instances x 24 epochs")
    ap.add_argument("--instances", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--keep", metavar="DIR", help="write the run here and keep it")
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    n = args.instances or (5_000 if args.quick else 50_000)
    epochs = args.epochs or (24 if args.quick else 120)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_flow_"))
    case = f"{n // 1000}k x {epochs}ep"
    rows: list[Row] = []
    try:
        run = Run.create(tmp / "run", kind="train")
        run.update_manifest("predictions", {"predictions": {"classes": CLASSES, "instances": n}})
        t0 = time.perf_counter()
        write_history(run, n, epochs)
        write_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in run.table_dir("predictions").iterdir()) / 2**20
        rows.append(Row(case, "write history", "xailab", write_s / n,
                        extra={"total_s": write_s, "rows": n * epochs, "MB_on_disk": size_mb}))
        lo = epochs // 2
        hi = lo + 9
        span = f"{lo}-{hi}"

        cases = [("sankey 1 class 10ep", "xailab", n // 10),
                 ("sankey 1 class 10ep", "read-all+pandas", n // 10),
                 ("sankey all 10ep", "xailab", n),
                 ("table 1 class 10ep", "xailab", n // 10),
                 ("page 1 class 10ep", "xailab", n // 10),
                 ("sankey all epochs", "xailab", n)]
        spawn = mp.get_context("spawn")
        for method, impl, count in cases:
            fn = _view(method, impl, str(run.path), span, str(tmp))
            seconds, out = timed(fn, warmup=1, repeat=3 if impl == "xailab" else 1)
            with spawn.Pool(1) as pool:  # a fresh process: memory freed by earlier views
                peak = pool.apply(_fresh_peak, (method, impl, str(run.path), span, str(tmp)))
            extra: dict[str, object] = {"total_s": seconds}
            if method.startswith("sankey") and impl == "xailab":
                extra["bands"] = len(out.links)
            if method.startswith("page"):
                extra["page_KB"] = (tmp / "flow.html").stat().st_size / 1024
            rows.append(Row(case, method, impl, seconds / count, peak_mb=peak, extra=extra))
        ours = {r.method: r for r in rows if r.impl == "xailab"}
        check = read_all_then_pandas(run, 3, lo, hi)["count"].sum()
        s1 = _view("sankey 1 class 10ep", "xailab", str(run.path), span, str(tmp))()
        assert int(check) == int(s1.links["count"].sum())
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print_table(rows, f"instance flow, {n:,} instances x {epochs} epochs ({n * epochs:,} predictions)")
    print(f"\n{'view':24s} {'impl':16s} {'seconds':>9s} {'peak MB':>8s} {'bands':>7s}")
    for r in rows:
        print(f"{r.method:24s} {r.impl:16s} {r.extra['total_s']:9.3f} "
              f"{r.peak_mb if r.peak_mb is not None else float('nan'):8.0f} {r.extra.get('bands', ''):>7}")
    base = next(r for r in rows if r.impl == "read-all+pandas")
    mine = ours["sankey 1 class 10ep"]
    print(f"\nwrite {n * epochs:,} predictions: {write_s:.2f} s ({size_mb:.1f} MB of Parquet)")
    print(f"one class over 10 epochs: {mine.extra['total_s']:.3f} s, peak {mine.peak_mb:.0f} MB; "
          f"read-all+pandas {base.extra['total_s']:.3f} s, peak {base.peak_mb:.0f} MB "
          f"(read-all / xailab: {base.seconds_per_image / mine.seconds_per_image:.1f}x the time, "
          f"{max(base.peak_mb or 0, 1) / max(mine.peak_mb or 0, 1):.1f}x the memory)")
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
