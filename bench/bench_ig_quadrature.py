"""Integrated Gradients: completeness error against gradient evaluations, fixed rules vs adaptive.

For each case the mean and max over images (top-1 target, black baseline) of the relative
completeness error ``|delta| / |f(x) - f(b)|`` (in %) is printed

* for every fixed rule (left / middle / trapezoid Riemann, Gauss-Legendre) at ``n`` steps: the
  curves, each cell "mean (max)";
* for the adaptive rule (``rule="adaptive"``) at several tolerances: mean and max steps actually
  used per image next to the errors reached (its curve, in (steps, error) points);
* the fewest steps each rule needs for an error < 1 % (mean over images, and for every image),
  and the ratio left-Riemann steps / adaptive steps (the issue's target: >= 3);
* the linear regions the path crosses on ReLU / max-pool networks (activation patterns that
  change between neighbouring nodes of a ``--regions-grid`` grid: a lower bound), which is what
  an exact region-by-region integration would cost, to compare with the adaptive rule's steps;
* the CPU seconds per image of GL at 32 steps and of the adaptive rule at its default tolerance.

Cases: the CIFAR CNN of bench/common.py (ReLU, max-pool) random and, with ``--train-steps``,
briefly trained on CIFAR-10 train images; the trained CIFAR ResNet-20 (../shared/data); and the
smooth twins (SiLU, average pooling) of the CIFAR CNN and of ResNet-20, on CIFAR test images.
"Steps" are gradient evaluations per image (the fixed rules also run one forward pass for the
baseline's score, the adaptive rule gets it from its node at alpha = 0).

    python -m bench.bench_ig_quadrature                  # full (~11 CPU minutes, one thread)
    python -m bench.bench_ig_quadrature --quick          # smoke run
"""

from __future__ import annotations

import argparse
import copy
import io
import sys
import tarfile
import time
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

import xailab
from bench import bench_gradient
from bench.common import SHARED, cifar_batch, cifar_cnn

CIFAR = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.247, 0.243, 0.261)}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
FIXED = ("riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre")
Curve = dict[int, tuple[float, float]]


def _space_change(x: torch.Tensor, src: dict[str, Any], dst: dict[str, Any]) -> torch.Tensor:
    sm, ss = (torch.tensor(src[k]).reshape(-1, 1, 1) for k in ("mean", "std"))
    dm, ds = (torch.tensor(dst[k]).reshape(-1, 1, 1) for k in ("mean", "std"))
    return ((x * ss + sm) - dm) / ds


def smooth_twin(model: nn.Module) -> nn.Module:
    """A copy with SiLU for every ReLU and average for max pooling: a smooth path integrand."""
    return bench_gradient.smooth_twin(copy.deepcopy(model))


def trained_cnn(steps: int, seed: int = 0) -> nn.Module:
    """The CIFAR CNN after ``steps`` Adam steps (batch 64) on CIFAR-10 train images."""
    tar_path = SHARED / "cifar10-jpg.tar.gz"
    classes: dict[str, int] = {}
    imgs, labels = [], []
    with tarfile.open(tar_path) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not (m.isfile() and "train" in parts and m.name.endswith(".jpg")):
                continue
            f = tar.extractfile(m)
            assert f is not None
            imgs.append(np.asarray(Image.open(io.BytesIO(f.read())).convert("RGB"), dtype=np.float32) / 255)
            labels.append(classes.setdefault(parts[-2], len(classes)))
            if len(imgs) >= 64 * steps:
                break
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(CIFAR["mean"]).reshape(-1, 1, 1)) / torch.tensor(CIFAR["std"]).reshape(-1, 1, 1)
    y = torch.tensor(labels)
    model = cifar_cnn().train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def explain(model: nn.Module, x: torch.Tensor, t: torch.Tensor, df: torch.Tensor, space: dict[str, Any],
            bs: int, **kw: Any) -> tuple[torch.Tensor, Any]:
    res = xailab.create("integrated_gradients", model, batch_size=bs, **space, **kw).explain(x, target=t)
    return 100 * res.extras["delta"][:, 0].double().abs() / df, res


