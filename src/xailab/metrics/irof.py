"""IROF: Iterative Removal Of Features (Rieger & Hansen 2020, "IROF: a low resource evaluation
metric for explanation methods", arXiv:2003.08747).

Pixel-wise deletion is noisy and slow on large images; IROF removes *superpixels* instead. The
image is cut into segments by SLIC (scikit-image, ``n_segments=100``, ``compactness=10``, as
Quantus); the segments are ordered by their mean attribution, most relevant first, and removed
one after another (filled with ``fill``). With ``s_k`` the class score after ``k`` segments are
gone and ``s_0`` the score of the image::

    IROF = n - sum_{k=1}^{n} trapezoid(s_k / s_0)        (area over the normalised curve)

with unit spacing over the ``n`` removal steps (Quantus's ``IROF``; its area is in units of
segments). A map that puts its mass on what the model uses makes the score fall early: **higher
is better**. The segments depend on the image only, so every method of a run is scored on the
same ones.

    s = irof(model, images, saliency)          # [N]
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, check_images, maps_for_images, resolve_target
from xailab.metrics.perturb import Fill, Output, fill_images, scores_of_rows


def superpixels(images: Tensor, *, n_segments: int = 100, compactness: float = 10.0) -> Tensor:
    """SLIC segments ``[N, H, W]`` (labels from 0) of ``images [N, C, H, W]``, as Quantus cuts them
    (``skimage.segmentation.slic(img_hwc, start_label=0)`` on the model's input)."""
    from skimage.segmentation import slic

    out = [slic(np.moveaxis(x, 0, -1).astype(np.float64), n_segments=n_segments, compactness=compactness,
                start_label=0) for x in images.detach().cpu().numpy()]
    return torch.from_numpy(np.stack(out)).long()


def segment_ranks(maps: Tensor, segments: Tensor) -> list[Tensor]:
    """Per image, the removal step of each segment ``[n_i]`` (0 first): segments in descending
    order of their mean attribution (numpy's ``argsort`` of the negated means, as Quantus)."""
    out = []
    for a, s in zip(maps.double().cpu(), segments, strict=True):
        n = int(s.max()) + 1
        count = torch.bincount(s.flatten(), minlength=n).double()
        mean = torch.zeros(n, dtype=torch.float64).index_add_(0, s.flatten(), a.flatten()) / count.clamp_min(1)
        order = torch.from_numpy(np.argsort(-mean.numpy()))
        rank = torch.empty(n, dtype=torch.long)
        rank[order] = torch.arange(n)
        out.append(rank)
    return out


@metric(direction="higher", category="faithfulness",
        summary="area over the class score (relative to the image's) as superpixels are removed, most relevant first",
        low=0.0)
def irof(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    segments: Tensor | None = None,
    n_segments: int = 100,
    fill: Fill = "mean",
    mode: Mode = "signed",
    output: Output = "probability",
    batch_size: int = 64,
    column: int = 0,
) -> Tensor:
    """IROF per image, ``[N]`` (module docstring).

    Args:
        segments: superpixel labels ``[N, H, W]`` (default: :func:`superpixels` of the images).
        fill: what a removed segment becomes (default ``"mean"``: the image's mean colour; see
            :data:`~xailab.metrics.perturb.Fill`).
    """
    from xailab.core.hooks import model_device

    x = check_images(images).to(model_device(model))
    a = maps_for_images(maps, x, mode=mode, target=column)
    t = resolve_target(model, x, target, maps, column)
    seg = superpixels(x, n_segments=n_segments) if segments is None else segments.long().cpu()
    if seg.shape != (len(x), *x.shape[-2:]):
        raise InputError(f"segments must be [N, H, W] = {(len(x), *x.shape[-2:])}, got {tuple(seg.shape)}")
    seg = seg - seg.flatten(1).min(1).values.view(-1, 1, 1)  # labels from 0
    ranks = segment_ranks(a, seg)
    step = torch.stack([r[s] for r, s in zip(ranks, seg, strict=True)]).to(x.device)  # [N, H, W] removal step
    counts = [len(r) for r in ranks]
    start = np.concatenate([[0], np.cumsum([c + 1 for c in counts])])  # row 0 of each image: the image itself
    image_of = torch.from_numpy(np.repeat(np.arange(len(x)), [c + 1 for c in counts]))
    k_of = torch.from_numpy(np.concatenate([np.arange(c + 1) for c in counts]))
    other = fill_images(x, fill)

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        i, k = image_of[rows].to(x.device), k_of[rows].to(x.device)
        gone = (step[i] < k.view(-1, 1, 1))[:, None]
        return torch.where(gone, other[i], x[i]), t[i]

    scores = scores_of_rows(model, int(start[-1]), make, output=output, batch_size=batch_size)
    out = torch.empty(len(x), dtype=torch.float64)
    for i, c in enumerate(counts):
        s = scores[int(start[i]): int(start[i + 1])]
        rel = s[1:] / s[0]
        out[i] = c - torch.trapezoid(rel, dx=1.0)
    return out
