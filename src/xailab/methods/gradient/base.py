"""The engine of the gradient family: attributions as sums of weighted input gradients.

Saliency, input x gradient, Integrated Gradients and GradientSHAP all compute, for an image ``x``
and a target class ``t``, from ``S`` sample points ``z_s`` with multipliers ``m_s``,

    A(x, t) = post( sum_{s=1..S} m_s * grad_z S_t(z_s) )

    saliency          S = 1   z = x                        m = 1             post = |.| (optional)
    input x gradient  S = 1   z = x                        m = x
    IG                S = n   z_s = b + a_s (x - b)        m_s = w_s (x - b)  (quadrature a_s, w_s)
    GradientSHAP      S = n   z_s = b_s + a_s (x' - b_s)   m_s = (x' - b_s) / n   (x' = x + noise_s)

and SmoothGrad wraps any of them by replacing ``x`` with noisy copies. A subclass says only how
its points are made (:meth:`GradientExplainer._points`); the engine streams the points of every
image, target and noise sample of a chunk through the model in passes of at most
``batch_size`` samples (packing several images into one pass, or one image's steps into
several), and sums each row's weighted gradients as they arrive. Memory: one pass plus the
chunk's maps, whatever ``S`` is.

    class InputXGradient(GradientExplainer):
        def _points(self, xs, state, img, step):
            return xs, xs          # z = x, m = x
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from xailab.core.card import MethodCard
from xailab.core.errors import InputError
from xailab.core.explainer import (
    Explainer,
    RowTargets,
    cat,
    check_logits,
    full_pass_images,
    keep_format,
)
from xailab.methods.gradient.fast import FastPasses

#: ``points(xs, img, step) -> (z, m)`` for a pass of samples (see GradientExplainer._points)
Points = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor | float]]
#: ``sink(first_row, values)``: rows ``first_row ..`` are complete, their sums are ``values``
Sink = Callable[[int, Tensor], None]


class GradientExplainer(Explainer):
    """Base class of the streamed gradient methods; see the module docstring."""

    per_channel = True
    #: whether the method takes ``mean``/``std``/``pixel_range`` (baselines or noise)
    uses_pixel_space: ClassVar[bool] = False

    # -- what subclasses provide ------------------------------------------------------------
    def n_points(self) -> int:
        """Gradient evaluations per (image, target): ``S``."""
        return 1

    def _chunk_state(self, x: Tensor) -> Any:
        """Per-chunk data the points need (baselines, random draws), computed once per chunk."""
        return None

    def _points(self, xs: Tensor, state: Any, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor | float]:
        """Sample points ``z [k, C, H, W]`` and multipliers ``m`` (broadcastable to ``z``).

        ``xs [k, C, H, W]`` is each sample's input (the image, or a noisy copy under SmoothGrad),
        ``img [k]`` its image's index in the chunk, ``step [k]`` its index in ``0..S-1``.
        """
        raise NotImplementedError

    def _post(self, a: Tensor) -> Tensor:
        """Applied to each row's sum (saliency's absolute value)."""
        return a

    def _after_chunk(self, x: Tensor, targets: Tensor, state: Any, maps: Tensor) -> None:
        """Called with the chunk's maps (IG's completeness error)."""

    def gradient_maps(self, rows: Tensor, grads: Tensor) -> Tensor:
        """The maps of one-point methods (saliency, input x gradient) for (image, target) ``rows``
        from ``grads = d score / d rows`` computed elsewhere (e.g. by a pass shared with other
        methods): the engine's own formula, ``post(m * grads)`` with the method's multiplier."""
        if self.n_points() != 1:
            raise InputError(f"{self.name} needs {self.n_points()} gradients per row, not one given")
        idx = torch.zeros(len(rows), dtype=torch.long, device=rows.device)
        _, m = self._points(rows, None, idx, idx)
        plain = isinstance(m, float) and m == 1.0  # saliency: the gradient itself
        return self._post(grads if plain else m * grads)

    # -- the engine -------------------------------------------------------------------------
    def samples_per_image(self, n_targets: int) -> int:
        return n_targets * self.n_points()

    def images_per_chunk(self, n_targets: int) -> int:
        """Enough images that passes are full: a multiple of ``batch_size`` samples if it is
        small, otherwise about 16 passes (at most one part-filled pass in 16)."""
        return full_pass_images(self.samples_per_image(n_targets), self.batch_size)

    #: sampled methods (IG, SmoothGrad, GradientSHAP) set it from their ``fast_passes`` argument:
    #: their gradient passes then run through a BatchNorm-folded copy, channels-last (see .fast)
    fast_passes = False

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._prepare_one_pass(x)

    def _prepare_one_pass(self, x: Tensor) -> None:
        # Only input gradients are needed: autograd then keeps no tensors for weight gradients.
        # model_session restores every parameter's requires_grad afterwards.
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _gradient_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.fast_passes:
            return super()._gradient_pass(x)
        if not hasattr(self, "_passes"):
            self._passes = FastPasses()
        # the copy is checked against the model's state every pass (cached while unchanged)
        leaf, logits = self._passes.leaf_logits(self._passes.model(self.model), x)
        self.evaluations += len(x)
        return leaf, check_logits(logits, len(x))

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        return self._explain_rows(x, RowTargets.known(targets))

    def _explain_rows(self, x: Tensor, rows: RowTargets) -> Tensor:
        """The engine for one chunk; with one-pass targets (saliency, input x gradient: one
        point per row, the image itself) they are resolved from the passes' own logits."""
        state = self._chunk_state(x)
        b, t = rows.shape
        parts: list[Tensor] = []  # complete rows arrive in order

        def sink(r0: int, vals: Tensor) -> None:
            parts.append(self._post(vals))

        def points(xs: Tensor, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor | float]:
            return self._points(xs, state, img, step)

        self._stream(x, rows, sink, points, self.n_points())
        maps = cat(parts).reshape(b, t, *x.shape[1:])
        self._after_chunk(x, rows.targets, state, maps)
        return maps

    def _stream(
        self,
        x: Tensor,
        targets: Tensor | RowTargets,
        sink: Sink,
        points: Points,
        n_points: int,
        *,
        variants: int = 1,
        row_inputs: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None,
    ) -> None:
        """Stream all samples of the chunk in passes of at most ``batch_size``.

        Samples are ordered (image, target, variant, step); a *row* is one (image, target,
        variant) and owns ``n_points`` consecutive samples. ``row_inputs(x, img, variant)``
        gives each sample's input (default ``x[img]``). Complete rows go to ``sink`` in order.
        One-pass ``RowTargets`` need one sample per row, the image itself: each pass's targets
        then come from its own logits.
        """
        rows = targets if isinstance(targets, RowTargets) else RowTargets.known(targets)
        b, t = rows.shape
        s, n = n_points, variants
        if rows.lazy and not (s == 1 and n == 1 and row_inputs is None):
            raise ValueError("one-pass targets need one sample per row: the image itself")
        total = b * t * n * s
        flat_targets = None if rows.lazy else rows.targets.reshape(-1)
        carry: list[Any] = [None, None]  # the row in progress and its partial sum
        for lo in range(0, total, self.batch_size):
            hi = min(total, lo + self.batch_size)
            idx = torch.arange(lo, hi, device=x.device)
            row = idx // s
            bt = row // n
            img = bt // t
            if row_inputs is not None:
                xs = row_inputs(x, img, row % n)
            else:  # one sample per image: a view, no copy
                xs = x[lo:hi] if t * n * s == 1 else keep_format(x[img], x)
            z, m = points(xs, img, idx % s)
            if flat_targets is None:  # rows lo..hi: resolved from this pass's own logits
                grads, _ = self.target_gradients(z, rows, first_row=lo)
            else:
                grads, _ = self.target_gradients(z, flat_targets[bt])
            plain = isinstance(m, float) and m == 1.0  # saliency: the gradient itself
            self._reduce(grads if plain else m * grads, lo, hi, s, carry, sink)

    @staticmethod
    def _reduce(prod: Tensor, lo: int, hi: int, s: int, carry: list[Any], sink: Sink) -> None:
        """Sum the samples ``lo..hi`` of ``prod`` into their rows (deterministic order)."""
        a = lo
        while a < hi:
            r = a // s
            if s == 1:  # one sample a row: nothing to sum
                end = hi
                sink(r, prod[a - lo : end - lo])
            elif a % s == 0 and hi - a >= s:  # whole rows
                end = a + (hi - a) // s * s
                sink(r, prod[a - lo : end - lo].reshape(-1, s, *prod.shape[1:]).sum(1))
            else:  # the part of one row that lies in this pass
                end = min(hi, (r + 1) * s)
                part = prod[a - lo : end - lo].sum(0)
                if carry[0] == r:
                    part = carry[1] + part
                if end == (r + 1) * s:
                    sink(r, part.unsqueeze(0))
                    carry[0] = carry[1] = None
                else:
                    carry[0], carry[1] = r, part
            a = end

    def _target_scores(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """Scores ``[B, T]`` of ``inputs [B, ...]`` for ``targets [B, T]`` (forward only)."""
        logits = self.forward(inputs, grad=False)
        t = targets.shape[1]
        return self.score(logits.repeat_interleave(t, dim=0), targets.reshape(-1)).reshape(-1, t)


GRADIENT_WHAT = ("The learned parameters as the model uses them on one input: the gradient of a class "
                 "score flows back through every layer to the pixels.")


def gradient_card(title: str, *, summary: str, paper: str, where: str, cost: str,
                  limits: tuple[str, ...]) -> MethodCard:
    """The card of a gradient method: the family's answer to *what*, the rest as given."""
    return MethodCard(title=title, family="gradient", summary=summary, paper=paper, limits=limits,
                      cost=cost, what=GRADIENT_WHAT, where=where)


def flat_sum(maps: Tensor) -> Tensor:
    """``[B, T, ...] -> [B, T]``: the sum of each map."""
    return maps.reshape(*maps.shape[:2], -1).sum(-1)
