"""Rank stability of LIME / KernelSHAP against model evaluations: xailab auto and fixed, lime, shap, Captum.

For each model (the CIFAR CNN of the studies, random weights; the trained CIFAR ResNet-20 when
../shared/data has it; ResNet-18 at 224x224, random weights) every implementation explains the
same images, top-1 target, on the same superpixels (SLIC as xailab picks them, passed to all as
a mask) with the same hidden colour (each superpixel's mean). For each setting it records the
model evaluations per image and

* ``rho_seeds``: the mean over images of Spearman's rho of the superpixel weights between seed 1
  and seed 2 (what a user sees when running twice);
* ``rho_ref``: the mean rho against a reference with ``--ref-samples`` (8,000) samples of
  xailab's same method (LIME's weights for the LIME family, Shapley values for KernelSHAP's).

Settings: xailab ``num_samples="auto"`` at several ``tol`` (for KernelSHAP also with
``shrinkage="edges"``, "xailab auto+eb"), xailab fixed (paired) at several
budgets, lime's ``LimeImageExplainer``, shap's ``KernelExplainer`` (``l1_reg=False``) and
Captum's ``Lime`` / ``KernelShap`` at several budgets. The closing table gives, per model and
implementation, the evaluations at which ``rho_seeds`` reaches lime's at 1,000 samples
(log-linear interpolation between measured budgets; ``>N`` if not reached). Evaluation counts do
not depend on the machine's load; CPU seconds of this process (one torch thread) are printed
beside them.

    python -m bench.bench_stability                     # ~30-60 min on one free core
    python -m bench.bench_stability --quick             # a smoke run (2 images, small budgets)
    python -m bench.bench_stability --models cifar_cnn --json stability.json
    python -m bench.bench_stability --models resnet18 --families lime --skip captum --tols 0.05 \
        --budgets 250 --ref-budgets 1000
    python -m bench.bench_stability --models efficientnet_lite0 --families lime --skip captum \
        --tols 0.05,0.03 --budgets 500,1000 --ref-budgets 1000     # the ResNet study's photos

``--resnet18-images`` / ``--resnet18-ref-samples`` also set the photos and reference of
EfficientNet-Lite0 (pretrained, from its PyPI wheel).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import xailab
from bench.bench_perturbation import lime_package, resnet20, shap_kernel
from bench.common import cifar_batch, cifar_cnn, imagenet_batch, resnet18
from xailab.methods.perturbation.segmentation import segment, segmentation_params, superpixel_fill

# weights [N, S] per image (list) and evaluations per image
Run = Callable[[nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor], int, int], tuple[list[np.ndarray], float]]


def per_segment(attr: torch.Tensor, seg: torch.Tensor) -> np.ndarray:
    """A map painted superpixel by superpixel back to one value per superpixel."""
    s = int(seg.max()) + 1
    first = torch.zeros(s, dtype=torch.long).scatter_(0, seg.reshape(-1).flip(0),
                                                      torch.arange(seg.numel()).flip(0))
    return attr.reshape(-1)[first].double().numpy()


def xailab_run(method: str, num_samples: int | str, tol: float = 0.05, max_samples: int = 4000,
               **extra: Any) -> Run:
    def run(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], seed: int,
            bs: int) -> tuple[list[np.ndarray], float]:
        kw: dict[str, Any] = {"num_samples": num_samples, **extra}
        if num_samples == "auto":
            kw.update(tol=tol, max_samples=max_samples)
        res = xailab.create(method, m, segmentation=torch.stack(segs), seed=seed, batch_size=bs, **kw).explain(
            x, target=t)
        k = res.extras["n_segments"]
        return ([res.extras["weights"][i, 0, : int(k[i])].numpy() for i in range(len(x))],
                (res.evaluations - len(x)) / len(x))

    return run


def lime_run(n: int) -> Run:
    def run(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], seed: int,
            bs: int) -> tuple[list[np.ndarray], float]:
        out = []
        for i, exp in enumerate(lime_package(m, x, t, segs, n, bs, seed=seed)):
            w = np.zeros(int(segs[i].max()) + 1)
            for f, v in exp.local_exp[int(t[i])]:
                w[f] = v
            out.append(w)
        return out, float(n)

    return run


def shap_run(n: int) -> Run:
    def run(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], seed: int,
            bs: int) -> tuple[list[np.ndarray], float]:
        vals = shap_kernel(True, seed)(m, x, t, segs, n, bs)
        return [np.asarray(v).reshape(-1) for v in vals], float(n)

    return run


def captum_run(method: str, n: int) -> Run:
    def run(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], seed: int,
            bs: int) -> tuple[list[np.ndarray], float]:
        from captum._utils.models.linear_model import SkLearnRidge
        from captum.attr import KernelShap, Lime
        from captum.attr._core.lime import get_exp_kernel_similarity_function

        if method == "lime":
            algo: Any = Lime(m, interpretable_model=SkLearnRidge(alpha=1.0),
                             similarity_func=get_exp_kernel_similarity_function("cosine", 0.25))
        else:
            algo = KernelShap(m)
        torch.manual_seed(seed)
        out = []
        for i in range(len(x)):
            fill = superpixel_fill(x[i], segs[i], int(segs[i].max()) + 1, None)[None]
            a = algo.attribute(x[i : i + 1], baselines=fill, target=int(t[i]), n_samples=n,
                               feature_mask=segs[i][None, None].expand_as(x[i : i + 1]), perturbations_per_eval=bs)
            out.append(per_segment(a[0, 0], segs[i]))
        return out, float(n)

    return run


def efficientnet_lite0() -> nn.Module:
    from xailab.models import create_model

    return create_model("efficientnet_lite0", pretrained=True).eval()


def photo_batch(n: int) -> torch.Tensor:
    """ImageNet photos in EfficientNet-Lite0's preprocessing ``(x * 255 - 127) / 128``."""
    x = imagenet_batch(n) * torch.tensor((0.229, 0.224, 0.225))[:, None, None] + torch.tensor(
        (0.485, 0.456, 0.406))[:, None, None]
    return (x * 255 - 127) / 128


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def settings(family: str, a: argparse.Namespace) -> list[tuple[str, str, Run]]:
    """``(impl, setting, run)`` for one family (``lime`` or ``kernel_shap``)."""
    budgets = [int(n) for n in a.budgets.split(",")]
    tols = [float(v) for v in a.tols.split(",")]
    refs = [int(n) for n in a.ref_budgets.split(",")]
    out: list[tuple[str, str, Run]] = [("xailab auto", f"tol={tol}", xailab_run(family, "auto", tol, a.max_samples))
                                       for tol in tols]
    if family == "kernel_shap":  # empirical-Bayes shrinkage toward the edge screen
        out += [("xailab auto+eb", f"tol={tol}", xailab_run(family, "auto", tol, a.max_samples, shrinkage="edges"))
                for tol in tols]
    out += [("xailab fixed", str(n), xailab_run(family, n)) for n in budgets]
    if family == "lime":
        out += [("lime", str(n), lime_run(n)) for n in refs]
        out += [("captum", str(n), captum_run("lime", n)) for n in refs]
    else:
        out += [("shap", str(n), shap_run(n)) for n in refs]
        out += [("captum", str(n), captum_run("kernel_shap", n)) for n in refs]
    return out


