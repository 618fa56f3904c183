"""CAM family: xailab against pytorch-grad-cam, the floor, and the shared gradient pass.

Cases: the CIFAR CNN on 32 CIFAR-10 images (layer ``features.21``, the last conv block's ReLU)
and ResNet-18 on 4 ImageNet photos at 224 x 224 (``layer4``), one process. For every CAM:
seconds per image and model evaluations per image (rows through the model, counted with a
hook on the model for pytorch-grad-cam) of both implementations, and the floor
(:func:`bench.harness.floor_seconds`): one forward + backward per image for the gradient CAMs,
one forward per image for Ablation-CAM (the ablated passes run only the layers after the
layer), ``K`` forward passes per image for Score-CAM (one per channel mask).

The shared pass: the six maps of :func:`xailab.methods.shared.explain_shared` (saliency, input
x gradient, Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM) against one saliency map.

    python -m bench.bench_cam                      # full run
    python -m bench.bench_cam --quick              # 8 CIFAR images, 1 photo, no slow references
    python -m bench.bench_cam --slow-images 1      # Score-CAM and the slow references on 1 photo
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import xailab
from bench.common import cifar_batch, cifar_cnn, imagenet_batch, resnet18
from bench.harness import Row, floor_seconds, print_table, ratio_rows, save_json, timed
from xailab.methods.shared import explain_shared

PGC = {
    "gradcam": "GradCAM",
    "gradcam_pp": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "ablation_cam": "AblationCAM",
    "score_cam": "ScoreCAM",
}
SLOW = ("ablation_cam", "score_cam")


class RowCounter:
    """Counts the rows (samples) that go through ``model``'s forward while active."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.rows = model, 0

    def __enter__(self) -> RowCounter:
        def pre(m: nn.Module, args: Any) -> None:
            self.rows += len(args[0])

        self._h = self.model.register_forward_pre_hook(pre)
        return self

    def __exit__(self, *exc: object) -> None:
        self._h.remove()


def pgc_run(name: str, model: nn.Module, layer: nn.Module, x: Tensor, batch_size: int) -> Callable[[], Any]:
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run() -> Any:
        with torch.no_grad():
            classes = model(x).argmax(1).tolist()
        cls = getattr(pgc, PGC[name])
        cam = cls(model, [layer], batch_size=batch_size) if name == "ablation_cam" else cls(model, [layer])
        if name == "score_cam":
            cam.batch_size = batch_size
        with cam:
            return cam(x, [ClassifierOutputTarget(c) for c in classes])

    return run


def bench_case(case: str, model: nn.Module, x_all: Tensor, layer: str, args: argparse.Namespace,
               slow_images: int, warm: bool) -> list[Row]:
    """``slow_images``: images for pytorch-grad-cam's Ablation-/Score-CAM and our Score-CAM;
    ``warm``: run the slow methods once on one image before their single timed run."""
    rows: list[Row] = []
    module = dict(model.named_modules())[layer]
    bs = args.batch_size
    for name in PGC:
        slow = name in SLOW
        x = x_all[: max(1, slow_images)] if name == "score_cam" else x_all
        n = len(x)
        cam = xailab.create(name, model, layer=layer, batch_size=bs)
        if slow and warm:  # one-time costs (kernels for new shapes) out of the single timed run
            cam.explain(x[:1], target="top1")
        sec, res = timed(lambda cam=cam, x=x: cam.explain(x, target="top1"),
                         warmup=0 if slow else 1, repeat=1 if slow else 3)
        extra: dict[str, Any] = {}
        if name == "ablation_cam":
            extra["split"] = cam.split_used
        extra["images"] = n
        rows.append(Row(case, name, "xailab", sec / n, res.evaluations / n, extra=extra))
        if name == "score_cam":
            channels = int(res.extras["weights"].shape[-1])
            floor = floor_seconds(model, x, n * channels, backward=False, batch_size=bs)
        else:
            floor = floor_seconds(model, x, n, backward=name not in SLOW, batch_size=bs)
        rows.append(Row(case, name, "floor", floor / n))
        if args.no_reference or (slow and slow_images == 0):
            continue
        xr = x_all[:slow_images] if slow else x
        warmup, repeat = (0, 1) if slow else (1, 3)
        if slow and warm:
            pgc_run(name, model, module, x_all[:1], bs)()
        with RowCounter(model) as counter:
            rsec, _ = timed(pgc_run(name, model, module, xr, bs), warmup=warmup, repeat=repeat)
        # rows per run, less the forward pass that picks the classes, per image
        evals = (counter.rows / (warmup + repeat) - len(xr)) / len(xr)
        rows.append(Row(case, name, "pytorch-grad-cam", rsec / len(xr), evals,
                        extra={"images": len(xr)}))
        print(f"  {case} {name}: xailab {sec / n:.4f} s/img, pgc {rsec / len(xr):.4f} s/img", flush=True)
    rows += bench_shared(case, model, x_all, layer, bs)
    return rows


def bench_shared(case: str, model: nn.Module, x: Tensor, layer: str, bs: int) -> list[Row]:
    n = len(x)
    sal = xailab.create("saliency", model, batch_size=bs)
    s_sal, r_sal = timed(lambda: sal.explain(x, target="top1"), warmup=1, repeat=5)
    s_all, r_all = timed(lambda: explain_shared(model, x, target="top1", layer=layer, batch_size=bs),
                         warmup=1, repeat=5)
    separate = 0.0
    for name in r_all:
        e = xailab.create(name, model, batch_size=bs, **({"layer": layer} if "cam" in name else {}))
        separate += timed(lambda e=e: e.explain(x, target="top1"), warmup=1, repeat=3)[0]
    ev = next(iter(r_all.values())).evaluations / n
    return [
        Row(case, "saliency (1 map)", "xailab", s_sal / n, r_sal.evaluations / n),
        Row(case, "shared (6 maps)", "xailab", s_all / n, ev,
            extra={"vs_saliency": s_all / s_sal, "vs_six_separate": s_all / separate}),
        Row(case, "six separate runs", "xailab", separate / n, None),
    ]


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 CIFAR images, 1 photo, no slow references")
    p.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (both libraries)")
    p.add_argument("--slow-images", type=int, default=None,
                   help="photos for Score-CAM (both libraries) and pytorch-grad-cam's Ablation-CAM "
                        "on ResNet-18 (default all 4; 0 skips the slow references)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam")
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_cifar, n_img = (8, 1) if args.quick else (32, 4)
    slow = args.slow_images if args.slow_images is not None else (0 if args.quick else n_img)
    rows = bench_case(f"cifar-cnn x{n_cifar}", cifar_cnn(), cifar_batch(n_cifar), "features.21", args,
                      0 if args.quick else n_cifar, warm=True)
    rows += bench_case(f"resnet18 x{n_img}", resnet18(), imagenet_batch(n_img), "layer4", args,
                       min(slow, n_img), warm=False)
    print_table(rows, f"CAM family (threads={torch.get_num_threads()}, batch_size={args.batch_size})")
    print()
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
