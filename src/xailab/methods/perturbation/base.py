"""The batched evaluator every perturbation method builds on.

A perturbation method turns each image into ``n`` perturbed copies and needs the model's score of
each copy for every target. :meth:`PerturbationExplainer.evaluate` walks the copies of all images
of a chunk in one flat order (image 0's copies, then image 1's, ...) and cuts that order into
forward passes of exactly ``batch_size`` rows, so the copies of several images share a pass and
only the last pass of the whole chunk is partly filled. The perturbed copies go through a copy of
the model with its BatchNorm layers folded into the convolutions before them (same function,
cheaper pass; ``fold_batchnorm=False`` to use the model as it is, see
:mod:`~xailab.methods.perturbation.fold`); on the CPU that copy takes its batches in channels-last
memory format (oneDNN's convolutions run faster in it on one thread: 1.24x on EfficientNet-Lite0
at 224x224, batch 32; same values up to float rounding), or NCHW when the model cannot (a
``.view`` after a convolution raises on the first batch). Copies are built just before their pass
(``build``) and their scores handed back right after it (``consume``): memory stays bounded by
``batch_size`` whatever the number of samples. One pass gives the scores of every target, so a
method costs the same whether one or five targets are explained.

    scores = torch.zeros(n)
    self.evaluate([n] * len(x), build=lambda b, lo, hi: perturb(x[b], lo, hi),
                  consume=lambda b, lo, hi, s: scores[lo:hi].copy_(s[:, 0]), targets=targets)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.card import WHO, MethodCard
from xailab.core.explainer import Explainer, check_logits
from xailab.methods.perturbation.fold import channels_last_pass, conv2d_on_cpu, folded_copy

Build = Callable[[int, int, int], Tensor]
Consume = Callable[[int, int, int, Tensor], None]


class PerturbationExplainer(Explainer):
    """Base of the family: scores of perturbed copies, batched across images and samples."""

    #: most images explained together (their copies share forward passes); a chunk's memory is
    #: a few small arrays per image, the perturbed copies themselves are never all held at once
    images_together: ClassVar[int] = 32
    progress_in_samples: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, fold_batchnorm: bool = True, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.fold_batchnorm = bool(fold_batchnorm)
        self._fast: nn.Module | None = None

    def params(self) -> dict[str, Any]:
        return {**super().params(), "fold_batchnorm": self.fold_batchnorm}

    def images_per_chunk(self, n_targets: int) -> int:
        return max(super().images_per_chunk(n_targets), self.images_together)

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._clean_logits = logits.detach()
        self._chunk_extras: list[dict[str, Tensor]] = []
        self._fast = folded_copy(self.model) if self.fold_batchnorm else None
        self._channels_last = self._fast is not None and conv2d_on_cpu(self._fast)

    def perturbed_logits(self, x: Tensor) -> Tensor:
        """Logits of perturbed copies ``x`` (at most ``batch_size`` rows): through the folded
        copy of the model when there is one, else :meth:`forward`; counted as evaluations."""
        self.progress_bar.update(len(x))
        if self._fast is None:
            return self.forward(x, grad=False)
        with torch.no_grad():
            out = check_logits(self._fast_forward(x), len(x))
        self.evaluations += len(x)
        return out

    def _fast_forward(self, x: Tensor) -> object:
        """The folded copy on ``x``: channels-last while the copy takes it (see the module docstring)."""
        assert self._fast is not None
        if self._channels_last and x.dim() == 4:
            done = channels_last_pass(self._fast, x)
            if done is not None:
                return done[1]
            self._channels_last = False  # e.g. x.view(len(x), -1) after a convolution
        return self._fast(x)

    # -- scores -----------------------------------------------------------------------------------
    def target_scores(self, logits: Tensor, targets: Tensor) -> Tensor:
        """``[m, T]``: the explained score of every row for each of the ``T`` classes ``targets``."""
        m = len(logits)
        cols = [self.score(logits, targets[j].expand(m)) for j in range(len(targets))]
        return torch.stack(cols, dim=1)

    def clean_scores(self, targets: Tensor) -> Tensor:
        """``[B, T]``: scores of the unperturbed images of this chunk (from the first pass, free)."""
        logits = self._clean_logits[self.chunk_start : self.chunk_start + len(targets)]
        return torch.stack([self.target_scores(logits[b : b + 1], targets[b])[0] for b in range(len(targets))])

    def evaluate(self, counts: Sequence[int], build: Build, consume: Consume, targets: Tensor) -> None:
        """Score ``counts[b]`` perturbed copies of each image ``b``, ``batch_size`` rows a pass.

        ``build(b, lo, hi)`` returns copies ``lo:hi`` of image ``b`` as ``[hi - lo, C, H, W]``;
        ``consume(b, lo, hi, scores)`` receives their scores ``[hi - lo, T]`` for ``targets[b]``.
        """
        pieces: list[tuple[int, int, int]] = []
        filled = 0
        for b, n in enumerate(counts):
            lo = 0
            while lo < n:
                take = min(n - lo, self.batch_size - filled)
                pieces.append((b, lo, lo + take))
                filled += take
                lo += take
                if filled == self.batch_size:
                    self._run(pieces, build, consume, targets)
                    pieces, filled = [], 0
        if pieces:
            self._run(pieces, build, consume, targets)

    def _run(self, pieces: list[tuple[int, int, int]], build: Build, consume: Consume, targets: Tensor) -> None:
        inputs = [build(b, lo, hi) for b, lo, hi in pieces]
        logits = self.perturbed_logits(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
        start = 0
        for b, lo, hi in pieces:
            consume(b, lo, hi, self.target_scores(logits[start : start + hi - lo], targets[b]))
            start += hi - lo

    # -- extras collected across chunks -------------------------------------------------------------
    def add_extras(self, **arrays: Tensor) -> None:
        """Keep this chunk's per-image arrays (images along dim 0) for the Explanation's extras."""
        self._chunk_extras.append({k: v.detach().cpu() for k, v in arrays.items()})

    def _extras(self) -> dict[str, Tensor]:
        self._fast = None  # the folded copy lives for one explain call
        chunks = getattr(self, "_chunk_extras", [])
        if not chunks:
            return {}
        out = {}
        for key in chunks[0]:
            parts = [c[key] for c in chunks]
            shape = [max(p.shape[d] for p in parts) for d in range(parts[0].dim())]
            out[key] = torch.cat([_pad_to(p, shape) for p in parts])
        return out


PERTURBATION_WHAT = ("The model as a black box: only its outputs on altered copies of the input are read; "
                     "no gradients or internals.")


def perturbation_card(title: str, *, summary: str, paper: str, where: str, cost: str,
                      limits: tuple[str, ...]) -> MethodCard:
    """The card of a perturbation method: the family's *what* and *who*, the rest as given."""
    return MethodCard(title=title, family="perturbation", summary=summary, paper=paper, limits=limits,
                      cost=cost, what=PERTURBATION_WHAT, where=where,
                      who=WHO + " Works for any model that returns scores, including ones without gradients.")


