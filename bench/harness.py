"""Timing, memory and table helpers shared by the benchmarks.

A benchmark measures xailab and its reference library on the same model and inputs in one
process, plus the *floor*: the forward (and backward) passes a method cannot avoid. It prints
one table and can write it as JSON (``--json PATH``) for the closing notes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


@dataclass
class Row:
    case: str                      # e.g. "small-cnn x32"
    method: str                    # e.g. "integrated_gradients"
    impl: str                      # "xailab", "captum", "floor", ...
    seconds_per_image: float
    evaluations_per_image: float | None = None
    peak_mb: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def timed(fn: Callable[[], Any], *, warmup: int = 0, repeat: int = 1,
          clock: Callable[[], float] = time.perf_counter) -> tuple[float, Any]:
    """Best-of-``repeat`` time of ``fn()`` after ``warmup`` calls, and its last result: wall time,
    or CPU time with ``clock=time.process_time`` (steadier on a shared machine, one torch thread)."""
    out = None
    for _ in range(warmup):
        out = fn()
    best = float("inf")
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = clock()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return best, out


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_memory_mb(fn: Callable[[], Any], interval: float = 0.005) -> tuple[float, Any]:
    """Peak memory growth of ``fn()`` in MiB: CUDA allocator peak on GPU, sampled RSS on CPU."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        allocated = torch.cuda.memory_allocated()
        out = fn()
        return (torch.cuda.max_memory_allocated() - allocated) / 2**20, out
    base = _rss_mb()
    peak: list[float] = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(interval)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return peak[0] - base, out


def floor_seconds(model: torch.nn.Module, x: torch.Tensor, samples: int, *, backward: bool,
                  batch_size: int = 64, clock: Callable[[], float] = time.perf_counter) -> float:
    """Time of ``samples`` forward (and backward) passes of ``model`` on inputs like ``x``
    (wall seconds, or CPU seconds with ``clock=time.process_time``)."""
    model.eval()
    reps = (samples + len(x) - 1) // len(x)
    xb = x.repeat(max(1, min(reps, batch_size // max(1, len(x)))), 1, 1, 1)[:batch_size]
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        xb = xb.contiguous(memory_format=torch.channels_last)  # the layout the methods are given
    done = 0

    def run() -> None:
        nonlocal done
        done = 0
        while done < samples:
            xi = xb[: min(len(xb), samples - done)]
            if backward:
                xi = xi.detach().requires_grad_(True)
                out = model(xi)
                torch.autograd.grad(out[:, 0].sum(), xi)
            else:
                with torch.no_grad():
                    model(xi)
            done += len(xi)

    seconds, _ = timed(run, warmup=0, clock=clock)
    return seconds


def print_table(rows: list[Row], title: str = "") -> None:
    if title:
        print(f"\n## {title}")
    hdr = f"{'case':18s} {'method':24s} {'impl':14s} {'s/img':>9s} {'evals/img':>10s} {'peak MB':>8s}  extra"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        ev = f"{r.evaluations_per_image:.0f}" if r.evaluations_per_image is not None else "-"
        pk = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "-"
        ex = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.extra.items())
        print(f"{r.case:18s} {r.method:24s} {r.impl:14s} {r.seconds_per_image:9.4f} {ev:>10s} {pk:>8s}  {ex}")


def ratio_rows(rows: list[Row]) -> list[str]:
    """Lines 'method case: xailab is Rx faster than impl' for every reference row."""
    out = []
    ours = {(r.case, r.method): r for r in rows if r.impl == "xailab"}
    for r in rows:
        if r.impl in ("xailab",):
            continue
        o = ours.get((r.case, r.method))
        if o and o.seconds_per_image > 0:
            what = "floor" if r.impl == "floor" else r.impl
            out.append(f"{r.method:24s} {r.case:18s} {what:12s} ratio ({what}/xailab) = "
                       f"{r.seconds_per_image / o.seconds_per_image:.2f}")
    return out


def save_json(rows: list[Row], path: str | None) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)
