"""Explain images with one or more methods and targets; write maps, tables and PNG overlays into a run.

Examples:
  xailab explain --model resnet20 --weights resnet20.safetensors --images cifar10:test:16 \\
      --data-root ../shared/data/cifar10-jpg.tar.gz --methods saliency,integrated_gradients,gradcam \\
      --targets true,top1,top2,least --out runs/explain
  xailab explain --model efficientnet_lite0 --pretrained --images photos/ --methods lime \\
      --set lime.num_samples=500 --out runs/photos
  xailab explain --model small_cnn --weights best.safetensors --images fashion_mnist:test:16 \\
      --methods gradient_shap --set gradient_shap.background=fashion_mnist:train:100 --out runs/shap
  xailab explain ... --backend ray --workers 2 --shard-size 256     # shards over Ray workers, resumable
"""

from __future__ import annotations

import argparse
import ast
from typing import Any

HELP = "explain images with attribution methods into a run (maps, tables, PNG overlays)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--model", required=True, help="zoo name, TorchScript file, or package.module:factory")
    p.add_argument("--weights", help="weights file (safetensors, or a state dict; never unpickled)")
    p.add_argument("--pretrained", action="store_true", help="a zoo model with its published weights")
    p.add_argument("--num-classes", type=int, help="number of classes of a zoo model, if not its default")
    p.add_argument("--class-names", help="file of class names: a JSON list, or one name per line")
    p.add_argument("--images", required=True,
                   help="image files (comma-separated), a folder, or dataset:split[:N], e.g. cifar10:test:16")
    p.add_argument("--data-root", help="where the dataset of --images lies (folder or archive)")
    p.add_argument("--methods", required=True,
                   help="comma-separated method names (see `xailab methods`); NAME=METHOD runs METHOD under "
                        "its own NAME, so several settings of one method sit side by side "
                        "(ig_black=integrated_gradients,ig_noise=integrated_gradients --set ig_black.baseline=black ...)")
    p.add_argument("--targets", default="top1", help="comma-separated: true, top1, top2, ..., least, all, or class indices")
    p.add_argument("--layer", help="layer for CAM methods (default: the last conv block)")
    p.add_argument("--set", action="append", default=[], metavar="METHOD.PARAM=VALUE",
                   help="a method parameter, e.g. integrated_gradients.n_steps=64 (repeatable)")
    p.add_argument("--batch-size", type=int, default=64, help="most samples in one forward pass")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="cheap settings (few samples/steps) for a first look")
    p.add_argument("--png", choices=("none", "grid", "all"), default="grid",
                   help="PNG overlays: one grid of methods x targets per image (default), also one figure "
                        "per image and method with its colour bar (all), or none")
    p.add_argument("--no-png", dest="png", action="store_const", const="none", help="same as --png none")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto")
    p.add_argument("--out", required=True, help="run directory (created; reused to resume)")
    from xailab.distributed.options import add_backend_arguments

    add_backend_arguments(p)


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    from xailab.core.errors import InputError

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, param = key.partition(".")
        if not sep or not dot or not method or not param:
            raise InputError(f"--set expects METHOD.PARAM=VALUE, got {item!r}")
        try:
            parsed: Any = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare word: a string
        out.setdefault(method, {})[param] = parsed
    return out


def read_class_names(path: str) -> list[str]:
    import json
    from pathlib import Path

    from xailab.core.errors import InputError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"class-names file not found: {path}")
    text = p.read_text(encoding="utf-8")
    if text.lstrip().startswith(("[", "{")):
        data = json.loads(text)
        if isinstance(data, dict):  # {"0": ["n01440764", "tench"], ...} or {"0": "tench"}
            return [v[-1] if isinstance(v, list) else str(v) for _, v in sorted(data.items(), key=lambda kv: int(kv[0]))]
        return [str(v) for v in data]
    return [line.strip() for line in text.splitlines() if line.strip()]


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet class names, as torchvision ships them (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from xailab.core.targets import parse_target_list
    from xailab.data import load_images
    from xailab.distributed.options import backend_from_args
    from xailab.explain import explain_to_run, method_names
    from xailab.models import get_preprocessing, load_model

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    labels_ = method_names(methods)  # checked before anything loads
    targets = parse_target_list(args.targets)
    params = parse_sets(args.set)
    backend = backend_from_args(args)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    if args.pretrained:
        from xailab.models import create_model

        model = create_model(args.model, pretrained=True, num_classes=args.num_classes).to(device)
    else:
        model = load_model(args.model, args.weights, num_classes=args.num_classes).to(device)
    prep = get_preprocessing(model)
    images, labels, names, dataset = load_images(args.images, prep, root=args.data_root)
    norm = prep if prep is not None else (dataset.preprocessing if dataset is not None and dataset.normalize else None)
    display = norm.denormalize(images) if norm is not None else images
    class_names = list(dataset.classes) if dataset is not None else None
    if args.class_names:
        class_names = read_class_names(args.class_names)
    elif class_names is None and args.pretrained and _num_outputs(model) == 1000:
        class_names = imagenet_class_names()
    for kw in params.values():  # a background given as images: load them as the explained ones
        bg = kw.get("background")
        if isinstance(bg, str) and (":" in bg or Path(bg).exists()):
            kw["background"] = load_images(bg, prep, root=args.data_root)[0].to(device)
    print(f"explaining {len(images)} images with {', '.join(labels_)} for targets {', '.join(map(str, targets))}")
    run_ = explain_to_run(
        model, images.to(device), out=args.out, methods=methods,
        targets=targets if len(targets) > 1 else targets[0], labels=labels, names=names,
        class_names=class_names, display=display, method_params=params, layer=args.layer,
        mean=norm.mean if norm is not None else None, std=norm.std if norm is not None else None,
        batch_size=args.batch_size, seed=args.seed, quick=args.quick, png=args.png,
        config={"model": args.model, "weights": args.weights, "pretrained": bool(args.pretrained),
                "num_classes": args.num_classes, "images": args.images, "data_root": args.data_root,
                "device": device, "preprocessing": prep.to_dict() if prep is not None else None},
        backend=backend,
    )
    print(f"run: {run_.path}")
    if args.png != "none":
        print(f"overlays: {run_.path / 'files' / 'overlays'}")
    return 0


def _num_outputs(model: object) -> int | None:
    from torch import nn

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)] if isinstance(model, nn.Module) else []
    return linears[-1].out_features if linears else None
