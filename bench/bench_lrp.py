"""LRP: xailab against zennit's Gradient attributor (and Captum's LRP) on the same model and inputs.

Cases: the CIFAR CNN (``cifar_cnn()``) on ``cifar_batch(32)`` and torchvision ResNet-18
(``resnet18()``) on ``imagenet_batch(4)``, target = top-1 class. Methods: ``lrp_epsilon``
(ε-rule everywhere: xailab, zennit, and Captum, whose default rules are the ε-rule) and
``lrp_epsilon_plus`` (z+ convolutions, ε dense: xailab and zennit). zennit gets the same
canonizers we use (BatchNorm merging; its ResNetCanonizer on ResNet-18). Captum has no
canonizers: it treats BatchNorm with the ε-rule and has no rule for residual additions.

Each row also gives ``cons`` = (sum of input relevance) / (explained logit), averaged over the
images: how much of the logit reaches the input (biases absorb part of it; values far from one,
or of the wrong sign, mean relevance was created or destroyed). xailab's time includes its
per-call model check (two or three one-image passes); ``check=False`` (row "xailab check=0")
skips it. Run with ``OMP_NUM_THREADS=1`` on a shared machine.

    python -m bench.bench_lrp [--quick] [--json out.json]
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
from bench.common import cifar_batch, cifar_cnn, imagenet_batch, resnet18
from bench.harness import (
    Row,
    floor_seconds,
    peak_memory_mb,
    print_table,
    ratio_rows,
    save_json,
    timed,
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


def run_case(case: str, model: nn.Module, x: Tensor, *, resnet: bool, repeat: int) -> list[Row]:
    n = len(x)
    with torch.no_grad():
        logits = model(x)
    targets = logits.argmax(1)
    rows = [Row(case, "floor (fwd+bwd)", "floor", floor_seconds(model, x, n, backward=True) / n, 1.0)]
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
        for impl, fn in impls.items():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    seconds, rel = timed(fn, warmup=1, repeat=repeat)
                    peak, _ = peak_memory_mb(fn)
            except Exception as exc:  # a reference library that cannot run this model
                rows.append(Row(case, method, impl, float("nan"), extra={"error": f"{type(exc).__name__}: {exc}"[:80]}))
                continue
            rows.append(Row(case, method, impl, seconds / n, 1.0, peak,
                            {"cons": _conservation(rel, logits, targets)}))
    return rows


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 CIFAR images, 1 ImageNet image, one repeat")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    rows: list[Row] = []
    n_cifar, n_imagenet = (8, 1) if args.quick else (32, 4)
    rows += run_case(f"cifar-cnn x{n_cifar}", cifar_cnn(), cifar_batch(n_cifar), resnet=False, repeat=repeat)
    rows += run_case(f"resnet18 x{n_imagenet}", resnet18(), imagenet_batch(n_imagenet), resnet=True, repeat=repeat)
    print_table(rows, "LRP (target: top-1; cons = input relevance sum / logit)")
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
