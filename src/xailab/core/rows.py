"""The (image, target) rows that methods push through the model, and the helpers that batch them.

:class:`RowTargets` holds a chunk's targets, known in advance or (one-pass methods) resolved
from each image's own logits; the functions below size chunks, repeat rows and check logits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from xailab.core.errors import ModelError
from xailab.core.targets import TargetPlan


class RowTargets:
    """The targets of a chunk's (image, target) rows, known or resolved from the rows' own logits.

    Rows are in (image, target) order: row ``r`` is image ``r // T``, target column ``r % T``.
    Known targets (the scoring-pass path) are simply sliced. Otherwise (one-pass methods) the
    method runs its rows through the model in increasing order and calls
    ``rows(lo, hi, logits)`` with each pass's logits: every image whose first row lies in the
    pass gets its targets from that row's logits (the image itself, unchanged), resolved by the
    call's :class:`~xailab.core.targets.TargetPlan`; those logits become the Explanation's.

        rows = RowTargets.from_plan(plan, first_image=0, n_images=4, n_targets=2)
        t = rows.rows(0, 3, logits_of_rows_0_to_2)   # images 0 and 1 resolved; [3] targets
    """

    def __init__(self, targets: Tensor | None, *, plan: TargetPlan | None = None, first_image: int = 0,
                 n_images: int = 0, n_targets: int = 1) -> None:
        self.plan, self.first_image = plan, first_image
        self._targets = targets
        self._logits: Tensor | None = None
        self._done = 0  # images resolved so far
        self.shape = (n_images, n_targets) if targets is None else (targets.shape[0], targets.shape[1])
        if plan is None and targets is None:
            raise ValueError("RowTargets needs known targets or a plan")

    @classmethod
    def known(cls, targets: Tensor) -> RowTargets:
        return cls(targets)

    @classmethod
    def from_plan(cls, plan: TargetPlan, first_image: int, n_images: int, n_targets: int) -> RowTargets:
        return cls(None, plan=plan, first_image=first_image, n_images=n_images, n_targets=n_targets)

    @property
    def lazy(self) -> bool:
        return self.plan is not None

    def rows(self, lo: int, hi: int, logits: Tensor | None = None) -> Tensor:
        """Targets ``[hi - lo]`` of rows ``lo..hi``; ``logits [hi - lo, K]`` are these rows' logits."""
        if self.plan is None:
            assert self._targets is not None
            return self._targets.reshape(-1)[lo:hi]
        t = self.shape[1]
        first, last = -(-lo // t), -(-hi // t)  # the images whose first row lies in lo..hi
        assert self._done == first, "one-pass rows must be resolved in order"
        if last > first:
            if logits is None:
                raise ValueError("one-pass targets need the logits of the rows")
            own = logits[torch.arange(first, last, device=logits.device) * t - lo].detach()
            self.images(first, own)
        assert self._targets is not None
        return self._targets.reshape(-1)[lo:hi]

    def images(self, first: int, logits: Tensor) -> Tensor:
        """Resolve images ``first ..`` (of the chunk) from their own ``logits [m, K]``; their targets."""
        assert self.plan is not None and self._done == first
        m = len(logits)
        start = self.first_image + first
        got, _ = self.plan.resolve(logits, slice(start, start + m))
        if self._targets is None:
            self._targets = got.new_empty(self.shape)
            self._logits = logits.new_empty(self.shape[0], logits.shape[1])
        assert self._logits is not None
        self._targets[first : first + m] = got
        self._logits[first : first + m] = logits.detach()
        self._done = first + m
        return got

    @property
    def targets(self) -> Tensor:
        """All ``[B, T]`` targets (every image must have been resolved)."""
        if self.plan is not None and self._done != self.shape[0]:
            raise RuntimeError(f"only {self._done} of {self.shape[0]} images had their targets resolved")
        assert self._targets is not None
        return self._targets

    @property
    def logits(self) -> Tensor:
        """The ``[B, K]`` logits the targets were resolved from (one-pass methods only)."""
        self.targets  # noqa: B018  (checks completeness)
        if self._logits is None:
            raise RuntimeError("known targets carry no logits")
        return self._logits


def row_targets(targets: Tensor | RowTargets, lo: int, hi: int, logits: Tensor, first_row: int = 0) -> Tensor:
    """Targets of rows ``lo..hi`` of a pass (offset ``first_row`` in the chunk) with these ``logits``."""
    if isinstance(targets, RowTargets):
        return targets.rows(first_row + lo, first_row + hi, logits)
    return targets[lo:hi]


def repeat_rows(x: Tensor, t: int) -> Tensor:
    """The (image, target) rows of ``x``: each image ``t`` times, in ``x``'s memory format.

    ``t == 1`` gives ``x`` itself (no copy). A channels-last batch stays channels-last: CPU
    convolutions run faster in it, and an NCHW copy of a channels-last batch made every
    one-pass method ~15 % slower than the reference libraries, which use the input as it is.
    """
    if t == 1:
        return x
    return keep_format(x.repeat_interleave(t, dim=0), x)


def keep_format(out: Tensor, like: Tensor) -> Tensor:
    """``out`` in channels-last memory format if ``like`` is a channels-last 4-D batch."""
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out


def cat(parts: Sequence[Tensor]) -> Tensor:
    """``torch.cat(parts)``, without the copy when there is only one part."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def expand_targets(targets: Tensor, samples: int) -> Tensor:
    """``[B, T]`` -> ``[B * T * samples]`` in (image, target, sample) order."""
    return targets.reshape(-1, 1).expand(-1, samples).reshape(-1)


def unpack_logits(out: Any, n: int) -> Tensor:
    """The logits ``[n, K]`` in a model's output ``out`` for ``n`` images (the first element of a
    tuple, ``.logits`` of an output object); refuses anything else."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "logits") and not isinstance(out, Tensor):  # HF-style output objects
        out = out.logits
    if not isinstance(out, Tensor):
        raise ModelError(f"the model returned {type(out).__name__}, expected a tensor of logits")
    if out.dim() != 2 or out.shape[0] != n:
        raise ModelError(f"the model must return logits [N, classes]; for {n} images it returned {tuple(out.shape)}")
    return out


