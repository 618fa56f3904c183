"""Perturbation family against Captum, lime and shap: time, evaluations, the floor; stability curves.

Part 1, speed. For each case (the CIFAR CNN on 32 CIFAR images, ResNet-18 on one ImageNet photo)
and each method (occlusion, LIME, KernelSHAP, RISE), xailab and the reference implementations run
on the same model, images, targets (top-1) and superpixels (SLIC as xailab picks it), in this
process: Captum's Occlusion / Lime / KernelShap, lime's LimeImageExplainer, and shap's
KernelExplainer with the masking function of shap's image example (a loop over samples and
superpixels, ``shap``) or with a vectorised one written for this benchmark (``shap-vec``). Every
implementation gets the same number of model evaluations per image and the same most rows per
forward pass (``--batch-size``). Next to them the *floor*: ``harness.floor_seconds`` of as many
forward passes (``backward=False``) on the clean images. The references go image by image, so
their seconds per image are measured on the first ``--ref-images`` images; xailab explains the
whole batch (its copies of several images share forward passes). Each figure is the best of
``--rounds`` interleaved runs, in wall seconds and in CPU seconds of this process (exact with
the default ``--threads 1``, whatever else loads a shared machine). ResNet-18 runs with
``--resnet-samples`` (200) samples and is also printed scaled to 1,000.

Part 2, stability: the mean Spearman rank correlation between the superpixel weights of two seeds,
against the number of samples, for the plain sampler (lime's / Captum's scheme) and xailab's
default paired sampler, on the CIFAR CNN and, when ../shared/data has it, the trained CIFAR
ResNet-20 (a trained model's score is far less linear in the superpixels than a random one's).

    python -m bench.bench_perturbation                 # full (~12 + ~20 minutes on 1 free core)
    python -m bench.bench_perturbation --quick         # small sizes, a smoke run
    python -m bench.bench_perturbation --no-stability --methods lime,kernel_shap --threads 2
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import xailab
from bench.common import SHARED, cifar_batch, cifar_cnn, imagenet_batch, in_layout, resnet18
from bench.harness import Row, floor_seconds, print_table, ratio_rows, save_json
from xailab.methods.perturbation.segmentation import segment, segmentation_params, superpixel_fill

Ref = Callable[[nn.Module, torch.Tensor, torch.Tensor, list[torch.Tensor], int, int], Any]


# -- the references, one image at a time ---------------------------------------------------------------
def _fills(x: torch.Tensor, segs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([superpixel_fill(x[i], segs[i], int(segs[i].max()) + 1, None) for i in range(len(x))])


def captum_occlusion(window: tuple[int, int], stride: tuple[int, int]) -> Ref:
    def run(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], n: int, bs: int) -> Any:
        from captum.attr import Occlusion

        return Occlusion(m).attribute(x, sliding_window_shapes=(x.shape[1], *window), strides=(1, *stride),
                                      baselines=0.0, target=t.tolist(), perturbations_per_eval=max(1, bs // len(x)))

    return run


def captum_lime(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], n: int, bs: int) -> Any:
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    lime = Lime(m, interpretable_model=SkLearnRidge(alpha=1.0),
                similarity_func=get_exp_kernel_similarity_function("cosine", 0.25))
    fills = _fills(x, segs)
    return [lime.attribute(x[i : i + 1], baselines=fills[i : i + 1], target=int(t[i]), n_samples=n,
                           feature_mask=segs[i][None, None].expand_as(x[i : i + 1]), perturbations_per_eval=bs)
            for i in range(len(x))]


def captum_kernel_shap(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], n: int,
                       bs: int) -> Any:
    from captum.attr import KernelShap

    ks = KernelShap(m)
    fills = _fills(x, segs)
    return [ks.attribute(x[i : i + 1], baselines=fills[i : i + 1], target=int(t[i]), n_samples=n,
                         feature_mask=segs[i][None, None].expand_as(x[i : i + 1]), perturbations_per_eval=bs)
            for i in range(len(x))]


def lime_package(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], n: int, bs: int,
                 seed: int = 0) -> Any:
    """lime's ``LimeImageExplainer`` on our superpixels, seeded with ``seed``: one explanation per image."""
    from lime import lime_image

    lime_image.tqdm = lambda rows, **kw: rows  # no progress bar per image

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return m(in_layout(torch.from_numpy(batch).permute(0, 3, 1, 2))).numpy()  # the bench's layout

    out = []
    for i in range(len(x)):
        seg = segs[i].numpy()
        explainer = lime_image.LimeImageExplainer(random_state=seed)
        out.append(explainer.explain_instance(
            x[i].permute(1, 2, 0).numpy().copy(), classifier_fn, labels=(int(t[i]),), top_labels=None,
            num_samples=n, batch_size=bs, segmentation_fn=lambda _img, seg=seg: seg, random_seed=seed))
    return out


