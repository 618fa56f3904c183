"""AttnLRP on a ViT-Tiny/16 at 224 x 224 (random weights): xailab's ``attnlrp`` against our
``attention_gradient``, the floor (one forward + backward per image) and lxt where it runs.

Two models of the same size: timm's ``vit_tiny_patch16_224`` and torchvision's
``VisionTransformer`` with ViT-Tiny's dimensions (lxt maps torchvision's ViT only). lxt runs, if
``XAILAB_LXT_SITE`` names a folder holding it (``pip install --no-deps --target DIR lxt``), in a
subprocess (it patches ``torch.nn`` classes globally), timed there with its own floor (first the
floor, then lxt: not interleaved); compare the ratios to the floor, not seconds across processes. ``cons`` is the median of the input
relevance sum over the logit. CPU seconds (``time.process_time``) with ``--threads 1``, best of
``--rounds`` interleaved rounds.

    python -m bench.bench_attnlrp --threads 1 --rounds 3 --images 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import torch
from torch import nn

import xailab
from bench.bench_gradient import interleaved
from bench.harness import Row, print_table, ratio_rows, save_json

LXT_SCRIPT = r'''
import sys, time, types, importlib.util, json, torch
from functools import partial
site, images, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
sys.path.insert(0, site)
spec = importlib.util.find_spec("lxt")
models = types.ModuleType("lxt.efficient.models")  # lxt 2.1's __init__ imports transformers-4-only code
models.__path__ = [str(__import__("pathlib").Path(spec.origin).parent / "efficient" / "models")]
models.get_default_map = lambda module: {}
sys.modules["lxt.efficient.models"] = models
from lxt.efficient import monkey_patch
from lxt.efficient.patches import patch_method, non_linear_forward, layer_norm_forward
from lxt.efficient.rules import divide_gradient
from torchvision.models import vision_transformer as vt

def build():
    torch.manual_seed(0)
    m = vt.VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192,
                             mlp_dim=768, num_classes=1000).eval()
    torch.nn.init.normal_(m.heads.head.weight, std=0.02)
    for p in m.parameters():
        p.requires_grad_(False)
    return m

x = torch.rand(images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
def run(model):
    xi = x.clone().requires_grad_(True)
    y = model(xi)
    y.gather(1, y.argmax(1, keepdim=True)).sum().backward()
    return xi * xi.grad
def best_of(model):
    best = float("inf")
    for r in range(rounds + 1):  # the first is a warm-up
        t0 = time.process_time()
        run(model)
        if r:
            best = min(best, time.process_time() - t0)
    return best
best = {"floor": best_of(build())}  # before lxt patches the torch.nn classes (not interleaved)
def mha(self, q, k, v, *a, **kw):
    return self.original_forward(divide_gradient(q, 4), divide_gradient(k, 4), divide_gradient(v, 2), *a, **kw)
monkey_patch(vt, {vt.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
                  vt.nn.LayerNorm: partial(patch_method, layer_norm_forward),
                  vt.nn.MultiheadAttention: partial(patch_method, mha, keep_original=True)})
best["lxt"] = best_of(build())
print(json.dumps({k: v / images for k, v in best.items()}))
'''


def tv_tiny() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192, mlp_dim=768,
                              num_classes=1000).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts the head at zero (logits 0)
    return model


def lxt_rows(images: int, rounds: int) -> list[Row]:
    site = os.environ.get("XAILAB_LXT_SITE")
    if not site:
        print("lxt: not timed (set XAILAB_LXT_SITE to a folder holding lxt)")
        return []
    run = subprocess.run([sys.executable, "-c", LXT_SCRIPT, site, str(images), str(rounds)],
                         capture_output=True, text=True, timeout=3000)
    if run.returncode != 0:
        print("lxt failed:", run.stderr[-1000:])
        return []
    got = json.loads(run.stdout.strip().splitlines()[-1])
    case = "tv ViT-Ti/16 (lxt)"
    return [Row(case, "attnlrp eps=0", "lxt", got["lxt"]), Row(case, "forward+backward", "floor", got["floor"]),
            Row(case, "attnlrp / floor", "ratio", got["lxt"] / got["floor"])]


def main(argv: list[str] | None = None) -> None:
    import timm

    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=["wall", "cpu"], default="cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {"timm ViT-Ti/16": timm.create_model("vit_tiny_patch16_224", num_classes=1000).eval(),
              "tv ViT-Ti/16": tv_tiny()}
    x = torch.rand(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    rows: list[Row] = []
    for case, model in models.items():
        targets = model(x).argmax(1)

        def floor(model: nn.Module = model, targets: torch.Tensor = targets) -> Any:
            xi = x.clone().requires_grad_(True)
            torch.autograd.grad(model(xi).gather(1, targets[:, None]).sum(), xi)

        fns = {
            "attnlrp/xailab": lambda m=model, t=targets: xailab.create("attnlrp", m).explain(x, target=t),
            "attnlrp eps=0/xailab": lambda m=model, t=targets: xailab.create("attnlrp", m, epsilon=0.0)
            .explain(x, target=t),
            "attention_gradient/xailab": lambda m=model, t=targets: xailab.create("attention_gradient", m)
            .explain(x, target=t),
            "forward+backward/floor": floor,
        }
        best, last = interleaved(fns, args.rounds, args.clock)
        res = last["attnlrp/xailab"]
        cons = float((res.extras["relevance_sum"] / res.extras["score"]).median())
        for k, v in best.items():
            method, impl = k.split("/")
            rows.append(Row(case, method, impl, v / args.images,
                            extra={"cons": cons} if method == "attnlrp" else {}))
        base = best["forward+backward/floor"]
        rows.append(Row(case, "attnlrp / floor", "ratio", best["attnlrp/xailab"] / base))
    rows += lxt_rows(args.images, args.rounds)
    print_table(rows, f"ViT-Tiny/16 at 224, {args.images} images, {args.clock} clock, "
                      f"{torch.get_num_threads()} thread(s)")
    for line in ratio_rows(rows):
        print(line)
    save_json(rows, args.json)


if __name__ == "__main__":
    main()
