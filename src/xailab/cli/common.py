"""Options shared by the commands: the model options (one :func:`add_model_arguments`, one
:class:`~xailab.jobs.model.ModelSpec`), and small parsers of comma-separated lists.

Not a command (it defines no ``run``).
"""

from __future__ import annotations

import argparse
import ast
from typing import Any


def add_model_arguments(
    p: argparse.ArgumentParser, *, required: bool = True, from_run: bool = False, device: str = "auto"
) -> None:
    """``--model --weights --pretrained --random-weights --num-classes --mean --std --input-range --device``."""
    default = " (default: the run's)" if from_run else ""
    p.add_argument("--model", required=required and not from_run,
                   help=f"zoo name, TorchScript file, or package.module:factory{default}")
    p.add_argument("--weights", help=f"weights file (safetensors, or a state dict; never unpickled){default}")
    p.add_argument("--pretrained", action="store_true", help="a zoo model with its published weights")
    p.add_argument("--random-weights", action="store_true",
                   help="use a zoo model's random initialisation on purpose (a sanity study); refused otherwise")
    p.add_argument("--num-classes", type=int, help="number of classes of a zoo model, if not its default")
    add_normalization_arguments(p)
    p.add_argument("--device", default=device, help="cpu, cuda, cuda:N or auto")


def add_normalization_arguments(p: argparse.ArgumentParser, trains: bool = False) -> None:
    """``--mean --std --input-range``: the inputs the model takes (``trains``: will be trained on)."""
    what = "will be trained with" if trains else "was trained with"
    p.add_argument("--mean", type=floats, metavar="M[,M,M]",
                   help=f"per-channel mean the model {what} (pixels in [0, 1]), with --std")
    p.add_argument("--std", type=floats, metavar="S[,S,S]", help=f"per-channel std the model {what}")
    p.add_argument("--input-range", type=floats, metavar="LOW,HIGH",
                   help="the model takes pixels scaled to [LOW, HIGH] instead of --mean/--std, e.g. --input-range=-1,1 "
                        "(with '=' when LOW is negative) or --input-range 0,255")


def normalization(args: argparse.Namespace) -> dict[str, Any]:
    """``{"mean", "std", "input_range"}`` of :func:`add_normalization_arguments`' options."""
    return {"mean": getattr(args, "mean", None), "std": getattr(args, "std", None), "input_range": _input_range(args)}


def model_spec(args: argparse.Namespace) -> Any:
    """The :class:`~xailab.jobs.model.ModelSpec` of the model options."""
    from xailab.jobs.model import ModelSpec

    rng = _input_range(args)
    return ModelSpec(
        name=args.model or "", weights=args.weights, pretrained=bool(getattr(args, "pretrained", False)),
        num_classes=getattr(args, "num_classes", None), random_weights=bool(getattr(args, "random_weights", False)),
        mean=getattr(args, "mean", None), std=getattr(args, "std", None),
        input_range=rng, device=str(getattr(args, "device", "auto")),
    )


def model_override(args: argparse.Namespace) -> dict[str, Any]:
    """The model options the user gave, for a job that defaults to the run's model."""
    rng = _input_range(args)
    return {"name": args.model, "weights": args.weights, "pretrained": getattr(args, "pretrained", False),
            "num_classes": args.num_classes, "random_weights": getattr(args, "random_weights", False),
            "mean": getattr(args, "mean", None), "std": getattr(args, "std", None),
            "input_range": rng,
            "device": args.device}


def _input_range(args: argparse.Namespace) -> tuple[float, float] | None:
    rng = getattr(args, "input_range", None)
    if rng is None:
        return None
    if len(rng) != 2:
        from xailab.core.errors import InputError

        raise InputError(f"--input-range takes LOW,HIGH (two numbers), got {len(rng)} values")
    return (rng[0], rng[1])


def floats(text: str) -> tuple[float, ...]:
    """``"0.5,0.5,0.5"`` -> ``(0.5, 0.5, 0.5)``."""
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def names(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def parse_sets(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["METHOD.PARAM=VALUE", ...]`` -> ``{METHOD: {PARAM: value}}`` (values read as Python literals)."""
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
