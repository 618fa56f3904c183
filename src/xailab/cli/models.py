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
    """Print the matching models from the catalogue (no torch); returns the exit status."""
    from xailab.cli.listings import catalogue, matching, model_lines

    if args.pattern.startswith("timm:"):
        return _list_timm(args.pattern.removeprefix("timm:") or "*")
    rows = catalogue()["models"]
    names = matching(rows, args.pattern, args.family)
    if not names:
        from xailab.core.errors import InputError

        raise InputError(f"no model matches {args.pattern!r}" + (f" in family {args.family!r}" if args.family else ""))
    print("\n".join(model_lines(rows, names, args.details)))
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
