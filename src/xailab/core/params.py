"""Checking a method's parameters against what its signature declares, before anything runs.

A parameter annotated ``int`` takes an integer, not ``2.5`` (which ``int()`` would silently make
2) nor ``True``; one annotated ``float`` takes a number, not NaN (infinity where
the range allows it, e.g. IG's ``tol=inf``: never refine); ``bool`` takes ``True``/``False``;
``str`` takes a string. Unions are read name by name (``int | None``); a value of a simple type
(number, string, bool) that no member of the union accepts is refused. Annotations this module
does not understand (``Any``, a ``Literal`` alias) accept anything. Ranges are data on the class,
``ranges = {"n_steps": (1, None)}`` (``Explainer.ranges``), and the refusal names the valid range:

    check_arguments(IntegratedGradients.__init__, (model,), {"n_steps": 2.5}, limits)
    # InputError: n_steps must be an integer in [1, inf), got 2.5
"""

from __future__ import annotations

import ast
import inspect
import math
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from xailab.core.errors import InputError

Limit = tuple[float | None, float | None]
SIMPLE = ("int", "float", "bool", "str", "None")
#: annotation names that never accept a number, a string or a bool
CONTAINERS = ("tuple[", "list[", "Sequence[", "dict[", "Tensor", "nn.Module", "Baseline", "Mapping[")


@cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(fn)


def _members(annotation: object) -> list[str] | None:
    """The names of a string annotation's union, or ``None`` when it accepts anything we cannot tell."""
    if not isinstance(annotation, str):
        return None
    names = [a.strip() for a in _split_union(annotation)]
    for n in names:
        if n not in SIMPLE and not n.startswith(CONTAINERS) and _literal(n) is None:
            return None
    return names


def _literal(name: str) -> tuple[object, ...] | None:
    """The values of ``Literal["a", 1]``, or ``None`` for another name."""
    if not (name.startswith("Literal[") and name.endswith("]")):
        return None
    try:
        values = ast.literal_eval(f"({name[len('Literal['):-1]},)")
    except (ValueError, SyntaxError):
        return None
    return tuple(values)


def _split_union(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def _kind(value: object) -> str | None:
    """The simple annotation name a value is, or ``None`` for other values."""
    if value is None:
        return "None"
    for name, t in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, t):
            return name
    return None


def _range_text(limit: Limit | None) -> str:
    if limit is None:
        return ""
    lo, hi = limit
    return f" in [{'-inf' if lo is None else _num(lo)}, {'inf' if hi is None else _num(hi)}" + (
        ")" if hi is None else "]")


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def check_value(name: str, value: object, annotation: object, limit: Limit | None = None) -> None:
    """Refuse ``value`` for parameter ``name`` unless its annotation and range accept it."""
    names = _members(annotation)
    kind = _kind(value)
    if names is None or kind is None:
        return
    literals = [v for n in names for v in (_literal(n) or ())]
    if any(value == v and type(value) is type(v) for v in literals):
        return
    accepted = kind in names or (kind == "int" and "float" in names)
    wanted = next((n for n in names if n != "None" and _literal(n) is None), "None")
    noun = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
            "None": "none"}.get(wanted, "a " + wanted.split("[")[0])
    if literals:
        noun = f"{' or '.join(repr(v) for v in literals)} or {noun}"
    if not accepted:
        raise InputError(f"{name} must be {noun}{_range_text(limit)}, got {value!r}")
    if kind == "float" and math.isnan(value):  # type: ignore[arg-type]
        raise InputError(f"{name} must be {noun}{_range_text(limit)}, got {value!r}")
    if limit is not None and kind in ("int", "float"):
        lo, hi = limit
        v = float(value)  # type: ignore[arg-type]
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise InputError(f"{name} must be {noun}{_range_text(limit)}, got {value!r}")


def check_arguments(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], limits: Mapping[str, Limit]
) -> None:
    """Check the arguments of one call of ``fn`` (bound as it would bind them) against its
    annotations and ``limits`` (the class's ``ranges``). Arguments that do not bind are left to Python's own error."""
    sig = _signature(fn)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return
    for pname, value in bound.arguments.items():
        p = sig.parameters[pname]
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        check_value(pname, value, p.annotation, limits.get(pname))


def checked_init(init: Callable[..., Any], limits: Callable[[type], Mapping[str, Limit]]) -> Callable[..., Any]:
    """``init`` wrapped so that its own parameters are checked before it runs."""

    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        check_arguments(init, (self, *args), kwargs, limits(type(self)))
        init(self, *args, **kwargs)

    wrapper.__wrapped__ = init  # type: ignore[attr-defined]
    wrapper.__doc__ = init.__doc__
    wrapper.__name__ = init.__name__
    wrapper.__qualname__ = init.__qualname__
    return wrapper


__all__ = ["check_arguments", "check_value", "checked_init"]
