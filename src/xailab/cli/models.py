"""List the models of the zoo: name, family, input, classes, pretrained weights, description.

``xailab models 'timm:vit_*'`` lists timm's architectures instead (any of them loads as
``--model timm:NAME``); a local Hugging Face folder loads as ``--model hf:PATH``.
"""

from __future__ import annotations

import argparse

HELP = "list the registered models"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this command."""
    p.add_argument("pattern", nargs="?", default="*",
                   help="shell-style filter, e.g. 'resnet*'; 'timm:vit_*' lists timm's architectures")
    p.add_argument("--family", help="cnn, resnet_cifar, resnet, vgg, efficientnet, ...")
    p.add_argument("--details", action="store_true", help="also print preprocessing and weights")


def run(args: argparse.Namespace) -> int:
    """Build the job\'s spec from the options, run the job, print; returns the exit status."""
    from xailab.models import MODELS, model_info

    if args.pattern.startswith("timm:"):
        return _list_timm(args.pattern.removeprefix("timm:") or "*")
    names = MODELS.available(args.pattern, args.family)
    if not names:
        from xailab.core.errors import InputError

        raise InputError(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    print(f"{'name':20s} {'family':13s} {'input':10s} {'classes':>7s}  {'pretrained':10s} description")
    for n in names:
        info = model_info(n)
        size = info["input_size"]
        shape = f"{info['in_channels']}x{size[0]}x{size[1]}" if size else f"{info['in_channels']}xHxW"
        pre = "yes" if info["weights"] else "-"
        aliases = MODELS.aliases(n)
        also = f" (also: {', '.join(aliases)})" if aliases else ""
        print(f"{n:20s} {info['family']:13s} {shape:10s} {info['num_classes']:7d}  {pre:10s} {info['description']}{also}")
        if args.details:
            mean = ", ".join(f"{v:.4f}" for v in info["mean"])
            std = ", ".join(f"{v:.4f}" for v in info["std"])
            resize = f"resize {info['resize']}, centre-crop, " if info["resize"] else ""
            print(f"{'':20s} preprocessing: {resize}mean ({mean}), std ({std})")
            if info["weights"]:
                print(f"{'':20s} weights: {info['weights']}")
    print("also: --model timm:NAME (xailab models 'timm:*'), hf:PATH (a Hugging Face folder), "
          "package.module:factory, a TorchScript file")
    return 0


def _list_timm(pattern: str) -> int:
    from xailab.models.external import list_timm

    names = list_timm(pattern)
    if not names:
        from xailab.core.errors import InputError

        raise InputError(f"no timm model matches {pattern!r}")
    for n in names:
        print(f"timm:{n}")
    print(f"{len(names)} timm architectures; load one with --model timm:NAME "
          "(keyword arguments after commas: timm:NAME,img_size=32,num_classes=10)")
    return 0
