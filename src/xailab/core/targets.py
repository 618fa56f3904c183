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
:class:`TargetPlan` reads a spec before any score exists (everything that can be checked
without the model is checked then) and resolves it later for any run of consecutive images,
so a method can take the targets of a chunk from its own forward pass.

    plan = TargetPlan(["true", "top1"], n=len(images), labels=labels)
    targets, names = plan.resolve(logits_of_images_8_to_16, slice(8, 16))
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


class _Column:
    """One target column: ``kind`` in true / least / rank / class / given, with its value."""

    def __init__(self, kind: str, name: str, value: int = 0, per_image: Tensor | None = None,
                 spec: object = None, what: str = "target class") -> None:
        self.kind, self.name, self.value, self.per_image, self.spec, self.what = (
            kind, name, value, per_image, spec, what)


def _column_plan(spec: int | str | Tensor | Sequence[int], n: int, labels: Tensor | None) -> _Column:
    if isinstance(spec, str):
        name = _ALIASES.get(spec.lower(), spec.lower())
        if name == "true":
            if labels is None:
                raise TargetError("target 'true' needs the images' labels (pass labels=...)")
            col = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            if col.numel() != n:
                raise TargetError(f"got {col.numel()} labels for {n} images")
            return _Column("given", "true", per_image=col, what="label")
        if name == "least":
            return _Column("least", "least")
        m = _RANK.match(name)
        if m:
            rank = int(m.group(1) or 1)
            return _Column("rank", f"top{rank}", value=rank, spec=spec)
        raise TargetError(
            f"unknown target '{spec}': use 'true', 'top1', 'top2', ..., 'least', 'all', "
            "a class index, or one class index per image"
        )
    if isinstance(spec, bool):
        raise TargetError("a target cannot be a bool")
    if isinstance(spec, int):
        return _Column("class", f"class{spec}", value=spec)
    col = torch.as_tensor(spec, dtype=torch.long).reshape(-1)
    if col.numel() != n:
        raise TargetError(f"got {col.numel()} per-image targets for {n} images")
    return _Column("given", "given", per_image=col)


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


class TargetPlan:
    """A target spec for ``n`` images, read before the model's scores exist.

    The constructor checks what needs no scores (unknown names, ``"true"`` without labels, label
    and per-image counts); :meth:`resolve` turns the spec into class indices for a run of
    consecutive images from their logits, checking ranges and ranks against the number of
    classes. ``n_targets`` is the number of columns (``None`` for ``"all"``: it is the number
    of classes, unknown until scores exist).
    """

    def __init__(self, spec: TargetSpec, n: int, labels: Tensor | Sequence[int] | None = None) -> None:
        self.n = n
        self.every = isinstance(spec, str) and spec.lower() == "all"
        self.columns: list[_Column] = []
        self._checked_k: int | None = None
        if self.every:
            return
        lab = None if labels is None else torch.as_tensor(labels)
        if isinstance(spec, (str, int)) or _is_per_image(spec, n):
            self.columns = [_column_plan(spec, n, lab)]  # type: ignore[arg-type]
        elif isinstance(spec, Tensor) and spec.dim() == 2:
            if spec.shape[0] != n:
                raise TargetError(f"a [N, T] target tensor needs N={n} rows, got {spec.shape[0]}")
            t = spec.detach().to(dtype=torch.long, device="cpu")
            self.columns = [_Column("given", f"given{j}", per_image=t[:, j]) for j in range(t.shape[1])]
        else:
            if not isinstance(spec, Sequence) or isinstance(spec, str) or len(spec) == 0:
                raise TargetError(f"cannot read target spec {spec!r}")
            for s in spec:
                if isinstance(s, str) and s.lower() == "all":
                    raise TargetError("'all' cannot be combined with other targets")
                self.columns.append(_column_plan(s, n, lab))

    @property
    def n_targets(self) -> int | None:
        return None if self.every else len(self.columns)

    def names(self, k: int) -> list[str]:
        """The column names (``k``: the number of classes, needed for ``"all"``)."""
        return [f"class{i}" for i in range(k)] if self.every else [c.name for c in self.columns]

    def check(self, k: int) -> None:
        """Check every column against ``k`` classes (whole per-image columns at once)."""
        if self._checked_k == k:
            return
        for c in self.columns:
            if c.kind == "rank" and not 1 <= c.value <= k:
                raise TargetError(f"target '{c.spec}': rank must be between 1 and {k} (the number of classes)")
            if c.kind == "class":
                _check_range(torch.tensor([c.value]), k, "target class")
            if c.per_image is not None:
                _check_range(c.per_image, k, c.what)
        self._checked_k = k

    def resolve(self, logits: Tensor, images: slice | None = None) -> tuple[Tensor, list[str]]:
        """``(targets [m, T], names)`` for the images ``images`` (default all) given their ``logits [m, K]``."""
        if logits.dim() != 2:
            raise TargetError(f"the model must return logits of shape [N, classes], got {tuple(logits.shape)}")
        m, k = logits.shape
        sl = slice(0, self.n) if images is None else images
        if len(range(*sl.indices(self.n))) != m:
            raise TargetError(f"got logits for {m} images where {len(range(*sl.indices(self.n)))} were expected")
        self.check(k)
        dev = logits.device
        if self.every:
            return torch.arange(k, device=dev).expand(m, k).clone(), self.names(k)
        cols: list[Tensor] = []
        for c in self.columns:
            if c.per_image is not None:
                cols.append(c.per_image[sl].to(dev))
            elif c.kind == "class":
                cols.append(torch.full((m,), c.value, dtype=torch.long, device=dev))
            elif c.kind == "least":
                cols.append(logits.argmin(dim=1))
            else:  # rank
                cols.append(logits.argsort(dim=1, descending=True)[:, c.value - 1])
        return torch.stack(cols, dim=1), self.names(k)


def resolve_targets(
    spec: TargetSpec,
    logits: Tensor,
    labels: Tensor | Sequence[int] | None = None,
) -> tuple[Tensor, list[str]]:
    """Resolve ``spec`` against the model's ``logits [N, K]``: ``(targets [N, T], names)``."""
    if logits.dim() != 2:
        raise TargetError(f"the model must return logits of shape [N, classes], got {tuple(logits.shape)}")
    return TargetPlan(spec, logits.shape[0], labels).resolve(logits)


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
