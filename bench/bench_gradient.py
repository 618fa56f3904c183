"""Gradient family against Captum: time, evaluations, the floor; IG's error curve and memory.

For each case (the CIFAR CNN on 32 CIFAR images, ResNet-18 on 4 ImageNet photos) and each
method, xailab and Captum run on the same model, inputs and targets in this process, next to
the *floor*: the forward(+backward) passes the method cannot avoid (``harness.floor_seconds``).
Then (1) IG's mean relative completeness error |delta| / |f(x) - f(b)| against ``n_steps`` for
every rule, with the fewest steps each rule needs for < 1 %, on the CIFAR CNN, on its smooth twin
(SiLU, average pooling) and on the trained CIFAR ResNet-20 when ../shared/data has it; (2) the peak
memory of IG (50 steps, one ResNet-18 image) at two ``batch_size`` values and Captum's default
(each measured in a fresh process, so freed memory cannot hide a peak).

Timing: the implementations of a row and its floor run in turns (``--rounds`` rounds, best of
each), so a change of load on a shared machine hits them alike; ``--clock cpu`` measures the
process's CPU seconds instead of wall seconds (with ``--threads 1``: the work done, much less
sensitive to other processes). One-pass methods (saliency, input x gradient, DeepLIFT) take their
targets from their own forward pass, so their floor has no scoring pass.

    python -m bench.bench_gradient               # full
    python -m bench.bench_gradient --quick       # small sizes, a smoke run
    python -m bench.bench_gradient --threads 1 --samples-resnet 8 --json out.json
    python -m bench.bench_gradient --threads 1 --clock cpu --rounds 7 --skip curve memory \
        --methods saliency input_x_gradient deeplift
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.common import cifar_batch, cifar_cnn, imagenet_batch, resnet18
from bench.harness import (
    Row,
    floor_seconds,
    peak_memory_mb,
    print_table,
    ratio_rows,
    save_json,
)

CIFAR = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.247, 0.243, 0.261)}
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def _black(x: torch.Tensor, space: dict[str, Any]) -> torch.Tensor:
    m, s = torch.tensor(space["mean"]), torch.tensor(space["std"])
    return ((0 - m) / s).reshape(1, -1, 1, 1).expand_as(x).contiguous()


def _methods(steps: int, samples: int, space: dict[str, Any]) -> list[tuple[str, dict[str, Any], Any, float, float]]:
    """(name, xailab params, captum call, gradient passes per image, forward-only passes per image)."""
    import captum.attr as ca

    noise = 0.15  # of the pixel range, i.e. stdevs = 0.15 / std in normalised units (mean over channels)
    stdev = noise / (sum(space["std"]) / len(space["std"]))

    def sal(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.Saliency(m).attribute(x, target=t)

    def ixg(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.InputXGradient(m).attribute(x, target=t)

    def ig(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.IntegratedGradients(m).attribute(x, b, target=t, n_steps=steps, method="gausslegendre",
                                                   internal_batch_size=bs)

    def sg(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.NoiseTunnel(ca.Saliency(m)).attribute(x, nt_type="smoothgrad", nt_samples=samples,
                                                         stdevs=stdev, target=t,
                                                         nt_samples_batch_size=max(1, bs // len(x)))

    def gs(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.GradientShap(m).attribute(x, _bg(x), n_samples=samples, target=t)

    def dl(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.DeepLift(m).attribute(x, b, target=t)

    def dls(m: nn.Module, x: torch.Tensor, b: torch.Tensor, t: torch.Tensor, bs: int) -> Any:
        return ca.DeepLiftShap(m).attribute(x, _bg(x), target=t)

    return [
        ("saliency", {}, sal, 1, 0),
        ("input_x_gradient", {}, ixg, 1, 0),
        ("integrated_gradients", {"n_steps": steps, **space}, ig, steps, 1),
        ("smoothgrad", {"n_samples": samples, "noise_level": noise, **space}, sg, samples, 0),
        ("gradient_shap", {"n_samples": samples}, gs, samples, 0),
        ("deeplift", dict(space), dl, 1, 1),
        ("deeplift_shap", {"n_samples": None, **space}, dls, len(_bg_shape()), len(_bg_shape())),
    ]


def _bg_shape() -> range:
    return range(8)  # the background's size: DeepLIFT-SHAP makes one (baseline, image) pair per image


def _bg(x: torch.Tensor) -> torch.Tensor:
    """Eight background images for GradientSHAP: seeded noise shaped like the inputs."""
    return torch.randn(8, *x.shape[1:], generator=torch.Generator().manual_seed(1))


def floor_work(model: nn.Module, x: torch.Tensor, grad_samples: int, fwd_samples: int,
               batch_size: int) -> Callable[[], None]:
    """The passes a method cannot avoid, as a function to time: ``grad_samples`` forward +
    backward and ``fwd_samples`` forward-only samples in passes of at most ``batch_size``
    (the work of :func:`bench.harness.floor_seconds`, timed here with any clock)."""
    reps = max(1, min(-(-max(grad_samples, fwd_samples, 1) // len(x)), batch_size // max(1, len(x))))
    xb = x.repeat(reps, 1, 1, 1)[:batch_size]

    def run() -> None:
        for samples, backward in ((grad_samples, True), (fwd_samples, False)):
            done = 0
            while done < samples:
                xi = xb[: min(len(xb), samples - done)]
                if backward:
                    xi = xi.detach().requires_grad_(True)
                    torch.autograd.grad(model(xi)[:, 0].sum(), xi)
                else:
                    with torch.no_grad():
                        model(xi)
                done += len(xi)

    return run


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, clock: str = "wall",
                warmup: int = 1) -> tuple[dict[str, float], dict[str, Any]]:
    """Best-of-``rounds`` seconds of each function, run in turns (round-robin), and each's last result.

    ``clock``: ``"wall"`` (perf_counter) or ``"cpu"`` (process CPU time: with one torch thread,
    the work done, little affected by other processes on a shared machine). Failures are kept
    as the exception instead of a result (time ``nan``)."""
    tick = time.process_time if clock == "cpu" else time.perf_counter
    best = {k: float("inf") for k in fns}
    last: dict[str, Any] = {}
    for k, fn in fns.items():
        try:
            for _ in range(warmup):
                last[k] = fn()
        except Exception as e:  # a reference library that cannot run this model
            last[k], best[k] = e, float("nan")
    for _ in range(rounds):
        for k, fn in fns.items():
            if isinstance(last.get(k), Exception):
                continue
            t0 = tick()
            try:
                last[k] = fn()
            except Exception as e:
                last[k], best[k] = e, float("nan")
                continue
            best[k] = min(best[k], tick() - t0)
    return best, last


def bench_case(case: str, model: nn.Module, x: torch.Tensor, space: dict[str, Any], steps: int, samples: int,
               batch_size: int, repeat: int, only: list[str] | None = None, clock: str = "wall") -> list[Row]:
    import xailab
    from xailab.core.registry import METHODS

    with torch.no_grad():
        t = model(x).argmax(1)
    b = _black(x, space)
    floor_seconds(model, x, batch_size, backward=True, batch_size=batch_size)  # warm the allocator
    n = len(x)
    rows: list[Row] = []
    for name, params, captum_fn, grad_passes, fwd_passes in _methods(steps, samples, space):
        if only and name not in only:
            continue
        if name in ("gradient_shap", "deeplift_shap"):
            params = {**params, "background": _bg(x)}
        explainer = xailab.create(name, model, batch_size=batch_size, **params)
        one_pass = METHODS.get(name).one_pass
        fns: dict[str, Callable[[], Any]] = {
            "xailab": lambda e=explainer: e.explain(x, target=t),
            "captum": lambda f=captum_fn: f(model, x, b, t, batch_size),
        }
        if name not in ("deeplift", "deeplift_shap"):  # + the scoring pass a Captum user makes for targets
            # (xailab's one-pass methods read the targets and scores from their own pass, the sampled
            # ones make that pass first: the same output, the logits, as this row)
            def with_scores(f: Any = captum_fn) -> Any:
                with torch.no_grad():
                    tt = model(x).argmax(1)
                return f(model, x, b, tt, batch_size)

            fns["captum+scores"] = with_scores
        # the floor: the gradient passes, the forward-only passes and the scoring pass of methods
        # that need one (one-pass methods read the targets from their own forward pass)
        fns["floor"] = floor_work(model, x, n * grad_passes, n * (fwd_passes + (not one_pass)), batch_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            secs, res = interleaved(fns, max(1, repeat), clock, warmup=1 if repeat > 1 else 0)
        rows.append(Row(case, name, "xailab", secs["xailab"] / n, res["xailab"].evaluations / n,
                        extra={"clock": clock}))
        err = res["captum"] if isinstance(res["captum"], Exception) else None
        rows.append(Row(case, name, "captum", secs["captum"] / n,
                        None if err else grad_passes + fwd_passes * name.startswith("deeplift"),
                        extra={"error": type(err).__name__} if err else {}))  # DeepLift: ResNet's reused ReLU
        if "captum+scores" in fns:
            rows.append(Row(case, name, "captum+scores", secs["captum+scores"] / n, grad_passes + 1))
        rows.append(Row(case, name, "floor", secs["floor"] / n, grad_passes + fwd_passes + (not one_pass)))
    return rows


def completeness_curve(model: nn.Module, x: torch.Tensor, space: dict[str, Any], steps: list[int],
                       batch_size: int) -> dict[str, dict[int, tuple[float, float]]]:
    """Mean and max of |delta| / |f(x) - f(b)| (in %) for each rule and n_steps."""
    import xailab

    out: dict[str, dict[int, tuple[float, float]]] = {}
    b = _black(x, space)
    with torch.no_grad():
        t = model(x).argmax(1, keepdim=True)
        df = (model(x).gather(1, t) - model(b).gather(1, t)).abs()
    for rule in RULES:
        out[rule] = {}
        for n in steps:
            if rule == "riemann_trapezoid" and n < 2:
                continue
            res = xailab.create("integrated_gradients", model, n_steps=n, rule=rule, batch_size=batch_size,
                                **space).explain(x, target=t[:, 0])
            rel = 100 * res.extras["delta"].abs() / df
            out[rule][n] = (float(rel.mean()), float(rel.max()))
    return out


def smooth_twin(model: nn.Module) -> nn.Module:
    """The same network with SiLU for ReLU and average for max pooling: a smooth path integrand."""
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(mod, name, nn.SiLU())
            elif isinstance(child, nn.MaxPool2d):
                setattr(mod, name, nn.AvgPool2d(child.kernel_size, child.stride))
    return model.eval()


def trained_resnet20(n: int) -> tuple[nn.Module, torch.Tensor] | None:
    """The pretrained CIFAR ResNet-20 of ../shared/data and n test images, if both are there."""
    from bench.common import SHARED, _batch, _from_tar

    weights, tar = SHARED / "cifar10-resnet" / "resnet20.safetensors", SHARED / "cifar10-jpg.tar.gz"
    if not (weights.exists() and tar.exists()):
        return None
    from xailab.models import create_model

    model = create_model("resnet20", weights=str(weights)).eval()
    return model, _batch(_from_tar(tar, n, 32, ".jpg"), IMAGENET["mean"], IMAGENET["std"])


def print_curve(curve: dict[str, dict[int, tuple[float, float]]], label: str) -> None:
    steps = sorted({n for c in curve.values() for n in c})
    print(f"\n## IG completeness error, {label}: mean (max) over images of |delta| / |f(x) - f(b)|, %")
    print(f"{'rule':20s}" + "".join(f"{n:>16d}" for n in steps) + "   steps for < 1 % (mean / max)")
    for rule, c in curve.items():
        cells = "".join(f"{c[n][0]:8.3f} ({c[n][1]:5.2f})" if n in c else f"{'-':>16s}" for n in steps)
        need_mean = next((n for n in steps if n in c and c[n][0] < 1), None)
        need_max = next((n for n in steps if n in c and c[n][1] < 1), None)
        print(f"{rule:20s}{cells}   {need_mean} / {need_max}")


def _memory_child(which: str, batch_size: int, steps: int) -> None:
    """Run in a fresh process: peak memory of one IG run on one ResNet-18 image (MiB to stdout)."""
    model, x = resnet18(), imagenet_batch(1)
    for p in model.parameters():
        p.requires_grad_(False)
    b = _black(x, IMAGENET)
    if which == "xailab":
        import xailab

        ig = xailab.create("integrated_gradients", model, n_steps=steps, batch_size=batch_size, **IMAGENET)
        mb, _ = peak_memory_mb(lambda: ig.explain(x, target=1))
    else:
        import captum.attr as ca

        ibs = None if batch_size <= 0 else batch_size
        mb, _ = peak_memory_mb(lambda: ca.IntegratedGradients(model).attribute(
            x, b, target=1, n_steps=steps, internal_batch_size=ibs))
    print(json.dumps({"peak_mb": mb}))


def memory_rows(steps: int, sizes: list[int], threads: int | None) -> list[Row]:
    rows = []
    for which, bs in [*(("xailab", s) for s in sizes), ("captum", 0)]:
        cmd = [sys.executable, "-m", "bench.bench_gradient", "--memory-child", which, str(bs), str(steps)]
        if threads:
            cmd += ["--threads", str(threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        label = f"bs={bs}" if bs > 0 else "internal_batch_size=None"
        rows.append(Row("resnet18 x1", f"ig{steps} memory", which, float("nan"), steps + 2,
                        peak_mb=json.loads(out)["peak_mb"], extra={"setting": label}))
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every part")
    p.add_argument("--steps", type=int, default=50, help="IG steps (both cases)")
    p.add_argument("--samples", type=int, default=50, help="SmoothGrad / GradientSHAP samples, CIFAR case")
    p.add_argument("--samples-resnet", type=int, default=50, help="SmoothGrad / GradientSHAP samples, ResNet")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--skip", nargs="*", default=[], choices=["cifar", "resnet", "curve", "memory"])
    p.add_argument("--methods", nargs="*", default=None, help="only these methods in the timing tables")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall seconds, or the process's CPU seconds (use with --threads 1 on a shared machine)")
    p.add_argument("--rounds", type=int, default=None,
                   help="timing rounds (best of; default 2 CIFAR, 1 ResNet; 1 with --quick)")
    p.add_argument("--rounds-resnet", type=int, default=None, help="rounds for the ResNet case (default --rounds)")
    p.add_argument("--json", default=None, help="write the rows as JSON")
    p.add_argument("--memory-child", nargs=3, metavar=("IMPL", "BS", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]), int(args.memory_child[2]))
        return
    q = args.quick
    n_cifar, n_res = (8, 1) if q else (32, 4)
    steps = 8 if q else args.steps
    samples, samples_res = (4, 4) if q else (args.samples, args.samples_resnet)
    print(f"torch threads: {torch.get_num_threads()}; IG steps {steps}; samples {samples} (CIFAR), "
          f"{samples_res} (ResNet); batch_size {args.batch_size}; clock {args.clock}")
    rows: list[Row] = []
    r_cifar = 1 if q else (args.rounds or 2)
    r_res = 1 if q else (args.rounds_resnet or args.rounds or 1)
    if "cifar" not in args.skip:
        rows += bench_case(f"cifar-cnn x{n_cifar}", cifar_cnn(), cifar_batch(n_cifar), CIFAR, steps, samples,
                           args.batch_size, repeat=r_cifar, only=args.methods, clock=args.clock)
    if "resnet" not in args.skip:
        rows += bench_case(f"resnet18 x{n_res}", resnet18(), imagenet_batch(n_res), IMAGENET, steps,
                           samples_res, args.batch_size, repeat=r_res, only=args.methods, clock=args.clock)
    if rows:
        print_table(rows, "seconds per image, model evaluations per image")
        print("\n## ratios (> 1: xailab faster; floor/xailab: share of the time in unavoidable passes)")
        print("\n".join(ratio_rows(rows)))
    if "curve" not in args.skip:
        n_img, bs = (4 if q else 8), args.batch_size
        grid = [2, 4, 8] if q else [2, 4, 8, 16, 32, 64, 128]
        print_curve(completeness_curve(cifar_cnn(), cifar_batch(n_img), CIFAR, grid, bs),
                    "CIFAR CNN (ReLU, max-pool; random init)")
        print_curve(completeness_curve(smooth_twin(cifar_cnn()), cifar_batch(n_img), CIFAR, grid[:6], bs),
                    "its smooth twin (SiLU, average pool; random init)")
        trained = trained_resnet20(n_img)
        if trained is not None:
            print_curve(completeness_curve(*trained, IMAGENET, grid, bs), "CIFAR ResNet-20 (trained, ReLU)")
    if "memory" not in args.skip:
        mem = memory_rows(8 if q else 50, [8, 32] if q else [16, 64], args.threads)
        print_table(mem, "peak memory of IG on one ResNet-18 image (fresh process each)")
        rows += mem
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