def measure(model: nn.Module, x: torch.Tensor, label: str, a: argparse.Namespace,
            ref_samples: int) -> list[dict[str, Any]]:
    skip = {s for s in a.skip.split(",") if s}
    bs = a.batch_size
    with torch.no_grad():
        t = model(x).argmax(1)
    params = segmentation_params("slic", *x.shape[-2:])
    segs = [segment(img, "slic", params) for img in x]
    rows: list[dict[str, Any]] = []
    for family in a.families.split(","):
        ref = xailab_run(family, ref_samples)(model, x, t, segs, 0, bs)[0] if ref_samples else None
        for impl, setting, run in settings(family, a):
            if impl in skip:
                continue
            cpu0 = time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                (w1, ev1), (w2, ev2) = run(model, x, t, segs, 1, bs), run(model, x, t, segs, 2, bs)
            cpu = (time.process_time() - cpu0) / (2 * len(x))
            row = {"model": label, "family": family, "impl": impl, "setting": setting,
                   "evaluations": (ev1 + ev2) / 2, "cpu_s": cpu,
                   "rho_seeds": float(np.mean([spearman(a, b) for a, b in zip(w1, w2, strict=True)])),
                   "rho_ref": float(np.mean([spearman(a, b) for a, b in zip(w1, ref, strict=True)])) if ref else None}
            rows.append(row)
            print(f"{label:10s} {family:12s} {impl:13s} {setting:9s} {row['evaluations']:8.1f} "
                  f"{row['rho_seeds']:9.3f} {row['rho_ref'] if ref else float('nan'):8.3f} {cpu:8.2f}", flush=True)
    return rows