def shap_kernel(vectorised: bool, seed: int = 0) -> Ref:
    """shap's KernelExplainer on superpixels, ``f(z)`` masking as in shap's image example
    (a loop over samples and superpixels in numpy) or with one vectorised torch ``where``."""

    def run(m: nn.Module, x: torch.Tensor, t: torch.Tensor, segs: list[torch.Tensor], n: int, bs: int) -> Any:
        import shap

        fills = _fills(x, segs)
        out = []
        for i in range(len(x)):
            seg, s = segs[i], int(segs[i].max()) + 1
            image, fill, labels = x[i].permute(1, 2, 0).numpy(), fills[i].permute(1, 2, 0).numpy(), seg.numpy()

            def masked(z: np.ndarray, i: int = i, seg: torch.Tensor = seg, image: np.ndarray = image,
                       fill: np.ndarray = fill, labels: np.ndarray = labels) -> torch.Tensor:
                if vectorised:
                    keep = torch.from_numpy(np.asarray(z) > 0.5)[:, seg][:, None]
                    return in_layout(torch.where(keep, x[i], fills[i]))
                batch = np.zeros((len(z), *image.shape))
                for row in range(len(z)):
                    batch[row] = image
                    for j in range(z.shape[1]):
                        if z[row, j] == 0:
                            batch[row][labels == j] = fill[labels == j]
                return in_layout(torch.from_numpy(batch).permute(0, 3, 1, 2).float())

            def f(z: np.ndarray, i: int = i, masked: Callable[[np.ndarray], torch.Tensor] = masked) -> np.ndarray:
                scores = []
                with torch.no_grad():
                    for lo in range(0, len(z), bs):
                        scores.append(m(masked(z[lo : lo + bs]))[:, int(t[i])])
                return torch.cat(scores).numpy()

            np.random.seed(seed)
            explainer = shap.KernelExplainer(f, np.zeros((1, s)))
            out.append(explainer.shap_values(np.ones((1, s)), nsamples=n - 2, l1_reg=False, silent=True))
        return out

    return run


