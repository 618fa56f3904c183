"""Time per photo of the ResNet study's LIME setting on EfficientNet-Lite0, before and after the
channels-last batches of the perturbation methods' folded model copy.

The ResNet dissection study explains its ImageNet photos with the pretrained EfficientNet-Lite0
(PyPI wheel), LIME at 500 samples (paired sampling), SLIC superpixels, batch 32
(``xailab study resnet_dissection``, docs/studies/resnet-dissection.md). "before" hands the
folded copy NCHW batches (the code before channels-last), "after" channels-last ones; the two
run interleaved, best of ``--rounds``, one torch thread. CPU seconds of this process and wall
seconds per photo are printed, and the largest difference of the superpixel weights.

    python -m bench.bench_photo_lime --photos 1 --rounds 1
    python -m bench.bench_photo_lime --photos 1 --rounds 1 --samples 97   # 3 batches, on a busy machine
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import xailab
import xailab.methods.perturbation.base as perturbation_base
from bench.bench_stability import efficientnet_lite0, photo_batch

STUDY = {"num_samples": 500, "batch_size": 32}  # PHOTO_LIME_SAMPLES and the study's --batch-size


def run(model: torch.nn.Module, x: torch.Tensor, channels_last: bool, samples: int) -> tuple[float, float, torch.Tensor]:
    real = perturbation_base._conv_on_cpu
    if not channels_last:
        perturbation_base._conv_on_cpu = lambda m: False  # type: ignore[assignment]
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        res = xailab.create("lime", model, seed=0, **{**STUDY, "num_samples": samples}).explain(x, target="top1")
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        perturbation_base._conv_on_cpu = real
    return cpu / len(x), wall / len(x), res.extras["weights"]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--samples", type=int, default=STUDY["num_samples"], help="LIME samples (the study: 500)")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    with open("/proc/loadavg") as fh:
        print(f"threads: 1, load average: {fh.read().split()[:3]}")
    model, x = efficientnet_lite0(), photo_batch(a.photos)
    best: dict[str, tuple[float, float]] = {}
    weights: dict[str, torch.Tensor] = {}
    for r in range(a.rounds):
        for name, cl in (("before (NCHW)", False), ("after (channels-last)", True)):
            cpu, wall, w = run(model, x, cl, a.samples)
            print(f"round {r}: {name:22s} {cpu:7.2f} CPU s/photo {wall:7.2f} wall s/photo", flush=True)
            old = best.get(name, (float("inf"), float("inf")))
            best[name] = (min(old[0], cpu), min(old[1], wall))
            weights[name] = w
    (b_cpu, b_wall), (a_cpu, a_wall) = best.values()
    diff = float((weights["before (NCHW)"] - weights["after (channels-last)"]).abs().max())
    print(f"LIME {a.samples} samples, EfficientNet-Lite0, {a.photos} photo(s): before {b_cpu:.2f} CPU s ({b_wall:.2f} wall), "
          f"after {a_cpu:.2f} CPU s ({a_wall:.2f} wall): {b_cpu / a_cpu:.2f}x CPU; largest weight difference {diff:.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
