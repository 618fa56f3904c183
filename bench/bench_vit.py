"""Vision transformers: Grad-CAM and the attention methods on ViT-Small/16 at 224 x 224.

Random weights (no pretrained weights are reachable offline; the cost does not depend on them).
For Grad-CAM: xailab against pytorch-grad-cam with its ``reshape_transform`` on the same layer
(``blocks[-1].norm1``), and the floor (one forward + backward per image). Attention rollout
(one forward per image) and gradient-weighted attention (one forward + backward per image and
target) have no installed reference: their floor is shown. Peak memory (RSS) of Integrated
Gradients at ``batch_size=16``. Run in turns, best of ``--rounds``; ``--clock cpu`` with
``--threads 1`` on a shared machine.

    python -m bench.bench_vit --threads 1 --clock cpu --rounds 3 --images 2
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import Tensor

import xailab
from bench.bench_gradient import interleaved
from bench.harness import Row, peak_memory_mb, print_table, ratio_rows, save_json


def reshape(t: Tensor) -> Tensor:
    return t[:, 1:, :].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)


def main(argv: list[str] | None = None) -> None:
    import timm
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", num_classes=1000).eval()
    x = torch.rand(args.images, 3, 224, 224)
    targets = model(x).argmax(1)
    layer = model.blocks[-1].norm1

    def floor(backward: bool) -> Any:
        with torch.set_grad_enabled(backward):
            xi = x.clone().requires_grad_(backward)
            out = model(xi)
            if backward:
                torch.autograd.grad(out.gather(1, targets[:, None]).sum(), xi)

    def reference() -> Any:
        with GradCAM(model, [layer], reshape_transform=reshape) as cam:
            return cam(x, [ClassifierOutputTarget(int(t)) for t in targets])

    fns = {
        "gradcam/xailab": lambda: xailab.create("gradcam", model, layer=layer).explain(x, target=targets),
        "gradcam/pytorch-grad-cam": reference,
        "attention_rollout/xailab": lambda: xailab.create("attention_rollout", model).explain(x, target=targets),
        "attention_gradient/xailab": lambda: xailab.create("attention_gradient", model).explain(x, target=targets),
        "forward/floor": lambda: floor(False),
        "forward+backward/floor": lambda: floor(True),
    }
    best, _ = interleaved(fns, args.rounds, args.clock)
    rows = [Row("vit_small_patch16_224", k.split("/")[0], k.split("/")[1], v / args.images) for k, v in best.items()]
    mb, _ = peak_memory_mb(lambda: xailab.create("integrated_gradients", model, n_steps=16, batch_size=16)
                           .explain(x[:1], target=targets[:1]))
    rows.append(Row("vit_small_patch16_224", "integrated_gradients n_steps=16", "xailab", float("nan"), peak_mb=mb))
    print_table(rows, f"ViT-Small/16 at 224, {args.images} images, {args.clock} clock")
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main()
