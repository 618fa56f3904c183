"""Deletion + insertion AUC: xailab against Quantus on the same model, images and maps.

100 CIFAR images (``cifar_batch(100)``), the CIFAR CNN (``cifar_cnn()``), three maps per image
(saliency, input x gradient, a random map; computed once, outside the timing), both curves for
each. Quantus has no insertion metric: it runs as its PixelFlipping starting from the blurred
image with a perturb function that puts the original values back (what insertion is). Quantus
asks ``features_in_step`` to divide H x W, so with 3 channels its steps cannot be whole pixels:
both sides use ``--steps`` steps (default 48: 64 channel values = 21.3 pixels each), hence the
same model evaluations; xailab also scores the unmodified image (steps + 1 points per curve).
Both run the model on batches of all images. The CIFAR CNN is untrained (timing only), so its
scores barely move and the AUCs printed are not a quality comparison (the tests check equality
with Quantus on the same curves).

ROAD, IROF and infidelity (``--only road``, also run by default) against ``quantus.ROAD``,
``quantus.IROF`` and ``quantus.Infidelity`` on the same maps: ROAD on grey CIFAR images (Quantus's
ROAD indexes a map shared by three channels out of bounds, so one channel), its 50 default
percentages, no noise (both sides deterministic), accuracy as the score; IROF on the same grey
images (Quantus's IROF refuses colour), SLIC segments computed inside each side's call, fill 0.3,
Quantus one image a call (with more it pads every curve to the longest one, another score); infidelity with 4x4 patches filled with 0,
softmax scores, the same 64 perturbations plus the unperturbed image per image on both sides
(Quantus runs the model on one batch of all images per perturbation), on the same NCHW tensor;
then infidelity of three maps of the same images (what ``compare`` does: xailab runs the model
once for all maps, Quantus once per map). CPU seconds, best of interleaved rounds. The largest
difference of the scores is printed beside the times.

    python -m bench.bench_metrics [--quick] [--steps 6] [--only curves|road] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import xailab
from bench.common import cifar_batch, cifar_cnn
from bench.harness import Row, floor_seconds, print_table, ratio_rows, save_json, timed
from xailab.metrics import deletion, insertion, random_maps
from xailab.metrics.perturb import gaussian_blur


def _maps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    out = {m: xailab.create(m, model, batch_size=100).explain(x, target=y).pixel_maps()[:, 0]
           for m in ("saliency", "input_x_gradient")}
    out["random"] = random_maps(x)
    return out


def _ours(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, maps: dict[str, torch.Tensor],
          steps: int, batch: int) -> dict[str, tuple[float, float]]:
    out = {}
    for m, a in maps.items():
        d = deletion(model, x, a, y, steps=steps, fill=0.0, batch_size=batch)
        i = insertion(model, x, a, y, steps=steps, fill="blur", batch_size=batch)
        out[m] = (float(d.auc.mean()), float(i.auc.mean()))
    return out


def _quantus(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, maps: dict[str, torch.Tensor],
             features_in_step: int, batch: int) -> dict[str, tuple[float, float]]:
    import quantus

    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # type: ignore[attr-defined]  # Quantus 0.6 on NumPy >= 2.4
    xn, yn = x.numpy(), y.numpy()
    blurred = gaussian_blur(x).numpy()
    original = xn.reshape(len(xn), -1)

    def reveal(arr: np.ndarray, indices: np.ndarray, **kw: Any) -> np.ndarray:
        out = arr.copy()
        rows = np.arange(len(arr))[:, None]
        out[rows, indices] = original[rows, indices]  # one batch holds every image (batch >= N)
        return out

    common = dict(features_in_step=features_in_step, normalise=False, abs=False, disable_warnings=True,
                  return_auc_per_sample=True)
    dele = quantus.PixelFlipping(perturb_baseline=0.0, **common)
    ins = quantus.PixelFlipping(perturb_func=reveal, **common)
    out = {}
    n_steps = x[0].numel() // features_in_step
    for m, a in maps.items():
        ab = a[:, None].numpy()
        d = dele(model=model, x_batch=xn, y_batch=yn, a_batch=ab, softmax=True, batch_size=batch)
        i = ins(model=model, x_batch=blurred, y_batch=yn, a_batch=ab, softmax=True, batch_size=batch)
        out[m] = (float(np.mean(d)) / n_steps, float(np.mean(i)) / n_steps)  # unit spacing -> [0, 1]
    return out


def _pair(name: str, model: torch.nn.Module, xb: torch.Tensor, a: torch.Tensor, y: torch.Tensor,
          pcts: list[int]) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """(xailab, quantus) computations of ROAD (mean accuracy per percentage) or infidelity (per image)."""
    import quantus

    from xailab.metrics import infidelity, irof, road

    n = len(xb)
    common: dict[str, Any] = dict(model=model, x_batch=xb.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                                  batch_size=n, device="cpu")
    if name == "road":
        def ours() -> np.ndarray:
            return road(model, xb, a, y, percentages=pcts, noise=0.0, output="accuracy",
                        batch_size=64).scores.mean(0).numpy()

        def theirs() -> np.ndarray:
            res = quantus.ROAD(percentages=pcts, noise=0.0, normalise=False, disable_warnings=True)(**common)
            return np.array([res[p] for p in pcts])
        return ours, theirs

    if name == "irof":
        if not hasattr(np, "trapz"):
            np.trapz = np.trapezoid  # type: ignore[attr-defined]  # Quantus 0.6 on NumPy >= 2.4

        def ours_r() -> np.ndarray:
            return irof(model, xb, a, y, fill=0.3, batch_size=64).numpy()

        def theirs_r() -> np.ndarray:
            metric = quantus.IROF(perturb_baseline=0.3, normalise=False, disable_warnings=True,
                                  return_aggregate=False)
            # one image a call: with more, Quantus pads the curves to the longest (another score)
            return np.array([metric(model=model, x_batch=xb[i: i + 1].numpy(), y_batch=y[i: i + 1].numpy(),
                                    a_batch=a[i: i + 1, None].numpy(), batch_size=1, device="cpu")[0]
                             for i in range(n)], dtype=np.float64)
        return ours_r, theirs_r

    def ours_i() -> np.ndarray:
        return infidelity(model, xb, a, y, patch=4, fill=0.0, batch_size=64).numpy()

    def theirs_i() -> np.ndarray:
        metric = quantus.Infidelity(perturb_baseline=0.0, perturb_patch_sizes=[4], n_perturb_samples=1,
                                    normalise=False, abs=False, disable_warnings=True)
        return np.asarray(metric(**common, softmax=True), dtype=np.float64)
    return ours_i, theirs_i


def _infidelity_maps(model: torch.nn.Module, xb: torch.Tensor, maps: list[torch.Tensor], y: torch.Tensor
                     ) -> tuple[Callable[[], np.ndarray], Callable[[], np.ndarray]]:
    """Infidelity of several maps of the same images (what ``compare`` does): xailab runs the
    model once (``infidelity_drops``) and scores every map from it; Quantus runs per map."""
    from xailab.metrics import infidelity, infidelity_drops

    def ours() -> np.ndarray:
        d = infidelity_drops(model, xb, y, patch=4, fill=0.0, batch_size=64)
        return np.stack([infidelity(model, xb, a, y, patch=4, drops=d).numpy() for a in maps])

    def theirs() -> np.ndarray:
        return np.stack([_pair("infidelity", model, xb, a, y, [])[1]() for a in maps])
    return ours, theirs


def _road_infidelity(n: int, repeat: int) -> list[Row]:
    x = cifar_batch(n)
    torch.manual_seed(0)
    grey = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(4),
                               torch.nn.Flatten(), torch.nn.Linear(512, 10)).eval()
    cnn = cifar_cnn()
    xg = x.mean(1, keepdim=True)
    pcts = list(range(1, 100, 2))
    rows: list[Row] = []
    for name, model, xb in (("road", grey, xg), ("irof", grey, xg), ("infidelity", cnn, x),
                            ("infidelity 3 maps", cnn, x)):
        with torch.no_grad():
            y = model(xb).argmax(1)
        if name == "infidelity 3 maps":
            maps = list(_maps(model, xb, y).values())
            ours, theirs = _infidelity_maps(model, xb, maps, y)
        else:
            a = xailab.create("saliency", model, batch_size=n).explain(xb, target=y).pixel_maps()[:, 0]
            ours, theirs = _pair(name, model, xb, a, y, pcts)
        best_o, best_q = float("inf"), float("inf")
        for _ in range(repeat):  # interleaved; CPU seconds (one torch thread: steady under load)
            t, o = timed(ours, clock=time.process_time)
            best_o = min(best_o, t)
            t, q = timed(theirs, clock=time.process_time)
            best_q = min(best_q, t)
        diff = float(np.abs(o - q).max())
        rel = float((np.abs(o - q) / np.maximum(np.abs(q), 1e-12)).max())
        case = f"{'grey-cnn' if name in ('road', 'irof') else 'cifar-cnn'} x{n}"
        rows.append(Row(case, name, "xailab", best_o / n, extra={"total_s": best_o, "max_abs_diff": diff,
                                                                 "max_rel_diff": rel}))
        rows.append(Row(case, name, "quantus", best_q / n, extra={"total_s": best_q}))
        print(f"{name}: largest |xailab - quantus| = {diff:.3g} (relative {rel:.3g})", flush=True)
    return rows


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 images, 12 steps, one repeat")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=48, choices=[3, 6, 12, 24, 48, 96],
                   help="steps per curve (3 x 32 x 32 / steps channel values each; default 48)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved repeats; the best time of each side counts")
    p.add_argument("--threads", type=int, help="torch threads (default: as set by bench.common); on a "
                   "machine shared beyond its cores, 1 gives stable timings")
    p.add_argument("--json", help="write the rows as JSON here")
    p.add_argument("--only", choices=["curves", "road"], help="only deletion/insertion, or only ROAD and infidelity")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 20 if args.quick else args.images
    steps = 12 if args.quick else args.steps
    repeat = 1 if args.quick else max(1, args.repeat)
    features_in_step = 3 * 32 * 32 // steps
    try:
        import quantus  # noqa: F401
        have_quantus = True
    except ImportError:
        have_quantus = False
    if args.only == "road" or (args.only is None and have_quantus):
        road_rows = _road_infidelity(n, repeat) if have_quantus else []
        print_table(road_rows, f"ROAD and infidelity, {n} images, best of {repeat}, {time.strftime('%H:%M')}")
        for line in ratio_rows(road_rows):
            print(line)
        if args.only == "road":
            save_json(road_rows, args.json)
            return
    cnn = cifar_cnn()
    x = cifar_batch(n)
    with torch.no_grad():
        y = cnn(x).argmax(1)
    maps = _maps(cnn, x, y)
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()
    batch = n  # one forward pass per step for both (Quantus needs the whole batch for `reveal`)
    evals_ours = 2 * (steps + 1) * len(maps)
    evals_q = 2 * steps * len(maps)
    rows: list[Row] = []
    # the CIFAR CNN (what users run; the model dominates), then a linear model (the metric
    # machinery's own cost: building perturbed images, sorting, bookkeeping)
    for case, model in ((f"cifar-cnn x{n}", cnn), (f"linear x{n}", linear)):
        best_ours, best_q = float("inf"), float("inf")
        ours: dict[str, tuple[float, float]] = {}
        theirs: dict[str, tuple[float, float]] = {}
        for _ in range(repeat):  # interleaved, so both sides see the same machine load
            t, ours = timed(lambda m=model: _ours(m, x, y, maps, steps, batch), clock=time.process_time)
            best_ours = min(best_ours, t)
            if have_quantus:
                t, theirs = timed(lambda m=model: _quantus(m, x, y, maps, features_in_step, batch),
                                  clock=time.process_time)
                best_q = min(best_q, t)
        # the forward passes alone, timed for one map's two curves and scaled to all maps
        floor = len(maps) * floor_seconds(model, x, n * 2 * (steps + 1), backward=False, batch_size=batch,
                                          clock=time.process_time)
        rows.append(Row(case, "deletion+insertion", "xailab", best_ours / n, evals_ours,
                        extra={"total_s": best_ours, **{f"{m}_del": v[0] for m, v in ours.items()},
                               **{f"{m}_ins": v[1] for m, v in ours.items()}}))
        rows.append(Row(case, "deletion+insertion", "floor", floor / n, evals_ours, extra={"total_s": floor}))
        if have_quantus:
            rows.append(Row(case, "deletion+insertion", "quantus", best_q / n, evals_q,
                            extra={"total_s": best_q, **{f"{m}_del": v[0] for m, v in theirs.items()},
                                   **{f"{m}_ins": v[1] for m, v in theirs.items()}}))
    print_table(rows, f"deletion + insertion AUC (CPU s), {len(maps)} maps x {n} images, {steps} steps, best of "
                      f"{repeat}, torch threads {torch.get_num_threads()}, {time.strftime('%H:%M')}")
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
