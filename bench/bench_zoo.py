"""The zoo's hook-friendly models against plain forwards with the same weights.

The zoo routes every residual sum through an :class:`~xailab.models.layers.Add` module (so
DeepLIFT and LRP can hook it). That costs a ``torch.stack`` per block; this benchmark times it.
Rows: the zoo ResNet-20 against the same network with ``out + shortcut`` written in ``forward``
("plain"), and the zoo ResNet-18 against torchvision's ``resnet18`` with the same weights;
forward (no grad) and forward + backward, on the same NCHW batch. Outputs are checked equal
before anything is timed. ``ratio`` = reference seconds / zoo seconds (1.0 = no cost).

    python -m bench.bench_zoo [--quick] [--threads 1] [--clock cpu] [--rounds 7]
"""

from __future__ import annotations

import argparse
import copy
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from bench.bench_gradient import interleaved
from bench.common import cifar_batch, imagenet_batch


def _plain_forward(block: nn.Module, x: Tensor) -> Tensor:
    out = block.bn2(block.conv2(block.relu1(block.bn1(block.conv1(x)))))
    return block.relu2(out + block.shortcut(x))


def plain_resnet20(model: nn.Module) -> nn.Module:
    """A copy of the zoo ResNet-20 whose blocks add with ``+`` (no ``Add`` module, no stack)."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if type(m).__name__ == "BasicBlock":
            m.forward = types.MethodType(_plain_forward, m)  # type: ignore[method-assign]
    return twin


def pairs(quick: bool) -> list[tuple[str, nn.Module, nn.Module, Tensor]]:
    """(case, zoo model, reference with the same weights, input batch) for each case."""
    from xailab.models import create_model
    from xailab.models.torchvision_zoo import hook_friendly

    torch.manual_seed(0)
    r20 = create_model("resnet20").eval()
    out = [("resnet20 x64", r20, plain_resnet20(r20), cifar_batch(16 if quick else 64))]
    import torchvision

    tv = torchvision.models.resnet18(weights=None).eval()
    zoo18 = hook_friendly(copy.deepcopy(tv)).eval()  # hook_friendly rebuilds the blocks it is given
    out.append(("resnet18 224 x4", zoo18, tv, imagenet_batch(2 if quick else 4)))
    return out


def _forward(model: nn.Module, x: Tensor) -> Callable[[], Any]:
    def run() -> Tensor:
        with torch.no_grad():
            return model(x)
    return run


def _backward(model: nn.Module, x: Tensor) -> Callable[[], Any]:
    def run() -> Tensor:
        xi = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model(xi).max(1).values.sum(), xi)
        return g
    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{'case':18s} {'pass':10s} {'zoo s':>9s} {'ref s':>9s} {'ratio':>6s}  max|zoo-ref|/max|ref|")
    for case, zoo, ref, x in pairs(args.quick):
        with torch.no_grad():
            a, b = zoo(x), ref(x)
        diff = float((a - b).abs().max() / b.abs().max())
        for name, make in (("forward", _forward), ("fwd+bwd", _backward)):
            best, _ = interleaved({"zoo": make(zoo, x), "ref": make(ref, x)},
                                  rounds=2 if args.quick else args.rounds, clock=args.clock)
            print(f"{case:18s} {name:10s} {best['zoo']:9.4f} {best['ref']:9.4f} "
                  f"{best['ref'] / best['zoo']:6.2f}  {diff:.1e}")


if __name__ == "__main__":
    main()