def evaluations_to_reach(curve: list[dict[str, Any]], bar: float) -> str:
    """Evaluations at which ``rho_seeds`` reaches ``bar`` (log-linear between measured points)."""
    pts = sorted((r["evaluations"], r["rho_seeds"]) for r in curve)
    if not pts:
        return "-"
    if pts[0][1] >= bar:
        return f"<={pts[0][0]:.0f}"
    for (e0, r0), (e1, r1) in itertools.pairwise(pts):
        if r1 >= bar > r0:
            f = (bar - r0) / (r1 - r0)
            return f"{math.exp(math.log(e0) + f * (math.log(e1) - math.log(e0))):.0f}"
    return f">{pts[-1][0]:.0f}"


def summary(rows: list[dict[str, Any]]) -> None:
    print("\n## Evaluations per image to reach the seed-to-seed rho of lime at 1,000 samples")
    for label in dict.fromkeys(r["model"] for r in rows):
        bar_rows = [r for r in rows if r["model"] == label and r["impl"] == "lime" and r["setting"] == "1000"]
        if not bar_rows:
            continue
        bar = bar_rows[0]["rho_seeds"]
        print(f"{label}: lime@1000 rho_seeds = {bar:.3f}")
        for family in dict.fromkeys(r["family"] for r in rows):
            for impl in dict.fromkeys(r["impl"] for r in rows if r["family"] == family):
                curve = [r for r in rows if r["model"] == label and r["family"] == family and r["impl"] == impl]
                if curve:
                    print(f"  {family:12s} {impl:13s} {evaluations_to_reach(curve, bar):>8s}")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 images, small budgets, no 8,000 reference")
    p.add_argument("--models", default="cifar_cnn,resnet20,resnet18",
                   help="comma-separated subset (also: efficientnet_lite0)")
    p.add_argument("--images", type=int, default=8, help="images of the CIFAR models")
    p.add_argument("--resnet18-images", type=int, default=1)
    p.add_argument("--resnet18-ref-samples", type=int, default=0, help="ResNet-18's reference (0: none)")
    p.add_argument("--ref-samples", type=int, default=8000, help="the reference's samples (0: none)")
    p.add_argument("--skip", default="", help="implementations to leave out, e.g. captum,shap")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--families", default="lime,kernel_shap")
    p.add_argument("--ref-budgets", default="250,1000", help="samples of lime, shap and Captum")
    p.add_argument("--budgets", default="125,250,500,1000", help="samples of xailab fixed")
    p.add_argument("--tols", default="0.1,0.06,0.04,0.025", help="tol of xailab auto")
    p.add_argument("--max-samples", type=int, default=4000, help="max_samples of xailab auto")
    p.add_argument("--json", help="write the rows as JSON")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.resnet18_images, a.ref_samples, a.resnet18_ref_samples = 2, 1, 0, 0
        a.budgets, a.tols = "100,250", "0.1,0.05"
    torch.set_num_threads(1)
    with open("/proc/loadavg") as fh:
        print(f"threads: 1, load average: {fh.read().split()[:3]}")
    print(f"{'model':10s} {'family':12s} {'impl':13s} {'setting':9s} {'evals':>8s} {'rho_seeds':>9s} "
          f"{'rho_ref':>8s} {'cpu_s/img':>8s}")
    rows: list[dict[str, Any]] = []
    for name in a.models.split(","):
        if name == "cifar_cnn":
            rows += measure(cifar_cnn(), cifar_batch(a.images), name, a, a.ref_samples)
        elif name == "resnet20" and (trained := resnet20()) is not None:
            rows += measure(trained[0], trained[1][: a.images], name, a, a.ref_samples)
        elif name == "resnet18":
            rows += measure(resnet18(), imagenet_batch(a.resnet18_images), name, a, a.resnet18_ref_samples)
        elif name == "efficientnet_lite0":  # the ResNet study's photo model, pretrained (PyPI wheel)
            rows += measure(efficientnet_lite0(), photo_batch(a.resnet18_images), name, a, a.resnet18_ref_samples)
    summary(rows)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
