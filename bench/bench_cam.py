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

The gradient CAMs, their reference and their floor (and the shared pass's rows) run in turns,
``--rounds`` rounds, best of each; ``--clock cpu`` times the process's CPU seconds (use with
``--threads 1`` on a shared machine). The gradient CAMs take their targets from their own
forward pass: their floor is one forward + backward per image, nothing more.

    python -m bench.bench_cam                      # full run
    python -m bench.bench_cam --quick              # 8 CIFAR images, 1 photo, no slow references
    python -m bench.bench_cam --slow-images 1      # Score-CAM and the slow references on 1 photo
    python -m bench.bench_cam --threads 1 --clock cpu --rounds 7 --only-gradient
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import xailab
from bench.bench_gradient import floor_work, interleaved
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

    def run() -> Any:
        # targets=None: pytorch-grad-cam takes the top-1 class from its own forward, as we do
        # (an extra scoring forward here would time work neither method needs)
        cls = getattr(pgc, PGC[name])
        cam = cls(model, [layer], batch_size=batch_size) if name == "ablation_cam" else cls(model, [layer])
        if name == "score_cam":
            cam.batch_size = batch_size
        with cam:
            return cam(x, None)

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
        if slow and args.only_gradient:
            continue
        x = x_all[: max(1, slow_images)] if name == "score_cam" else x_all
        n = len(x)
        cam = xailab.create(name, model, layer=layer, batch_size=bs)
        if not slow:  # ours, the reference and the floor in turns, best of rounds
            fns: dict[str, Callable[[], Any]] = {
                "xailab": _explain_fn(cam, x),
                "floor": floor_work(model, x, n, 0, bs),
            }
            if not args.no_reference:
                fns["pytorch-grad-cam"] = pgc_run(name, model, module, x, bs)
            with RowCounter(model) as counter:
                secs, res = interleaved(fns, args.rounds, args.clock)
            rows.append(Row(case, name, "xailab", secs["xailab"] / n, res["xailab"].evaluations / n,
                            extra={"images": n, "clock": args.clock}))
            rows.append(Row(case, name, "floor", secs["floor"] / n))
            if "pytorch-grad-cam" in secs:
                rows.append(Row(case, name, "pytorch-grad-cam", secs["pytorch-grad-cam"] / n, None,
                                extra={"images": n}))
                print(f"  {case} {name}: xailab {secs['xailab'] / n:.4f} s/img, "
                      f"pgc {secs['pytorch-grad-cam'] / n:.4f} s/img", flush=True)
            continue
        if warm:  # one-time costs (kernels for new shapes) out of the single timed run
            cam.explain(x[:1], target="top1")
        sec, res = timed(_explain_fn(cam, x), warmup=0, repeat=1)
        extra: dict[str, Any] = {}
        if name == "ablation_cam":
            extra["split"] = cam.split_used
        extra["images"] = n
        rows.append(Row(case, name, "xailab", sec / n, res.evaluations / n, extra=extra))
        if name == "score_cam":
            channels = int(res.extras["weights"].shape[-1])
            floor = floor_seconds(model, x, n * channels, backward=False, batch_size=bs)
        else:
            floor = floor_seconds(model, x, n, backward=False, batch_size=bs)
        rows.append(Row(case, name, "floor", floor / n))
        if args.no_reference or slow_images == 0:
            continue
        xr = x_all[:slow_images]
        if warm:
            pgc_run(name, model, module, x_all[:1], bs)()
        with RowCounter(model) as counter:
            rsec, _ = timed(pgc_run(name, model, module, xr, bs), warmup=0, repeat=1)
        evals = counter.rows / len(xr)  # every row through the model, per image
        rows.append(Row(case, name, "pytorch-grad-cam", rsec / len(xr), evals,
                        extra={"images": len(xr)}))
        print(f"  {case} {name}: xailab {sec / n:.4f} s/img, pgc {rsec / len(xr):.4f} s/img", flush=True)
    rows += bench_shared(case, model, x_all, layer, bs, args.rounds, args.clock, args.separate)
    return rows


def _explain_fn(explainer: Any, x: Tensor) -> Callable[[], Any]:
    return lambda: explainer.explain(x, target="top1")


def bench_shared(case: str, model: nn.Module, x: Tensor, layer: str, bs: int, rounds: int = 5,
                 clock: str = "wall", separate: bool = True) -> list[Row]:
    """The six maps of the shared pass against one saliency map (in turns, best of ``rounds``)."""
    n = len(x)
    sal = xailab.create("saliency", model, batch_size=bs)
    fns: dict[str, Callable[[], Any]] = {
        "saliency": lambda: sal.explain(x, target="top1"),
        "shared": lambda: explain_shared(model, x, target="top1", layer=layer, batch_size=bs),
    }
    secs, res = interleaved(fns, rounds, clock)
    s_sal, s_all, r_sal, r_all = secs["saliency"], secs["shared"], res["saliency"], res["shared"]
    ev = next(iter(r_all.values())).evaluations / n
    out = [
        Row(case, "saliency (1 map)", "xailab", s_sal / n, r_sal.evaluations / n),
        Row(case, "shared (6 maps)", "xailab", s_all / n, ev, extra={"vs_saliency": s_all / s_sal}),
    ]
    if separate:
        each = {
            name: _explain_fn(xailab.create(name, model, batch_size=bs, **({"layer": layer} if "cam" in name else {})), x)
            for name in r_all
        }
        total = float(sum(interleaved(each, max(1, rounds // 2), clock)[0].values()))
        out[1].extra["vs_six_separate"] = s_all / total
        out.append(Row(case, "six separate runs", "xailab", total / n, None))
    return out


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="8 CIFAR images, 1 photo, no slow references")
    p.add_argument("--batch-size", type=int, default=64, help="samples per forward pass (both libraries)")
    p.add_argument("--slow-images", type=int, default=None,
                   help="photos for Score-CAM (both libraries) and pytorch-grad-cam's Ablation-CAM "
                        "on ResNet-18 (default all 4; 0 skips the slow references)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-reference", action="store_true", help="skip pytorch-grad-cam")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds of the fast rows (best of)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall seconds, or the process's CPU seconds (use with --threads 1 on a shared machine)")
    p.add_argument("--only-gradient", action="store_true",
                   help="only the gradient CAMs and the shared pass (no Ablation-/Score-CAM)")
    p.add_argument("--no-separate", dest="separate", action="store_false",
                   help="skip timing the six shared methods one by one")
    p.add_argument("--skip", nargs="*", default=[], choices=["cifar", "resnet"])
    p.add_argument("--json", help="write the rows as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_cifar, n_img = (8, 1) if args.quick else (32, 4)
    slow = args.slow_images if args.slow_images is not None else (0 if args.quick else n_img)
    if args.quick:
        args.rounds = 1
    rows: list[Row] = []
    if "cifar" not in args.skip:
        rows += bench_case(f"cifar-cnn x{n_cifar}", cifar_cnn(), cifar_batch(n_cifar), "features.21", args,
                           0 if args.quick else n_cifar, warm=True)
    if "resnet" not in args.skip:
        rows += bench_case(f"resnet18 x{n_img}", resnet18(), imagenet_batch(n_img), "layer4", args,
                           min(slow, n_img), warm=False)
    print_table(rows, f"CAM family (threads={torch.get_num_threads()}, batch_size={args.batch_size})")
    print()
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main(sys.argv[1:])
