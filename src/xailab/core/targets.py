"""Which class to explain: turning a user's target spec into class indices.

A target spec names, for every image, one or more classes to explain:

* ``"true"``: the image's label (``labels`` must be given);
* ``"top1"``, ``"top2"``, ... (or ``"top"`` = ``"top1"``, ``"second"`` = ``"top2"``): the class at
  that rank of the model's scores, 1 being the most likely;
* ``"least"``: the least likely class;
* ``"all"``: every class, in index order;
* an ``int``: that class index for every image;
* a 1-D tensor / sequence of ``len(images)`` ints: one class per image;
* a list mixing the above: several targets per image, explained in one call.

``resolve_targets`` returns a ``LongTensor [N, T]`` and the ``T`` names of the columns.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TypeAlias

import torch
from torch import Tensor

from xailab.core.errors import TargetError

TargetSpec: TypeAlias = "int | str | Tensor | Sequence[int] | Sequence[int | str | Tensor]"

_RANK = re.compile(r"^top(\d*)$")
_ALIASES = {"top": "top1", "pred": "top1", "predicted": "top1", "second": "top2", "third": "top3"}


def _column(
    spec: int | str | Tensor | Sequence[int],
    logits: Tensor,
    labels: Tensor | None,
) -> tuple[Tensor, str]:
    n, k = logits.shape
    if isinstance(spec, str):
        name = _ALIASES.get(spec.lower(), spec.lower())
        if name == "true":
            if labels is None:
                raise TargetError("target 'true' needs the images' labels (pass labels=...)")
            col = torch.as_tensor(labels, dtype=torch.long, device=logits.device).reshape(-1)
            if col.numel() != n:
                raise TargetError(f"got {col.numel()} labels for {n} images")
            _check_range(col, k, "label")
            return col, "true"
        if name == "least":
            return logits.argmin(dim=1), "least"
        m = _RANK.match(name)
        if m:
            rank = int(m.group(1) or 1)
            if not 1 <= rank <= k:
                raise TargetError(f"target '{spec}': rank must be between 1 and {k} (the number of classes)")
            order = logits.argsort(dim=1, descending=True)
            return order[:, rank - 1], f"top{rank}"
        raise TargetError(
            f"unknown target '{spec}': use 'true', 'top1', 'top2', ..., 'least', 'all', "
            "a class index, or one class index per image"
        )
    if isinstance(spec, bool):
        raise TargetError("a target cannot be a bool")
    if isinstance(spec, int):
        col = torch.full((n,), spec, dtype=torch.long, device=logits.device)
        _check_range(col, k, "target class")
        return col, f"class{spec}"
    col = torch.as_tensor(spec, dtype=torch.long, device=logits.device).reshape(-1)
    if col.numel() != n:
        raise TargetError(f"got {col.numel()} per-image targets for {n} images")
    _check_range(col, k, "target class")
    return col, "given"


def _check_range(col: Tensor, k: int, what: str) -> None:
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= k):
        bad = col[(col < 0) | (col >= k)][0].item()
        raise TargetError(f"{what} {bad} is out of range: the model has {k} classes (0..{k - 1})")


def _is_per_image(spec: object, n: int) -> bool:
    """A flat sequence of ints of length n is one target per image, not n target columns."""
    if isinstance(spec, Tensor):
        return spec.dim() == 1
    if isinstance(spec, Sequence) and not isinstance(spec, str):
        return len(spec) == n and all(isinstance(s, int) and not isinstance(s, bool) for s in spec)
    return False


def resolve_targets(
    spec: TargetSpec,
    logits: Tensor,
    labels: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, list[str]]:
    """Resolve ``spec`` against the model's ``logits [N, K]``: ``(targets [N, T], names)``."""
    if logits.dim() != 2:
        raise TargetError(f"the model must return logits of shape [N, classes], got {tuple(logits.shape)}")
    n, k = logits.shape
    lab = None if labels is None else torch.as_tensor(labels)
    if isinstance(spec, str) and spec.lower() == "all":
        every = torch.arange(k, device=logits.device).expand(n, k).clone()
        return every, [f"class{i}" for i in range(k)]
    if isinstance(spec, (str, int)) or _is_per_image(spec, n):
        col, name = _column(spec, logits, lab)  # type: ignore[arg-type]
        return col[:, None], [name]
    if isinstance(spec, Tensor) and spec.dim() == 2:
        if spec.shape[0] != n:
            raise TargetError(f"a [N, T] target tensor needs N={n} rows, got {spec.shape[0]}")
        t = spec.to(dtype=torch.long, device=logits.device)
        _check_range(t.reshape(-1), k, "target class")
        return t, [f"given{j}" for j in range(t.shape[1])]
    if not isinstance(spec, Sequence) or len(spec) == 0:
        raise TargetError(f"cannot read target spec {spec!r}")
    cols: list[Tensor] = []
    names: list[str] = []
    for s in spec:
        if isinstance(s, str) and s.lower() == "all":
            raise TargetError("'all' cannot be combined with other targets")
        col, name = _column(s, logits, lab)
        cols.append(col)
        names.append(name)
    return torch.stack(cols, dim=1), names


def parse_target_list(text: str) -> list[int | str]:
    """Parse a CLI target list such as ``"true,top1,top2,least"`` or ``"3,5"``."""
    out: list[int | str] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        out.append(int(part) if part.lstrip("-").isdigit() else part)
    if not out:
        raise TargetError("empty target list")
    return out
