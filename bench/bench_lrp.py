"""LRP: xailab against zennit's Gradient attributor (and Captum's LRP) on the same model and inputs.

Cases: the CIFAR CNN (``cifar_cnn()``) on ``cifar_batch(32)`` and torchvision ResNet-18
(``resnet18()``) on ``imagenet_batch(4)``, target = top-1 class. Methods: ``lrp_epsilon``
(ε-rule everywhere: xailab, zennit, and Captum, whose default rules are the ε-rule) and
``lrp_epsilon_plus`` (z+ convolutions, ε dense: xailab and zennit). zennit gets the same
canonizers we use (BatchNorm merging; its ResNetCanonizer on ResNet-18). Captum has no
canonizers: it treats BatchNorm with the ε-rule and has no rule for residual additions.

Each row also gives ``cons`` = (sum of input relevance) / (explained logit), averaged over the
images: how much of the logit reaches the input (biases absorb part of it; values far from one,
or of the wrong sign, mean relevance was created or destroyed). xailab checks a model once
(three one-image passes, in the untimed warm-up call) and remembers the result; ``check=False``
(row "xailab check=0") skips it. xailab takes the targets from its own explaining pass (no scoring pass). The
implementations and the floor run in turns, ``--repeat`` rounds, best of each; ``--clock cpu``
times the process's CPU seconds (use with ``--threads 1`` on a shared machine).

    python -m bench.bench_lrp [--quick] [--json out.json]
    python -m bench.bench_lrp --threads 1 --clock cpu --repeat 7
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlus, LayerMapComposite, layer_map_base
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

import xailab
from bench.bench_gradient import floor_work, interleaved
from bench.common import cifar_batch, cifar_cnn, imagenet_batch, resnet18
from bench.harness import (
    Row,
    peak_memory_mb,
    print_table,
    ratio_rows,
    save_json,
)


def _zennit_composite(method: str, resnet: bool) -> Any:
    canonizers = [ResNetCanonizer()] if resnet else [SequentialMergeBatchNorm()]
    if method == "lrp_epsilon_plus":
        return EpsilonPlus(canonizers=canonizers)
    layer_map = [*layer_map_base(1e-6), (Convolution, Epsilon(1e-6)), (nn.Linear, Epsilon(1e-6))]
    return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)


def _zennit(model: nn.Module, x: Tensor, targets: Tensor, method: str, resnet: bool) -> Tensor:
    with Gradient(model=model, composite=_zennit_composite(method, resnet)) as attributor:
        def start(out: Tensor) -> Tensor:
            return torch.zeros_like(out).scatter(1, targets[:, None], out.gather(1, targets[:, None]))

        _, rel = attributor(x.clone(), attr_output=start)
    return rel


def _captum(model: nn.Module, x: Tensor, targets: Tensor) -> Tensor:
    from captum.attr import LRP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LRP(model).attribute(x.clone().requires_grad_(True), target=targets).detach()


def _conservation(rel: Tensor, logits: Tensor, targets: Tensor) -> float:
    score = logits.gather(1, targets[:, None]).squeeze(1)
    return float((rel.flatten(1).sum(1) / score).mean())


def run_case(case: str, model: nn.Module, x: Tensor, *, resnet: bool, repeat: int, clock: str = "wall",
             memory: bool = True) -> list[Row]:
    n = len(x)
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(1)
    floor = floor_work(model, x, n, 0, max(64, n))
    rows: list[Row] = []
    floor_best = float("inf")
    for method in ("lrp_epsilon", "lrp_epsilon_plus"):
        impls: dict[str, Callable[[], Tensor]] = {
            "xailab": lambda method=method: xailab.create(method, model, batch_size=max(64, n)).explain(
                x, target=targets).maps[:, 0],
            "zennit": lambda method=method: _zennit(model, x, targets, method, resnet),
        }
        if method == "lrp_epsilon":
            impls["captum"] = lambda: _captum(model, x, targets)
        else:
            impls["xailab check=0"] = lambda method=method: xailab.create(
                method, model, batch_size=max(64, n), check=False).explain(x, target=targets).maps[:, 0]
        # Captum's LRP runs on its own, after the others: it leaves an ``activations`` attribute
        # (the last run's tensors) on every module, which slowed the runs interleaved with it
        fns: dict[str, Callable[[], Any]] = {**{k: v for k, v in impls.items() if k != "captum"}, "floor": floor}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            secs, last = interleaved(fns, repeat, clock)
            if "captum" in impls:
                more, got = interleaved({"captum": impls["captum"]}, repeat, clock)
                secs.update(more)
                last.update(got)
        floor_best = min(floor_best, secs["floor"])
        for impl in impls:
            if isinstance(last.get(impl), Exception):  # a reference library that cannot run this model
                exc = last[impl]
                rows.append(Row(case, method, impl, float("nan"), extra={"error": f"{type(exc).__name__}: {exc}"[:80]}))
                continue
            peak = None
            if memory:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    peak, _ = peak_memory_mb(impls[impl])
            rows.append(Row(case, method, impl, secs[impl] / n, 1.0, peak,
                            {"cons": _conservation(last[impl], logits, targets)}))
        rows.append(Row(case, method, "floor", secs["floor"] / n, 1.0, extra={"clock": clock}))
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 CIFAR images, 1 ImageNet image, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall seconds, or the process's CPU seconds (use with --threads 1)")
    parser.add_argument("--repeat-resnet", type=int, default=None, help="rounds for ResNet-18 (default --repeat)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--skip", nargs="*", default=[], choices=["cifar", "resnet"])
    parser.add_argument("--json", default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeat = 1 if args.quick else args.repeat
    rows: list[Row] = []
    n_cifar, n_imagenet = (8, 1) if args.quick else (32, 4)
    r_res = 1 if args.quick else (args.repeat_resnet or repeat)
    if "cifar" not in args.skip:
        rows += run_case(f"cifar-cnn x{n_cifar}", cifar_cnn(), cifar_batch(n_cifar), resnet=False, repeat=repeat,
                         clock=args.clock, memory=args.memory)
    if "resnet" not in args.skip:
        rows += run_case(f"resnet18 x{n_imagenet}", resnet18(), imagenet_batch(n_imagenet), resnet=True,
                         repeat=r_res, clock=args.clock, memory=args.memory)
    print_table(rows, "LRP (target: top-1; cons = input relevance sum / logit)")
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
