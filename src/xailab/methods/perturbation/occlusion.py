"""Occlusion (Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks",
arXiv:1311.2901), with Captum's ``Occlusion`` definition.

A window of ``window = (h, w)`` pixels (all channels) slides over the image in steps of
``stride``; at each position the window is replaced by ``fill`` and the drop of the explained
score ``f(x) - f(x_occluded)`` is recorded. Each pixel gets the mean drop over the windows that
cover it::

    map[p] = sum_{windows W containing p} (f(x) - f(x with W filled)) / #{windows containing p}

Positions start at ``0, s, 2s, ...`` along each axis, ``ceil((H - h) / s) + 1`` of them; the last
window is cut at the border when it does not fit (as Captum does), so every pixel is covered.

    res = create("occlusion", model, window=8, stride=4).explain(images)
    res.maps.shape     # [N, 1, H, W]; positive where hiding the pixels lowers the score

Captum's ``Occlusion(model).attribute(x, sliding_window_shapes=(C, h, w), strides=(1, sh, sw),
baselines=fill, target=t)`` gives the same numbers (it divides in float32); here all targets come
from the same forward passes and the windows of several images share them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.registry import register
from xailab.methods.perturbation.base import (
    PerturbationExplainer,
    as_fill,
    pair,
    perturbation_card,
    plain_value,
)


def window_positions(size: int, window: int, stride: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each window position along an axis of ``size`` pixels (Captum's)."""
    window = min(window, size)
    count = math.ceil((size - window) / stride) + 1
    return [(i * stride, min(i * stride + window, size)) for i in range(count)]


def _indicator(positions: list[tuple[int, int]], size: int, like: Tensor) -> Tensor:
    out = torch.zeros(len(positions), size, dtype=like.dtype, device=like.device)
    for i, (a, b) in enumerate(positions):
        out[i, a:b] = 1
    return out


@register("occlusion", family="perturbation")
class Occlusion(PerturbationExplainer):
    """Occlusion: the mean score drop of the sliding windows covering each pixel (Zeiler & Fergus 2014).

    Args:
        window: window height and width in pixels (an int or ``(h, w)``); ``None`` (default)
            picks ``max(1, round(min(H, W) / 8))``: 4 at 32x32, 28 at 224x224.
        stride: step between window positions (int or pair); ``None`` picks half the window.
        fill: the value an occluded pixel takes, one number or one per channel (Captum's
            ``baselines``); in the model's input space, so 0 is the dataset mean for
            normalised inputs.
    """

    card = perturbation_card(
        "Occlusion",
        summary="A window slides over the image; each pixel gets the mean drop of the class score"
                " over the windows that cover it when they are filled with a baseline value.",
        paper="Zeiler, Fergus (2014), \"Visualizing and Understanding Convolutional Networks\", "
              "ECCV.",
        where="ECCV 2014; any classifier.",
        cost="One forward pass per window position and image, shared by every target.",
        limits=(
            "Window size and stride set the resolution; objects smaller than the window are "
            "missed, larger ones are only partly hidden.",
            "The fill value matters and creates off-distribution images.",
            "One forward pass per window position: slow on large images.",
        ),
    )

    quick_params: ClassVar[dict[str, Any]] = {"window": 6, "stride": 5}

    def __init__(
        self,
        model: nn.Module,
        *,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        fill: float | Sequence[float] = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.window = None if window is None else pair(window, "window")
        self.stride = None if stride is None else pair(stride, "stride")
        self.fill = fill
        self._geometry: tuple[tuple[int, int], tuple[int, int], int] | None = None

    def resolve(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int], int]:
        """``(window, stride, number of positions)`` for an ``height x width`` image."""
        side = max(1, round(min(height, width) / 8))
        window = self.window or (side, side)
        if window[0] > height or window[1] > width:
            raise InputError(
                f"occlusion window {window[0]}x{window[1]} does not fit the {height}x{width} images "
                f"(every window would cover the whole image): give window in 1..{min(height, width)}")
        stride = self.stride or (max(1, window[0] // 2), max(1, window[1] // 2))
        n = len(window_positions(height, window[0], stride[0])) * len(window_positions(width, window[1], stride[1]))
        return window, stride, n

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        self._geometry = self.resolve(*x.shape[-2:])

    def samples_per_image(self, n_targets: int) -> int:
        return self._geometry[2] if self._geometry else 64

    def params(self) -> dict[str, Any]:
        window, stride = self.window, self.stride
        if self._geometry:
            window, stride = self._geometry[0], self._geometry[1]
        fill = plain_value(self.fill)
        return {**super().params(), "window": window, "stride": stride, "fill": fill}

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        b_count, t = targets.shape
        h, w = x.shape[-2:]
        window, stride, n = self._geometry or self.resolve(h, w)
        rows = _indicator(window_positions(h, window[0], stride[0]), h, x)  # [nh, H]
        cols = _indicator(window_positions(w, window[1], stride[1]), w, x)  # [nw, W]
        nw = len(cols)
        fill = as_fill(self.fill, x)
        clean = self.clean_scores(targets)
        drops = torch.zeros(b_count, n, t, dtype=x.dtype, device=x.device)

        def build(b: int, lo: int, hi: int) -> Tensor:
            j = torch.arange(lo, hi, device=x.device)
            inside = rows[j // nw][:, :, None] * cols[j % nw][:, None, :]  # [m, H, W]
            return torch.where(inside[:, None] > 0, fill, x[b])

        def consume(b: int, lo: int, hi: int, scores: Tensor) -> None:
            drops[b, lo:hi] = clean[b] - scores

        self.evaluate([n] * b_count, build, consume, targets)
        d = drops.reshape(b_count, len(rows), nw, t)
        total = torch.einsum("ih,bijt,jw->bthw", rows, d, cols)
        count = rows.sum(0)[:, None] * cols.sum(0)[None, :]
        return total / count