# -- part 1: speed ------------------------------------------------------------------------------------
def speed(case: str, model: nn.Module, x: torch.Tensor, samples: int, masks: int, bs: int, ref_images: int,
          rounds: int, note: str = "", methods: tuple[str, ...] = (), variant_samples: int = 0) -> list[Row]:
    """Seconds per image of xailab, the floor and the references: best of ``rounds`` interleaved runs.

    Interleaving (xailab, floor, references; again) and keeping each one's best makes the
    comparison robust to other jobs loading the machine for a while; the CPU seconds of this
    process (``extra["cpu_s"]``) are robust to it by construction (exact with ``--threads 1``).
    LIME and KernelSHAP also run as ``xailab-nofold`` (the model's own BatchNorm layers, no
    folded copy) and as ``xailab-N`` with ``variant_samples`` samples (the equal-stability budget).
    """
    rows: list[Row] = []
    with torch.no_grad():
        t = model(x).argmax(1)
    h, w = x.shape[-2:]
    seg_params = segmentation_params("slic", h, w)
    segs = [segment(img, "slic", seg_params) for img in x]
    occ = xailab.create("occlusion", model)
    window, stride, positions = occ.resolve(h, w)
    xr, tr, sr = x[:ref_images], t[:ref_images], segs[:ref_images]
    plan: list[tuple[str, dict[str, Any], list[tuple[str, Ref]]]] = [
        ("occlusion", {}, [("captum", captum_occlusion(window, stride))]),
        ("lime", {"num_samples": samples, "segmentation": torch.stack(segs)},
         [("captum", captum_lime), ("lime", lime_package)]),
        ("kernel_shap", {"num_samples": samples, "segmentation": torch.stack(segs)},
         [("captum", captum_kernel_shap), ("shap", shap_kernel(False)), ("shap-vec", shap_kernel(True))]),
        ("rise", {"n_masks": masks}, []),
    ]
    for name, params, refs in plan:
        if methods and name not in methods:
            continue
        explainer = xailab.create(name, model, batch_size=bs, **params)
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}

        def keep(impl: str, seconds: tuple[float, float], n: int, wall: dict[str, float] = wall,
                 cpu: dict[str, float] = cpu) -> None:
            wall[impl] = min(wall.get(impl, float("inf")), seconds[0] / n)
            cpu[impl] = min(cpu.get(impl, float("inf")), seconds[1] / n)

        evals = 0.0
        res = None
        variants: dict[str, Any] = {}
        if name in ("lime", "kernel_shap") and variant_samples:
            # the same method at the samples that give the reference's stability (paired sampling)
            variants[f"xailab-{variant_samples}"] = xailab.create(name, model, batch_size=bs,
                                                                   **{**params, "num_samples": variant_samples})
        if name in ("lime", "kernel_shap"):
            variants["xailab-nofold"] = xailab.create(name, model, batch_size=bs, fold_batchnorm=False, **params)
        for _ in range(rounds):
            seconds, res = measure(lambda e=explainer: e.explain(x, target=t))
            keep("xailab", seconds, len(x))
            for impl, other in variants.items():
                seconds, _ = measure(functools.partial(other.explain, x, target=t))
                keep(impl, seconds, len(x))
            evals = res.evaluations / len(x)
            n_floor = round(evals * len(xr))
            seconds, _ = measure(lambda n=n_floor: floor_seconds(model, xr, n, backward=False, batch_size=bs))
            keep("floor", seconds, len(xr))
            for impl, fn in refs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    seconds, _ = measure(lambda fn=fn: fn(model, xr, tr, sr, samples, bs))
                keep(impl, seconds, len(xr))
        per_ref = float(positions if name == "occlusion" else samples)
        added: list[Row] = []
        for impl in wall:
            ev = evals if impl in ("xailab", "floor", "xailab-nofold") else per_ref
            if impl.startswith("xailab-") and impl[7:].isdigit():
                ev = float(impl[7:])
            extra: dict[str, Any] = {"cpu_s": cpu[impl]}
            if impl == "xailab":
                extra["floor_ratio"] = wall["xailab"] / wall["floor"]
                extra["cpu_floor_ratio"] = cpu["xailab"] / cpu["floor"]
                if res is not None and "n_segments" in res.extras:
                    extra["superpixels"] = float(res.extras["n_segments"].double().mean())
                if note:
                    extra["note"] = note
            added.append(Row(case, name, impl, wall[impl], ev, extra=extra))
        rows += added
        print_table(added)
        sys.stdout.flush()
    return rows


def measure(fn: Callable[[], Any]) -> tuple[tuple[float, float], Any]:
    """``((wall seconds, CPU seconds of this process), fn())``."""
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = fn()
    return (time.perf_counter() - wall0, time.process_time() - cpu0), out


def variant_ratios(rows: list[Row]) -> list[str]:
    """'reference / xailab-N' for the equal-stability rows (``xailab-N``, N samples)."""
    out = []
    for v in rows:
        if not (v.impl.startswith("xailab-") and v.impl[7:].isdigit()):
            continue
        for r in rows:
            if r.case == v.case and r.method == v.method and not r.impl.startswith("xailab"):
                out.append(f"{v.method:24s} {v.case:18s} {r.impl:12s} ratio ({r.impl}/{v.impl}) = "
                           f"{r.seconds_per_image / v.seconds_per_image:.2f}")
    return out


