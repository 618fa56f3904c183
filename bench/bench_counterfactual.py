"""Counterfactuals: ours against a plain Wachter et al. (2017) implementation, region counterfactuals,
prototypes, and the randomised-model sanity check.

* ``fm-pixel``: on the Fashion-MNIST ``small_cnn`` (``--fm-weights``, else trained here for one
  epoch on 10,000 images), the first ``--images`` test images, targets ``top2`` and ``least``:
  xailab's pixel counterfactuals (elastic net ``l1+l2``, lambda search, batched) and the reference,
  written here as Wachter's paper states it, one image at a time: minimise
  ``lambda * (p_t(x') - 1)^2 + ||x' - x||_1`` with Adam in [0, 1], ``lambda`` starting at 0.1 and
  multiplied by 10 after each round of ``steps`` that did not reach the target (Wachter's "increase
  lambda until a counterfactual is found"). Validity, median L1 / L2 / changed pixels (a pixel
  moved by more than 1/255), CPU seconds per image (one torch thread) and their ratios; the plain
  implementation runs on the first ``--reference-images`` (30) only, ours on those and on all.
  (alibi's ``Counterfactual`` needs TensorFlow; it is not installed.)
* ``fm-region``: region counterfactuals (blur fill, greedy and beam 3), target ``other``: validity
  and median superpixels.
* ``cifar``: the CIFAR-10 ResNet-20 (``../shared/data``), ``--images`` test images of the JPEG copy,
  region counterfactuals (target ``other``, greedy, blur): median regions to flip; prototypes for
  the cat test images towards dog (figures in ``--out``).
* ``sanity``: plausibility (distance to the nearest training images of the new class in the trained
  model's feature space, over the class's typical value) of the trained model's pixel
  counterfactuals, of a randomised small_cnn's, and of prototypes.

    python -m bench.bench_counterfactual --quick
    python -m bench.bench_counterfactual --fm-weights runs/fm/checkpoints/best.safetensors --json /tmp/cf.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.common import SHARED

FMNIST = "/usr/share/datasets/fashion-mnist"


def cpu(fn: Any) -> tuple[float, Any]:
    """CPU seconds of ``fn()`` (one torch thread) and its result."""
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def wachter_reference(model: nn.Module, x: torch.Tensor, target: torch.Tensor, *, lam: float = 0.1,
                      rounds: int = 5, steps: int = 100, lr: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Wachter et al. 2017, one image at a time: ``(counterfactual pixels, found, evaluations)``.

    ``x``: pixels in [0, 1]; ``model`` takes pixels (normalisation inside)."""
    outs, found, evals = [], [], 0
    for i in range(len(x)):
        x0, t = x[i:i + 1], int(target[i])
        best, ok = x0.clone(), False
        lam_i = lam
        for _ in range(rounds):
            z = x0.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=lr)
            for _ in range(steps):
                p = torch.softmax(model(z), 1)[0, t]
                loss = lam_i * (p - 1) ** 2 + (z - x0).abs().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                with torch.no_grad():
                    z.clamp_(0, 1)
                evals += 1
            with torch.no_grad():
                evals += 1
                if int(model(z).argmax(1)) == t:
                    best, ok = z.detach(), True
                    break
            lam_i *= 10
        outs.append(best)
        found.append(ok)
    return torch.cat(outs), torch.tensor(found), evals


class Pixels(nn.Module):
    """``model(normalise(pixels))``."""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.model((p - self.mean) / self.std)


def fm_model(weights: str | None, out: Path) -> tuple[nn.Module, str]:
    from xailab.cli import main
    from xailab.jobs.model import ModelSpec, load

    if weights is None:
        run = out / "fm-train"
        main(["train", "--model", "small_cnn", "--data", "fashion_mnist", "--data-root", FMNIST, "--epochs", "1",
              "--limit-train", "10000", "--limit-test", "500", "--track", "none", "--quiet", "--out", str(run)])
        weights = str(run / "checkpoints" / "best.safetensors")
    return load(ModelSpec("small_cnn", weights=weights, device="cpu"), log=lambda _: None).model, weights


