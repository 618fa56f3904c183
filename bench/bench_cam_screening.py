"""Score-CAM and Ablation-CAM with channel screening: evaluations, map correlation, deletion AUC.

The trained CIFAR ResNet-20 (layer3, 64 channels; weights in ../shared/data/cifar10-resnet) on
CIFAR test images, top-1 target. For each ``channels`` setting (see
:mod:`xailab.methods.cam.screening`) the table gives the model evaluations per image, the mean
Pearson correlation of each map with the full method's (all channels) and the mean deletion AUC
(probability of the top-1 class as the most positive pixels are set to 0, 32 steps; lower is
better) next to the full method's. Evaluation counts do not depend on the machine's load.

    python -m bench.bench_cam_screening                  # 32 images, a few minutes on one core
    python -m bench.bench_cam_screening --images 8 --layer layer2
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import xailab
from bench.bench_perturbation import resnet20
from xailab.metrics.faithfulness import deletion

SETTINGS: list[int | float | None] = [None, 1.0, 0.95, 0.9, 0.8, 0.6, 32, 16, 8]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--layer", default="layer3")
    p.add_argument("--methods", default="score_cam,ablation_cam")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    trained = resnet20()
    if trained is None:
        print("no ResNet-20 weights in ../shared/data/cifar10-resnet: nothing to measure")
        return
    model, x = trained[0], trained[1][: a.images]
    with open("/proc/loadavg") as fh:
        print(f"threads: 1, load average: {fh.read().split()[:3]}, {len(x)} images, layer {a.layer}")
    print(f"{'method':13s} {'channels':>8s} {'evals/img':>9s} {'corr':>6s} {'del AUC':>8s} {'cpu_s/img':>9s}")
    for method in a.methods.split(","):
        full = None
        for setting in SETTINGS:
            cpu0 = time.process_time()
            res = xailab.create(method, model, layer=a.layer, channels=setting, batch_size=128).explain(x)
            cpu = (time.process_time() - cpu0) / len(x)
            full = res if setting is None else full
            assert full is not None
            corr = sum(pearson(res.maps[i, 0], full.maps[i, 0]) for i in range(len(x))) / len(x)
            auc = float(deletion(model, x, res, batch_size=256).auc.mean())
            print(f"{method:13s} {setting!s:>8s} {res.evaluations / len(x) - 1:9.1f} {corr:6.3f} {auc:8.4f} "
                  f"{cpu:9.3f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