def score_gap(model: nn.Module, x: torch.Tensor, t: torch.Tensor, space: dict[str, Any]) -> torch.Tensor:
    m, s = torch.tensor(space["mean"]).reshape(1, -1, 1, 1), torch.tensor(space["std"]).reshape(1, -1, 1, 1)
    black = ((0 - m) / s).expand_as(x)
    with torch.no_grad():
        return (model(x).gather(1, t[:, None]) - model(black).gather(1, t[:, None]))[:, 0].double().abs()


def regions_crossed(model: nn.Module, x: torch.Tensor, space: dict[str, Any], grid: int) -> list[int]:
    """Per image: how many of ``grid`` neighbouring node pairs on the path change the pattern of
    ReLU signs and max-pool winners (a lower bound on the linear regions the path crosses)."""
    m, s = torch.tensor(space["mean"]).reshape(-1, 1, 1), torch.tensor(space["std"]).reshape(-1, 1, 1)
    patterns: list[torch.Tensor] = []

    def relu_hook(_mod: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        patterns.append((inp[0] > 0).flatten(1))

    def pool_hook(mod: Any, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        _, idx = nn.functional.max_pool2d(inp[0], mod.kernel_size, mod.stride, mod.padding, return_indices=True)
        patterns.append(idx.flatten(1))

    handles = [mod.register_forward_hook(relu_hook if isinstance(mod, nn.ReLU) else pool_hook)
               for mod in model.modules() if isinstance(mod, nn.ReLU | nn.MaxPool2d)]
    out = []
    try:
        alpha = torch.linspace(0, 1, grid + 1).reshape(-1, 1, 1, 1)
        for img in x:
            base = (0 - m) / s
            changes = 0
            prev: list[torch.Tensor] | None = None
            for lo in range(0, grid + 1, 128):
                patterns.clear()
                with torch.no_grad():
                    model(base + alpha[lo : lo + 128] * (img - base))
                cur = torch.cat([p.to(torch.int64) for p in patterns], dim=1)
                rows = cur if prev is None else torch.cat([prev[0][None], cur])
                changes += int((rows[1:] != rows[:-1]).any(dim=1).sum())
                prev = [cur[-1]]
            out.append(changes)
    finally:
        for h in handles:
            h.remove()
    return out


def run_case(label: str, model: nn.Module, x: torch.Tensor, space: dict[str, Any], grid: list[int],
             tols: list[float], budget: int, bs: int, regions_grid: int) -> dict[str, Any]:
    with torch.no_grad():
        t = model(x).argmax(1)
    df = score_gap(model, x, t, space)
    curves: dict[str, Curve] = {}
    for rule in FIXED:
        curves[rule] = {}
        for n in grid:
            rel, _ = explain(model, x, t, df, space, bs, rule=rule, n_steps=n)
            curves[rule][n] = (float(rel.mean()), float(rel.max()))
    adaptive: list[tuple[float, float, float, float, float]] = []
    for tol in tols:
        rel, res = explain(model, x, t, df, space, bs, rule="adaptive", n_steps=budget, tol=tol)
        steps = res.extras["steps"][:, 0]
        adaptive.append((tol, float(steps.mean()), float(steps.max()), float(rel.mean()), float(rel.max())))
    print(f"\n## {label}: {len(x)} images, |f(x) - f(b)| mean {float(df.mean()):.3g}")
    print(f"{'rule':20s}" + "".join(f"{n:>15d}" for n in grid) + "   steps for < 1 % (mean / every image)")
    need: dict[str, tuple[int | None, int | None]] = {}
    for rule, c in curves.items():
        cells = "".join(f"{c[n][0]:7.3f} ({c[n][1]:5.2f})" for n in grid)
        need[rule] = (next((n for n in grid if c[n][0] < 1), None), next((n for n in grid if c[n][1] < 1), None))
        print(f"{rule:20s}{cells}   {need[rule][0]} / {need[rule][1]}")
    print(f"adaptive (budget {budget}): tol -> steps mean (max), error % mean (max)")
    for tol, s_mean, s_max, e_mean, e_max in adaptive:
        print(f"    tol {100 * tol:5.2f} %   steps {s_mean:7.1f} ({s_max:4.0f})   error {e_mean:7.3f} ({e_max:5.2f})")
    at1 = next(a for a in adaptive if abs(a[0] - 0.01) < 1e-12)
    left = need["riemann_left"]
    for what, k, steps in (("mean", 0, at1[1]), ("every image", 1, at1[2])):
        ok = (at1[3] if k == 0 else at1[4]) < 1
        lhs = left[k]
        ratio = f"{lhs / steps:.1f}x fewer" if lhs and ok else ("left Riemann does not reach it by "
                                                               f"{grid[-1]}" if ok else "adaptive misses it")
        print(f"< 1 % ({what}): left Riemann {lhs}, adaptive {steps:.1f} steps -> {ratio}")
    out: dict[str, Any] = {"curves": curves, "adaptive": adaptive, "need": need}
    if regions_grid and any(isinstance(m, nn.ReLU) for m in model.modules()):
        crossed = regions_crossed(model, x, space, regions_grid)
        print(f"linear regions crossed (pattern changes on a {regions_grid}-step grid, a lower bound): "
              f"mean {np.mean(crossed):.0f}, min {min(crossed)}, max {max(crossed)}; an exact "
              "region-by-region integral needs at least that many evaluations")
        out["regions"] = crossed
    for name, kw in (("gausslegendre 32", {"rule": "gausslegendre", "n_steps": 32}),
                     ("adaptive tol 1 %", {"rule": "adaptive", "n_steps": budget})):
        c0 = time.process_time()
        explain(model, x, t, df, space, bs, **kw)
        print(f"CPU seconds per image, {name}: {(time.process_time() - c0) / len(x):.4f}")
    sys.stdout.flush()
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--grid", default="4,8,16,32,64,128,256,512", help="fixed rules' n_steps")
    p.add_argument("--tols", default="0.1,0.03,0.01,0.003", help="adaptive tolerances (0.01 required)")
    p.add_argument("--budget", type=int, default=512, help="adaptive rule's n_steps (step budget)")
    p.add_argument("--train-steps", type=int, default=300, help="Adam steps for the trained CIFAR CNN (0: skip)")
    p.add_argument("--regions-grid", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.grid, a.budget, a.train_steps, a.regions_grid = 2, "4,8,16", 32, 0, 64
    torch.set_num_threads(a.threads)
    grid = [int(v) for v in a.grid.split(",")]
    tols = sorted({float(v) for v in a.tols.split(",")} | {0.01}, reverse=True)
    x = cifar_batch(a.images)
    print(f"threads {torch.get_num_threads()}, batch_size {a.batch_size}, images {len(x)}, black baseline, top-1")
    cases: list[tuple[str, nn.Module, torch.Tensor, dict[str, Any]]] = [
        ("CIFAR CNN, random (ReLU, max-pool)", cifar_cnn(), x, CIFAR),
        ("CIFAR CNN smooth twin, random (SiLU, avg-pool)", smooth_twin(cifar_cnn()), x, CIFAR),
    ]
    if a.train_steps and (SHARED / "cifar10-jpg.tar.gz").exists():
        c0 = time.process_time()
        cnn = trained_cnn(a.train_steps)
        print(f"trained the CIFAR CNN for {a.train_steps} steps in {time.process_time() - c0:.0f} CPU s")
        cases += [(f"CIFAR CNN, trained {a.train_steps} steps (ReLU, max-pool)", cnn, x, CIFAR),
                  ("its smooth twin (same weights, SiLU, avg-pool)", smooth_twin(cnn), x, CIFAR)]
    weights = SHARED / "cifar10-resnet" / "resnet20.safetensors"
    if weights.exists():
        from xailab.models import load_model

        r20 = load_model("resnet20", weights).eval()
        xr = _space_change(x, CIFAR, IMAGENET)
        cases += [("ResNet-20, trained (ReLU)", r20, xr, IMAGENET),
                  ("ResNet-20 smooth twin (trained weights, SiLU)", smooth_twin(r20), xr, IMAGENET)]
    for label, model, xi, space in cases:
        run_case(label, model, xi, space, grid, tols, a.budget, a.batch_size, a.regions_grid)


if __name__ == "__main__":
    main(sys.argv[1:])