def pixel_rows(model: nn.Module, x: torch.Tensor, targets: list[str], n_ref: int) -> list[dict[str, Any]]:
    from xailab.counterfactual import PixelMap, pixel_counterfactuals
    from xailab.counterfactual.base import pixel_distances
    from xailab.models import get_preprocessing

    prep = get_preprocessing(model)
    assert prep is not None
    px = Pixels(model, prep.mean, prep.std).eval()
    for p in px.parameters():
        p.requires_grad_(False)
    rows = []
    for target in targets:
        t_all, cf = cpu(lambda target=target: pixel_counterfactuals(model, x, target))
        # the same search on the reference's images alone, for the time per image
        t_ours, sub = cpu(lambda target=target: pixel_counterfactuals(model, x[:n_ref], target))
        p0 = PixelMap.for_model(model).to_pixels(x[:n_ref]).clamp(0, 1)
        t_ref, (ref, ok, evals) = cpu(lambda p0=p0, t=sub.target: wachter_reference(px, p0, t))
        with torch.no_grad():
            ok = ok & (px(ref).argmax(1) == sub.target)
        d = pixel_distances(ref - p0)
        v_all = cf.valid.numpy()
        rows.append({"case": f"fm-pixel {target}", "impl": "xailab (all images)", "images": len(x),
                     "validity": float(v_all.mean()),
                     "median_l2": float(np.median(cf.measures["l2"].numpy()[v_all])),
                     "median_changed_pixels": float(np.median(cf.measures["changed_pixels"].numpy()[v_all])),
                     "cpu_s_per_image": t_all / len(x)})
        n = n_ref
        for impl, valid, dist, secs, ev in (
                ("xailab", sub.valid, sub.measures, t_ours, float(sub.measures["evaluations"].double().mean())),
                ("wachter (plain)", ok, d, t_ref, evals / n)):
            v = valid.numpy().astype(bool)
            rows.append({"case": f"fm-pixel {target}", "impl": impl, "images": n, "validity": float(v.mean()),
                         "median_l1": float(np.median(dist["l1"].numpy()[v])) if v.any() else float("nan"),
                         "median_l2": float(np.median(dist["l2"].numpy()[v])) if v.any() else float("nan"),
                         "median_changed_pixels": float(np.median(dist["changed_pixels"].numpy()[v])) if v.any()
                         else float("nan"), "cpu_s_per_image": secs / n, "evaluations_per_image": ev})
    return rows


def region_rows(model: nn.Module, x: torch.Tensor, case: str, beams: tuple[int, ...]) -> list[dict[str, Any]]:
    from xailab.counterfactual import region_counterfactuals

    rows = []
    for beam in beams:
        secs, cf = cpu(lambda beam=beam: region_counterfactuals(model, x, "other", fill="blur", beam=beam,
                                                                 max_regions=8, batch_size=128))
        s = cf.summary()
        rows.append({"case": case, "impl": f"xailab region beam={beam}", "images": len(x), "validity": s["validity"],
                     "median_regions": s["median_regions"], "median_changed_pixels": s["median_changed_pixels"],
                     "median_l2": s["median_l2"], "median_segments": s["median_segments"],
                     "cpu_s_per_image": secs / len(x), "evaluations_per_image": float(cf.measures["evaluations"]
                                                                                     .double().mean())})
    return rows


def sanity_rows(model: nn.Module, x: torch.Tensor, ref: Any) -> list[dict[str, Any]]:
    from xailab.counterfactual import pixel_counterfactuals, plausibility, prototype_counterfactuals
    from xailab.models import create_model, get_preprocessing, set_preprocessing

    torch.manual_seed(0)
    rand = create_model("small_cnn").eval()
    prep = get_preprocessing(model)
    assert prep is not None
    set_preprocessing(rand, prep)
    rows = []
    for name, cf in (("trained model, pixel", pixel_counterfactuals(model, x, "other")),
                     ("randomised model, pixel", pixel_counterfactuals(rand, x, "other")),
                     ("trained model, prototype", prototype_counterfactuals(model, x, "other", ref))):
        ok = cf.valid
        score = plausibility(ref, cf.counterfactual[ok], cf.counterfactual_class[ok])
        rows.append({"case": "sanity (plausibility in the trained model's space)", "impl": name,
                     "images": int(ok.sum()), "median_plausibility": float(score.median()),
                     "median_l2": float(cf.measures["l2"][ok].double().median())})
    return rows