def cpu_rows(rows: list[Row]) -> list[Row]:
    """The same rows with CPU seconds per image in place of wall seconds."""
    return [Row(r.case, r.method, r.impl, r.extra["cpu_s"], r.evaluations_per_image) for r in rows]


# -- part 2: stability ----------------------------------------------------------------------------------
def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def stability(model: nn.Module, x: torch.Tensor, method: str, sampler: str, n: int, bs: int) -> float:
    """Mean over images of the Spearman correlation of superpixel weights between seeds 1 and 2."""
    res = [xailab.create(method, model, num_samples=n, sampler=sampler, seed=s, batch_size=bs).explain(x)
           for s in (1, 2)]
    rhos = []
    for i in range(len(x)):
        k = int(res[0].extras["n_segments"][i])
        rhos.append(spearman(res[0].extras["weights"][i, 0, :k], res[1].extras["weights"][i, 0, :k]))
    return float(np.mean(rhos))


def shap_stability(model: nn.Module, x: torch.Tensor, n: int) -> float:
    """The same measure for shap's KernelExplainer (its own sampling; seeds 1 and 2; xailab's
    superpixels and fill), the reference the KernelSHAP speed target names."""
    with torch.no_grad():
        t = model(x).argmax(1)
    params = segmentation_params("slic", *x.shape[-2:])
    segs = [segment(img, "slic", params) for img in x]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = [shap_kernel(True, seed)(model, x, t, segs, n, 250) for seed in (1, 2)]
    return float(np.mean([spearman(torch.as_tensor(np.asarray(a)).reshape(-1), torch.as_tensor(np.asarray(b)).reshape(-1))
                          for a, b in zip(*runs, strict=True)]))


def resnet20() -> tuple[nn.Module, torch.Tensor] | None:
    """The trained CIFAR ResNet-20 and CIFAR images in its normalisation, if the weights are here."""
    path = SHARED / "cifar10-resnet" / "resnet20.safetensors"
    if not path.exists():
        return None
    from xailab.models import load_model

    model = load_model("resnet20", path).eval()
    cifar_mean, cifar_std = torch.tensor((0.4914, 0.4822, 0.4465)), torch.tensor((0.247, 0.243, 0.261))
    mean, std = torch.tensor((0.485, 0.456, 0.406)), torch.tensor((0.229, 0.224, 0.225))
    x = cifar_batch(32) * cifar_std[:, None, None] + cifar_mean[:, None, None]
    return model, (x - mean[:, None, None]) / std[:, None, None]


