"""RISE with fewer, structured masks: deletion AUC and map correlation against RISE at 4,000
random masks, versus the number of masks, on the trained CIFAR ResNet-20 (../shared/data).

For each sampler (``random``: the paper's masks; ``orthogonal``: balanced complement pairs and a
centred estimate, see :mod:`xailab.methods.perturbation.rise`) and number of masks, two seeds
explain the same images (top-1 target); printed are the mean Pearson correlation of the maps
with the reference (RISE, 4,000 random masks, another seed), between the two seeds, and the
deletion AUC (probability, 32 steps; lower is better) beside the reference's.

    python -m bench.bench_rise --images 4 --masks 250,500,1000
"""

from __future__ import annotations

import argparse
import sys

import torch

import xailab
from bench.bench_perturbation import resnet20
from xailab.metrics.faithfulness import deletion


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over images of Pearson's r between maps ``[N, 1, H, W]``."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--masks", default="250,500,1000")
    p.add_argument("--ref-masks", type=int, default=4000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    trained = resnet20()
    if trained is None:
        sys.exit("needs ../shared/data/cifar10-resnet/resnet20.safetensors")
    model, x = trained[0], trained[1][: a.images]
    t = model(x).argmax(1)

    def rise(n: int, seed: int, sampler: str = "random") -> torch.Tensor:
        return xailab.create("rise", model, n_masks=n, seed=seed, sampler=sampler, batch_size=250).explain(
            x, target=t).maps

    def auc(maps: torch.Tensor) -> float:
        return float(deletion(model, x, maps[:, 0], t, steps=32).auc.mean())

    ref = rise(a.ref_masks, 99)
    print(f"reference: RISE {a.ref_masks} random masks, deletion AUC {auc(ref):.4f}")
    print(f"{'sampler':10s} {'masks':>6s} {'r_ref':>6s} {'r_seeds':>7s} {'del_auc':>7s}")
    for n in (int(v) for v in a.masks.split(",")):
        for sampler in ("random", "orthogonal"):
            m1, m2 = rise(n, 1, sampler), rise(n, 2, sampler)
            print(f"{sampler:10s} {n:6d} {(corr(m1, ref) + corr(m2, ref)) / 2:6.3f} {corr(m1, m2):7.3f} "
                  f"{(auc(m1) + auc(m2)) / 2:7.4f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
