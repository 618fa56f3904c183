"""The four classic XAI studies, each a recipe of ``xailab`` commands (``xailab study NAME``).

A study is a module of this package that registers a :class:`Study`: the options it takes
(the user's own model, weights and data, or the defaults that run offline here) and the steps
it runs, as data. ``xailab study NAME --dry-run`` prints the commands without running them;
``docs/studies/NAME.md`` explains what each step shows and how to read the report.

    from xailab.studies import STUDIES
    study = STUDIES.get("cifar10_cnn")
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from xailab.core.registry import Registry
from xailab.steps import Step

STUDIES: Registry[Study] = Registry("study", loader="xailab.studies._all")


@dataclass(frozen=True)
class Study:
    """One study: a title, its options, and the steps it runs for the parsed options."""

    name: str
    title: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    steps: Callable[[argparse.Namespace], list[Step]]
    summary: str = ""  # one paragraph: what the study shows (shown by --help)


def register_study(study: Study) -> Study:
    """Add ``study`` to :data:`STUDIES` under its name."""
    STUDIES.register(study.name)(study)
    return study


def gradient_shap_background(data: str, n: int, methods: Sequence[str] = ("gradient_shap",)) -> list[str]:
    """``explain`` flags that draw the SHAP methods' baselines (GradientSHAP, DeepLIFT-SHAP) from
    ``n`` training images of ``data`` (SHAP's background set) instead of uniform noise."""
    return [x for m in methods for x in ("--set", f"{m}.background={data}:train:{n}")]


def sized(args: argparse.Namespace, key: str, full: Mapping[str, object], quick: Mapping[str, object]) -> object:
    """The option ``key`` as given, else the study's full or ``--quick`` default."""
    given = getattr(args, key, None)
    if given is not None:
        return given
    return (quick if args.quick else full)[key]