def check_logits(out: Any, n: int) -> Tensor:
    """:func:`unpack_logits`, and refuses NaN or infinite values (explaining them would be silently wrong)."""
    out = unpack_logits(out, n)
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).any(dim=1).sum())
        raise ModelError(f"the model returned NaN or infinite logits for {bad} of {n} images")
    return out


def target_scores(logits: Tensor, targets: Tensor, output: str) -> Tensor:
    """The explained score of each row: ``logits[i, targets[i]]``, or its softmax probability
    (``output="probability"``) or log-probability (``"log_probability"``)."""
    if output == "probability":
        logits = torch.softmax(logits, dim=1)
    elif output == "log_probability":
        logits = torch.log_softmax(logits, dim=1)
    return logits.gather(1, targets.reshape(-1, 1)).squeeze(1)


def full_pass_images(samples_per_image: int, batch_size: int) -> int:
    """Images per chunk such that the chunk's samples fill whole passes of ``batch_size``.

    The least number of images whose samples are a multiple of ``batch_size`` when that is
    small; otherwise enough for about 16 passes (at most one part-filled pass in 16). Methods
    that share rows (the gradient engine, the gradient CAMs, the shared pass) use this one rule
    so that the same rows go through the model in the same passes.
    """
    spi = max(1, samples_per_image)
    k = math.lcm(spi, batch_size) // spi
    if k * spi > 16 * batch_size:
        k = -(-16 * batch_size // spi)
    return max(1, k)


def chunked(n: int, size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in steps of ``size``."""
    for lo in range(0, n, max(1, size)):
        yield slice(lo, min(n, lo + size))


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
