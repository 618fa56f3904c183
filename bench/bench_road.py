"""ROAD's imputation on one 224-px photo: the sparse direct solver against conjugate gradients (issue 21).

CPU seconds (one thread, best of interleaved rounds) of imputing one 3-channel 224x224 image at
compare's 10 removal levels (5, 15, ..., 95 %), for two kinds of map: a smooth one (Grad-CAM-like
blobs, large connected holes: the hard case for both solvers) and pixel noise (saliency-like,
scattered holes), and the largest difference between the two solvers' images.

    python -m bench.bench_road --rounds 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from xailab.metrics.compare_extra import road_percentages
from xailab.metrics.road import impute


def masks(kind: str, size: int = 224) -> torch.Tensor:
    """``[10, H, W]`` removal masks of the 10 levels for a map of ``kind`` ("smooth" or "noise")."""
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, size + 32, size + 32, generator=g)
    a = F.avg_pool2d(a, 33, 1)[0, 0] if kind == "smooth" else a[0, 0, :size, :size]
    ranks = a.flatten().argsort(descending=True).argsort().view(size, size)
    return torch.stack([ranks < int(size * size * p / 100) for p in road_percentages(10)])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    for kind in ("smooth", "noise"):
        m = masks(kind)
        xs = x.expand(len(m), -1, -1, -1)
        best = {"direct": float("inf"), "cg": float("inf")}
        out = {}
        for _ in range(a.rounds):
            for solver in best:
                t0 = time.process_time()
                out[solver] = impute(xs, m, solver=solver)  # type: ignore[arg-type]
                best[solver] = min(best[solver], time.process_time() - t0)
        diff = float((out["direct"] - out["cg"]).abs().max())
        print(f"{kind:6s} map: conjugate gradients {best['cg']:6.2f} CPU s, direct {best['direct']:5.2f} CPU s "
              f"= {best['cg'] / best['direct']:5.1f}x faster; max |difference| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
