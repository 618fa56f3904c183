"""Shared machinery of the perturbation metrics: fills, pixel orders, batched scoring.

A perturbation metric builds many modified copies of each image (pixels removed, revealed,
masked at random, noised) and asks the model for its score of the explained class on each.
:func:`scores_of_rows` does this once for all metrics: the copies are built lazily, ``batch_size``
at a time, so memory stays bounded whatever the number of images and steps, and the model runs
in eval mode under ``no_grad`` with every flag restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError, ModelError
from xailab.core.hooks import model_device, model_session
from xailab.core.rows import target_scores, unpack_logits

Output = Literal["probability", "logit"]
#: what replaces a removed pixel: "blur" (a Gaussian blur of the image), "mean" (the image's
#: mean colour), a number (a constant in the model's input space; 0 is the dataset mean for
#: normalised inputs), or a tensor ``[C, H, W]`` / ``[N, C, H, W]``
Fill = Literal["blur", "mean"] | float | Tensor


def logits_of(out: object, n: int) -> Tensor:
    """The logits tensor of a model's output (tuples and ``.logits`` objects unpacked), checked
    (:func:`xailab.core.rows.unpack_logits`)."""
    return unpack_logits(out, n)


def class_scores(logits: Tensor, targets: Tensor, output: Output) -> Tensor:
    """``logits[i, targets[i]]``, or its softmax probability, in float64 (the explainers' own
    :func:`~xailab.core.rows.target_scores`); ``targets [B, K]`` gives ``[B, K]`` (several classes
    scored from one forward)."""
    if output not in ("probability", "logit"):
        raise InputError(f"output must be 'probability' or 'logit', not {output!r}")
    if targets.dim() == 2:
        k = targets.shape[1]
        rows = logits.double().repeat_interleave(k, 0)
        return target_scores(rows, targets.reshape(-1).to(logits.device), output).view(-1, k)
    return target_scores(logits.double(), targets.to(logits.device), output)


def channels_last_helps(model: nn.Module) -> bool:
    """Whether perturbed batches should go to ``model`` in channels-last memory format: on the
    CPU, for a model with 2-D convolutions (oneDNN's convolutions run ~30 % faster in it on one
    thread; the values are the same up to float rounding)."""
    return model_device(model).type == "cpu" and any(isinstance(m, nn.Conv2d) for m in model.modules())


def scores_of_rows(
    model: nn.Module,
    n_rows: int,
    make: Callable[[Tensor], tuple[Tensor, Tensor]],
    *,
    output: Output,
    batch_size: int,
    channels_last: bool = False,
) -> Tensor:
    """Scores ``[n_rows]`` of perturbed images built by ``make(rows) -> (images, targets)``.

    ``make`` receives the row indices of one batch (at most ``batch_size`` of them) and returns
    their images ``[B, C, H, W]`` and target classes ``[B]`` (scores ``[n_rows]``) or ``[B, K]``
    (scores ``[n_rows, K]``: K classes scored from each forward). ``channels_last`` hands the
    model each batch in channels-last memory format (see :func:`channels_last_helps`); a model
    that cannot take it (``x.view(len(x), -1)`` after a convolution raises) gets NCHW batches.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    out: Tensor | None = None
    with model_session(model), torch.no_grad():
        for lo in range(0, n_rows, batch_size):
            rows = torch.arange(lo, min(n_rows, lo + batch_size))
            x, t = make(rows)
            logits, channels_last = forward(model, x.to(device), channels_last, first=lo == 0)
            if not torch.isfinite(logits).all():
                raise ModelError("the model returned NaN or infinite logits on a perturbed image")
            scores = class_scores(logits, t, output).cpu()
            if out is None:
                out = torch.empty((n_rows, *scores.shape[1:]), dtype=torch.float64)
            out[lo : lo + len(rows)] = scores
    return out if out is not None else torch.empty(0, dtype=torch.float64)


def forward(model: nn.Module, x: Tensor, channels_last: bool, *, first: bool) -> tuple[Tensor, bool]:
    """The logits of ``x``, in channels-last format if asked, and whether to keep asking: a
    model that raises on the first channels-last batch gets NCHW from then on."""
    if channels_last and x.dim() == 4:
        try:
            return logits_of(model(x.contiguous(memory_format=torch.channels_last)), len(x)), True
        except RuntimeError:
            if not first:
                raise
    return logits_of(model(x), len(x)), False


def gaussian_blur(images: Tensor, sigma: float = 5.0, kernel_size: int = 11) -> Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflected borders (Petsiuk et al.'s
    insertion start: kernel 11, sigma 5 on 224-pixel images)."""
    k = min(kernel_size, 2 * (min(images.shape[-2:]) // 2) - 1) if min(images.shape[-2:]) > 1 else 1
    if k < 3 or sigma <= 0:
        return images.clone()
    r = torch.arange(k, dtype=torch.float64, device=images.device) - (k - 1) / 2
    w = torch.exp(-(r**2) / (2 * sigma**2))
    w = (w / w.sum()).to(images.dtype)
    c = images.shape[1]
    x = F.pad(images, (k // 2, k // 2, k // 2, k // 2), mode="reflect")
    x = F.conv2d(x, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def fill_images(images: Tensor, fill: Fill) -> Tensor:
    """The replacement values ``[N, C, H, W]`` for ``images`` under ``fill`` (see :data:`Fill`)."""
    if isinstance(fill, Tensor):
        f = fill.to(images.device, images.dtype)
        if f.dim() == 3:
            f = f.expand_as(images)
        if f.shape != images.shape:
            raise InputError(f"a fill tensor must be [C, H, W] or {tuple(images.shape)}, got {tuple(fill.shape)}")
        return f
    if isinstance(fill, bool):
        raise InputError("fill cannot be a bool")
    if isinstance(fill, (int, float)):
        return torch.full_like(images, float(fill))
    if fill == "blur":
        return gaussian_blur(images)
    if fill == "mean":
        return images.mean(dim=(2, 3), keepdim=True).expand_as(images).clone()
    raise InputError(f"fill must be 'blur', 'mean', a number or a tensor, not {fill!r}")


def pixel_ranks(maps: Tensor) -> Tensor:
    """``[N, H, W]`` -> the position of each pixel in its map's descending order (0 = largest;
    ties broken by pixel index)."""
    n = len(maps)
    flat = maps.reshape(n, -1)
    order = torch.argsort(-flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand(n, -1))
    return ranks.reshape(maps.shape)
