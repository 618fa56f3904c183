"""Superpixels for LIME and KernelSHAP, at a scale that follows the image size.

LIME's default (quickshift with ``kernel_size=4, max_dist=200``) was tuned for 224x224 photos,
where it gives some 40 superpixels; on a 32x32 CIFAR image it gives one or two, and an
explanation over two features says nothing. Here every segmentation takes its scale from the
image: a target count of about ``25 * (H * W / 1024) ** 0.3`` superpixels (clipped to
[4, 200]): ~25 at 32x32, ~31 at 64x64, ~80 at 224x224. SLIC (the default) gets that count as
``n_segments`` and runs as SLIC-zero (``slic_zero=True``: the compactness adapts to each
superpixel), which returns close to that count on photos and on noise alike (plain SLIC with
``compactness=10`` merges a noisy 16x16 image into one superpixel). Quickshift and Felzenszwalb
get kernel and minimum sizes scaled by the side; their counts vary more with the content
(quickshift ~10-20 at 32x32 and lime's own ~40 at 224x224, Felzenszwalb ~30-40 and ~60-100). The parameters actually
used are recorded in the explainer's ``params()`` (``segmentation_params``) and can be
overridden one by one.

    seg = segment(image, "slic", segmentation_params("slic", 32, 32))   # LongTensor [32, 32]
    seg.max() + 1                                                         # ~ 25 superpixels

Images are min-max scaled to [0, 1] per image before segmenting (the models' inputs are
normalised, skimage expects an image); three-channel images are segmented in Lab colour space
(skimage's default), one-channel images as grey, other channel counts as plain features.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from xailab.core.errors import InputError

SEGMENTATIONS = ("slic", "quickshift", "felzenszwalb")

#: a segmentation: a name above, a user mask ([H, W] for every image or [N, H, W], one per image),
#: or a function from an ``[H, W, C]`` float image in [0, 1] to integer labels ``[H, W]``
Segmentation = str | Tensor | Callable[[np.ndarray], np.ndarray]


_MORE = {
    "slic": {"compactness", "max_num_iter", "spacing", "enforce_connectivity", "min_size_factor",
             "max_size_factor", "convert2lab"},
    "quickshift": {"sigma", "convert2lab"},
    "felzenszwalb": set(),
}


def target_segments(height: int, width: int) -> int:
    """The superpixel count the default scales aim at: ~25 at 32x32, ~80 at 224x224."""
    return round(min(200.0, max(4.0, 25.0 * (height * width / 1024.0) ** 0.3)))


def segmentation_params(method: str, height: int, width: int, **overrides: Any) -> dict[str, Any]:
    """The parameters of ``method`` for an ``height x width`` image (``overrides`` win)."""
    if method not in SEGMENTATIONS:
        raise InputError(f"unknown segmentation {method!r}: use one of {', '.join(SEGMENTATIONS)} or a mask")
    side = math.sqrt(height * width)
    scale = side / 224.0
    n = target_segments(height, width)
    smooth = round(min(1.0, side / 64.0), 3)
    params: dict[str, Any]
    if method == "slic":
        params = {"n_segments": n, "slic_zero": True, "sigma": smooth}
    elif method == "quickshift":
        params = {"kernel_size": round(max(1.0, 4.0 * scale), 3), "max_dist": round(max(6.0, 200.0 * scale), 3),
                  "ratio": 0.2}
    else:
        params = {"scale": round(max(1.0, 50.0 * scale), 3), "sigma": round(0.8 * smooth, 3),
                  "min_size": max(4, height * width // (3 * n))}
    unknown = set(overrides) - set(params) - _MORE[method]
    if unknown:
        known = sorted(set(params) | _MORE[method])
        raise InputError(f"{method} has no parameter {', '.join(sorted(unknown))}; known: {', '.join(known)}")
    return {**params, **overrides}


def _as_image(img: Tensor) -> np.ndarray:
    a = img.detach().to("cpu", torch.float64).permute(1, 2, 0).numpy()
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def segment(img: Tensor, method: str | Callable[[np.ndarray], np.ndarray], params: dict[str, Any],
            seed: int = 0) -> Tensor:
    """Superpixel labels ``0 .. S-1`` (LongTensor ``[H, W]``) of one image ``[C, H, W]``."""
    from skimage import segmentation as sk

    a = _as_image(img)
    c = a.shape[2]
    if callable(method):
        labels = np.asarray(method(a))
    elif method == "slic":
        extra = {} if c == 3 else {"convert2lab": False}
        image, axis = (a[..., 0], None) if c == 1 else (a, -1)
        labels = sk.slic(image, start_label=0, channel_axis=axis, **{**extra, **params})
    elif method == "quickshift":
        image = np.repeat(a, 3, axis=2) if c == 1 else a
        labels = sk.quickshift(image, rng=seed, channel_axis=-1,
                               **({"convert2lab": False} if image.shape[2] != 3 else {}), **params)
    elif method == "felzenszwalb":
        image, axis = (a[..., 0], None) if c == 1 else (a, -1)
        with warnings.catch_warnings():  # "third dimension of 5 ... multichannel": intended
            warnings.simplefilter("ignore", RuntimeWarning)
            labels = sk.felzenszwalb(image, channel_axis=axis, **params)
    else:
        raise InputError(f"unknown segmentation {method!r}: use one of {', '.join(SEGMENTATIONS)} or a mask")
    return relabel(torch.as_tensor(labels), img.shape[-2:])


def relabel(labels: Tensor, size: torch.Size | tuple[int, ...]) -> Tensor:
    """Integer labels as consecutive ``0 .. S-1`` (order kept), checked against the image size."""
    if tuple(labels.shape) != tuple(size):
        raise InputError(f"a segmentation mask must be [H, W] = {tuple(size)}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise InputError(f"a segmentation mask must hold integer labels, got {labels.dtype}")
    _, inverse = torch.unique(labels.to("cpu", torch.long), return_inverse=True)
    return inverse.reshape(tuple(size))


def user_mask(mask: Tensor, index: int, n_images: int, size: torch.Size | tuple[int, ...]) -> Tensor:
    """Image ``index``'s labels from a user mask ``[H, W]`` (shared) or ``[N, H, W]``."""
    if mask.dim() == 2:
        return relabel(mask, size)
    if mask.dim() == 3 and mask.shape[0] == n_images:
        return relabel(mask[index], size)
    raise InputError(
        f"a segmentation mask must be [H, W] or [N, H, W] with N = {n_images} images, got {tuple(mask.shape)}"
    )


def superpixel_fill(img: Tensor, seg: Tensor, n_segments: int, hide_color: Any) -> Tensor:
    """The image a hidden superpixel shows, ``[C, H, W]``.

    ``hide_color=None``: each superpixel's mean colour, per channel (LIME's default);
    a number or one number per channel: that value everywhere.
    """
    c = img.shape[0]
    if hide_color is None:
        flat = img.reshape(c, -1)
        idx = seg.reshape(-1).to(img.device)
        sums = torch.zeros(c, n_segments, dtype=img.dtype, device=img.device).index_add_(1, idx, flat)
        counts = torch.bincount(idx, minlength=n_segments).to(img.dtype)
        return (sums / counts)[:, idx].reshape(img.shape)
    fill = torch.as_tensor(hide_color, dtype=img.dtype, device=img.device).reshape(-1, 1, 1)
    if fill.shape[0] not in (1, c):
        raise InputError(f"hide_color needs 1 or {c} (one per channel) numbers, got {fill.shape[0]}")
    return fill.expand(img.shape).clone()