def _pad_to(t: Tensor, shape: list[int]) -> Tensor:
    """``t`` zero-padded at the end of every dimension after the first up to ``shape``."""
    pad: list[int] = []
    for d in range(t.dim() - 1, 0, -1):
        pad += [0, shape[d] - t.shape[d]]
    return F.pad(t, pad) if any(pad) else t


def as_fill(value: float | Sequence[float] | Tensor, x: Tensor) -> Tensor:
    """A fill value (scalar or one per channel) as a ``[C, 1, 1]`` tensor like ``x [B, C, H, W]``."""
    fill = torch.as_tensor(value, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    if fill.shape[0] not in (1, x.shape[1]):
        from xailab.core.errors import InputError

        raise InputError(f"a fill value needs 1 or {x.shape[1]} (one per channel) numbers, got {fill.shape[0]}")
    return fill.expand(x.shape[1], 1, 1)


def plain_value(value: float | Sequence[float] | Tensor | None) -> float | list[float] | None:
    """A fill value as JSON can hold it (for ``params()``)."""
    if value is None or isinstance(value, float | int):
        return value
    return [float(v) for v in torch.as_tensor(value).reshape(-1)]


def pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``(h, w)`` from an int or a pair of ints, each >= 1."""
    from xailab.core.errors import InputError

    hw = (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(hw) != 2 or min(hw) < 1:
        raise InputError(f"{name} must be a positive int or a pair (height, width), got {value!r}")
    return hw[0], hw[1]
