"""Network dissection on real models and data: seconds, memory, labels per layer, figures.

Cases (one process, the CPU or the lent GPU):

* ``resnet20-cifar``: the CIFAR-10 ResNet-20 (shared weights) over ``--cifar`` CIFAR-10 test
  images (class-balanced), layers ``layer1,layer2,layer3`` (16 + 32 + 64 units), against the 11
  colour concepts (two streaming passes) and class-level (one pass);
* ``lite0-imagenet``: the pretrained EfficientNet-Lite0 over ``--imagenet`` of the 1,000 ImageNet
  sample photos, layers ``_blocks.4,_blocks.10,_relu1`` (40 + 112 + 1,280 units), colour concepts.

The floor is the forward passes dissection cannot avoid (two per image for concepts, one for
classes). The quantile sketch is checked against ``torch.quantile`` on ResNet-20 ``layer3``
activations of 200 images (kept in memory). With ``--out DIR`` each case writes its run
(CSV, histogram, galleries) under ``DIR/<case>-<concepts>``.

    python -m bench.bench_dissection --out /tmp/dissect     # 2,000 CIFAR images, 200 photos
    python -m bench.bench_dissection --quick                # 200 CIFAR images, 16 photos
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from bench.common import SHARED
from bench.harness import (
    Row,
    floor_seconds,
    peak_memory_mb,
    print_table,
    ratio_rows,
    save_json,
    timed,
)
from xailab.concepts.dissection import QuantileSketch, dissect, dissect_classes
from xailab.concepts.dissection_concepts import ColourConcepts
from xailab.concepts.dissection_report import dissection_to_run
from xailab.data import load_images
from xailab.models import create_model, get_preprocessing


def _case(rows: list[Row], case: str, model: Any, x: torch.Tensor, layers: str, kind: str,
          args: argparse.Namespace, y: Any = None, classes: Any = None, names: Any = None) -> None:
    prep = get_preprocessing(model)
    assert prep is not None

    def go() -> Any:
        if kind == "classes":
            return dissect_classes(model, x, layers, labels=y, class_names=classes, batch_size=args.batch_size)
        return dissect(model, x, layers, ColourConcepts(prep.denormalize), batch_size=args.batch_size)

    peak, _ = peak_memory_mb(go) if args.memory else (None, None)
    seconds, res = timed(go)
    passes = 1 if kind == "classes" else 2
    floor = floor_seconds(model, x[: args.batch_size], passes * len(x), backward=False, batch_size=args.batch_size)
    n = len(x)
    s = res.summary()
    extra: dict[str, Any] = {"images": n, "seconds": round(seconds, 2)}
    for _, r in s.iterrows():
        extra[str(r["layer"])] = f"{r['labelled']}/{r['units']}"
    rows.append(Row(case, f"dissect-{kind}", "xailab", seconds / n, float(passes), peak, extra))
    rows.append(Row(case, f"dissect-{kind}", "floor", floor / n, float(passes)))
    print(f"\n{case} {kind}: {seconds:.1f} s for {n} images")
    print(s.to_string(index=False))
    if args.out:
        run = dissection_to_run(res, Path(args.out) / f"{case}-{kind}", model=model, images=x,
                                display=prep.denormalize, names=names)
        print(f"run: {run.path}")


def sketch_accuracy(model: Any, x: torch.Tensor) -> dict[str, float]:
    """Error of the sketch's T_k against torch.quantile: in value (share of the unit's range)
    and in rank (share of values above the estimate minus share above the exact quantile)."""
    from xailab.concepts.activations import collect_activations

    acts = collect_activations(model, "layer3", x).transpose(0, 1).flatten(1).double()  # [C, N*h*w]
    sk = QuantileSketch(acts.shape[0])
    for chunk in acts.split(64 * 64, dim=1):
        sk.update(chunk)
    exact = torch.quantile(acts, 1 - 0.005, dim=1)
    rng = (acts.max(1).values - acts.min(1).values).clamp_min(1e-12)
    est = sk.upper(0.005)
    err = (est - exact).abs() / rng
    # rank error: share of values above the estimate vs the 0.5 % asked for (a sparse tail
    # makes the value error look large where both thresholds cut between the same two values)
    above = (acts > est[:, None]).double().mean(1)
    exact_above = (acts > exact[:, None]).double().mean(1)
    return {"max_value_err_of_range": float(err.max()), "mean_value_err_of_range": float(err.mean()),
            "max_share_above_diff": float((above - exact_above).abs().max()),
            "values_per_unit": acts.shape[1]}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="200 CIFAR images, 16 photos")
    p.add_argument("--cifar", type=int, default=2000, help="CIFAR-10 test images")
    p.add_argument("--imagenet", type=int, default=200, help="ImageNet sample photos")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--memory", action="store_true", help="also measure peak memory (one more run per case)")
    p.add_argument("--out", help="write each case's run (CSV, histogram, galleries) under this folder")
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.cifar, args.imagenet = 200, 16
    rows: list[Row] = []
    cifar = SHARED / "cifar10-jpg.tar.gz"
    weights = SHARED / "cifar10-resnet" / "resnet20.safetensors"
    if cifar.is_file() and weights.is_file():
        model = create_model("resnet20", weights=weights)
        x, y, _, ds = load_images(f"cifar10:test:{args.cifar}", get_preprocessing(model), root=cifar)
        classes = list(ds.classes) if ds is not None else None
        acc = sketch_accuracy(model, x[:200])
        print(f"quantile sketch vs torch.quantile (resnet20 layer3, 200 images): {acc}")
        _case(rows, "resnet20-cifar", model, x, "layer1,layer2,layer3", "colour", args)
        _case(rows, "resnet20-cifar", model, x, "layer1,layer2,layer3", "classes", args, y=y, classes=classes)
    else:
        print("CIFAR-10 or ResNet-20 weights not found under ../shared/data: case skipped")
    photos = SHARED / "imagenet" / "imagenet-samples-256.tar.gz"
    if photos.is_file() and args.imagenet > 0:
        model = create_model("efficientnet_lite0", pretrained=True)
        x, _, names, _ = load_images(str(photos), get_preprocessing(model))
        pick = torch.linspace(0, len(x) - 1, min(args.imagenet, len(x))).round().long()  # spread over classes
        x, names = x[pick].clone(), [names[int(i)] for i in pick]
        _case(rows, "lite0-imagenet", model, x, "_blocks.4,_blocks.10,_relu1", "colour", args, names=names)
    print_table(rows, "network dissection (s/img = seconds per probe image)")
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