def stability_table(models: list[tuple[str, nn.Module, torch.Tensor]], sizes: list[int], bs: int) -> list[dict[str, Any]]:
    print("\n## Stability: mean Spearman rho of superpixel weights between two seeds (top-1 target)")
    print(f"{'model':12s} {'method':12s} {'samples':>8s} {'plain':>7s} {'paired':>7s} {'shap':>7s}")
    out = []
    for label, model, x in models:
        for method in ("lime", "kernel_shap"):
            for n in sizes:
                rho = {s: stability(model, x, method, s, n, bs) for s in ("plain", "paired")}
                ref = f"{shap_stability(model, x, n):7.3f}" if method == "kernel_shap" else f"{'-':>7s}"
                print(f"{label:12s} {method:12s} {n:8d} {rho['plain']:7.3f} {rho['paired']:7.3f} {ref}")
                sys.stdout.flush()
                out.append({"model": label, "method": method, "samples": n, **rho})
    for label, _, _ in models:
        for method in ("lime", "kernel_shap"):
            curve = [r for r in out if r["model"] == label and r["method"] == method]
            best = max(curve, key=lambda r: r["samples"])
            need = [r["samples"] for r in curve if r["paired"] >= best["plain"]]
            verdict = f"paired reaches it with {min(need)}" if need else "paired does not reach it in the table"
            print(f"{label} {method}: plain at {best['samples']} gives rho {best['plain']:.3f}; {verdict}")
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    p.add_argument("--images", type=int, default=32, help="CIFAR images explained by xailab")
    p.add_argument("--ref-images", type=int, default=8, help="CIFAR images explained by each reference")
    p.add_argument("--samples", type=int, default=1000, help="LIME/KernelSHAP samples on the CIFAR CNN")
    p.add_argument("--resnet-samples", type=int, default=200, help="LIME/KernelSHAP samples on ResNet-18")
    p.add_argument("--equal-stability-samples", type=int, default=500,
                   help="also time LIME/KernelSHAP at this many samples (0: skip); ResNet-18 scaled")
    p.add_argument("--masks", type=int, default=1000, help="RISE masks on the CIFAR CNN")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best kept)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: CPU seconds are exact even on a shared machine)")
    p.add_argument("--stability-images", type=int, default=8)
    p.add_argument("--stability-sizes", default="125,250,500,1000")
    p.add_argument("--no-resnet", action="store_true", help="skip the ResNet-18 case")
    p.add_argument("--methods", default="", help="comma-separated subset of the speed part's methods")
    p.add_argument("--no-stability", action="store_true", help="skip part 2")
    p.add_argument("--no-speed", action="store_true", help="skip part 1")
    p.add_argument("--json", help="write the speed rows as JSON")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.ref_images, a.samples, a.resnet_samples, a.masks, a.rounds = 4, 2, 100, 40, 100, 1
        a.stability_images, a.stability_sizes, a.equal_stability_samples = 2, "50,100", 50
    torch.manual_seed(0)
    torch.set_num_threads(a.threads)
    print(f"threads: {torch.get_num_threads()}, batch_size: {a.batch_size}")

    methods = tuple(m for m in a.methods.split(",") if m)
    rows: list[Row] = []
    if not a.no_speed:
        rows = speed("small-cnn x32", cifar_cnn(), cifar_batch(a.images), a.samples, a.masks, a.batch_size,
                     min(a.ref_images, a.images), a.rounds, methods=methods,
                     variant_samples=a.equal_stability_samples)
    if not a.no_speed and not a.no_resnet:
        scale = 1000 / a.resnet_samples
        rows += speed("resnet18 x1", resnet18(), imagenet_batch(1), a.resnet_samples, a.resnet_samples,
                      a.batch_size, 1, a.rounds, note=f"{a.resnet_samples} samples", methods=methods,
                      variant_samples=round(a.equal_stability_samples * a.resnet_samples / a.samples))
        scaled = [Row(r.case, r.method, r.impl, r.seconds_per_image * scale,
                      (r.evaluations_per_image or 0) * scale, extra={"scaled_from": a.resnet_samples})
                  for r in rows if r.case == "resnet18 x1" and r.method in ("lime", "kernel_shap", "rise")]
        print_table(scaled, f"ResNet-18: LIME/KernelSHAP/RISE scaled linearly to 1,000 samples (x{scale:g})")
    if rows:
        print_table(rows, "Wall seconds per image, best of rounds (xailab: whole batch; references: image by image)")
        print("\n## Wall-time ratios (> 1: xailab is faster; floor/xailab: how close xailab is to the forward passes)")
        for line in ratio_rows(rows):
            print(line)
        print_table(cpu_rows(rows), "CPU seconds per image of this process, best of rounds")
        print("\n## CPU-time ratios")
        for line in ratio_rows(cpu_rows(rows)):
            print(line)
        print("\n## CPU-time ratios at equal stability (xailab-N: N paired samples, see part 2)")
        for line in variant_ratios(cpu_rows(rows)):
            print(line)
        save_json(rows, a.json)

    if not a.no_stability:
        sizes = [int(s) for s in a.stability_sizes.split(",")]
        models = [("cifar_cnn", cifar_cnn(), cifar_batch(a.stability_images))]
        trained = resnet20()
        if trained is not None:
            models.append(("resnet20", trained[0], trained[1][: a.stability_images]))
        stability_table(models, sizes, max(a.batch_size, 250))


if __name__ == "__main__":
    main(sys.argv[1:])