def cifar_rows(n: int, out: Path) -> list[dict[str, Any]]:
    from xailab.counterfactual import Reference, prototype_counterfactuals
    from xailab.counterfactual.figures import counterfactual_png
    from xailab.data import load_images
    from xailab.jobs.model import ModelSpec, load

    root = SHARED / "cifar10-jpg.tar.gz"
    model = load(ModelSpec("resnet20", weights=str(SHARED / "cifar10-resnet" / "resnet20.safetensors"),
                           device="cpu"), log=lambda _: None).model
    prep = model_prep(model)
    x, _, _, _ = load_images(f"cifar10:test:{n}", prep, root=root)
    rows = region_rows(model, x, "cifar-region resnet20", (1,))
    tx, ty, _, _ = load_images("cifar10:train:2000", prep, root=root)
    ref = Reference.of(model, tx, ty, k=5)
    cx, cy, _, _ = load_images("cifar10:test:400", prep, root=root)
    cats = cx[cy == 3][:8]
    secs, proto = cpu(lambda: prototype_counterfactuals(model, cats, 5, ref, k=3))
    out.mkdir(parents=True, exist_ok=True)
    for i in range(len(cats)):
        j = int(proto.extras["predicted_neighbours"][i, 0])
        png = counterfactual_png(proto.original[i].numpy(), proto.counterfactual[i].numpy(),
                                 f"cat test image {i}: nearest dog (model: {int(proto.counterfactual_class[i])})",
                                 extra=ref.pixels[j].numpy() if j >= 0 else None, extra_title="nearest of its class")
        (out / f"cifar_cat_to_dog_{i}.png").write_bytes(png)
    s = proto.summary()
    rows.append({"case": "cifar-prototype cat->dog", "impl": "xailab prototype", "images": len(cats),
                 "validity": s["validity"], "median_feature_distance": s["median_feature_distance"],
                 "median_l2": s["median_l2"], "cpu_s_per_image": secs / len(cats)})
    return rows


def model_prep(model: nn.Module) -> Any:
    from xailab.models import get_preprocessing

    return get_preprocessing(model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fm-weights", help="small_cnn weights for Fashion-MNIST (default: train one epoch here)")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--reference-images", type=int, default=30, help="images the plain Wachter runs on (slow)")
    p.add_argument("--parts", default="fm-pixel,fm-region,sanity,cifar")
    p.add_argument("--quick", action="store_true", help="10 images")
    p.add_argument("--out", help="folder for figures (default: a temporary one)")
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    n = 10 if a.quick else a.images
    out = Path(a.out or tempfile.mkdtemp(prefix="bench-cf-"))
    parts = a.parts.split(",")
    rows: list[dict[str, Any]] = []
    if {"fm-pixel", "fm-region", "sanity"} & set(parts):
        from xailab.counterfactual import Reference
        from xailab.data import load_images

        model, _ = fm_model(a.fm_weights, out)
        prep = model_prep(model)
        x, _, _, _ = load_images(f"fashion_mnist:test:{n}", prep, root=FMNIST)
        if "fm-pixel" in parts:
            rows += pixel_rows(model, x, ["top2", "least"], min(n, a.reference_images))
        if "fm-region" in parts:
            rows += region_rows(model, x, "fm-region", (1, 3))
        if "sanity" in parts:
            tx, ty, _, _ = load_images("fashion_mnist:train:2000", prep, root=FMNIST)
            rows += sanity_rows(model, x[: a.reference_images], Reference.of(model, tx, ty, k=5))
    if "cifar" in parts:
        rows += cifar_rows(n, out)
    for r in rows:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    ref = {r["case"]: r for r in rows if r["impl"] == "wachter (plain)"}
    for r in rows:
        if r["impl"] == "xailab" and r["case"] in ref:
            w = ref[r["case"]]
            print(f"{r['case']}: validity {r['validity']:.2f} vs {w['validity']:.2f}; median L2 ratio "
                  f"{r['median_l2'] / w['median_l2']:.2f}, changed pixels ratio "
                  f"{r['median_changed_pixels'] / w['median_changed_pixels']:.2f}; CPU time per image ratio "
                  f"{r['cpu_s_per_image'] / w['cpu_s_per_image']:.2f} (xailab / plain Wachter)")
    print(f"figures in {out}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
