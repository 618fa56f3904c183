"""Faithfulness: does the model's score follow the pixels a map calls important?

**Deletion** (Petsiuk et al. 2018, RISE, arXiv:1806.07421; the pixel flipping of Bach et al.
2015): remove pixels from the image in order of attribution, most important first, replacing
them with ``fill``; record the model's score of the explained class after each of ``steps``
equal steps. A faithful map makes the score fall fast: **lower AUC is better**.

**Insertion**: start from ``fill`` (by default a blurred copy of the image) and reveal the
original pixels in the same order. The score should rise fast: **higher AUC is better**.

With ``P`` pixels and ``n_k = round(k P / steps)`` pixels changed at step ``k = 0..steps``::

    curve_k = f_c(x with its n_k top pixels replaced)       AUC = trapezoid(curve, n_k / P)

so the AUC lies in ``[0, 1]`` for probabilities, whatever ``steps``. The perturbed images of all
images and steps go through the model in batches of at most ``batch_size``.

**Faithfulness correlation** (Bhatt et al. 2020, IJCAI, arXiv:2005.00631): replace a random
subset ``S`` of pixels, ``runs`` times per image, and correlate (Pearson) the score drop
``f_c(x) - f_c(x_S)`` with the attribution inside the subset ``sum_{p in S} a_p``. Higher is
better; near 0 for a map unrelated to the model.

    d = deletion(model, images, result)              # result: an Explanation, or maps [N, H, W]
    d.auc.mean(), d.scores.mean(0)                   # mean AUC, mean curve over images
    i = insertion(model, images, result, steps=32)
    r = faithfulness_correlation(model, images, result, runs=64)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import (
    Maps,
    Mode,
    check_images,
    maps_for_images,
    resolve_target,
    row_pearson,
)
from xailab.metrics.perturb import Fill, Output, fill_images, pixel_ranks, scores_of_rows


@dataclass(frozen=True)
class Curves:
    """Deletion or insertion curves of ``N`` images.

    Attributes:
        kind: ``"deletion"`` or ``"insertion"``.
        fractions: ``[steps + 1]`` share of pixels changed at each step (0 ... 1).
        scores: ``[N, steps + 1]`` the model's score of the explained class at each step.
        targets: ``[N]`` the classes explained.
    """

    kind: Literal["deletion", "insertion", "road"]
    fractions: Tensor
    scores: Tensor
    targets: Tensor

    @property
    def auc(self) -> Tensor:
        """Area under each curve, ``[N]`` (trapezoid rule over the fractions)."""
        return torch.trapezoid(self.scores, self.fractions.to(self.scores.dtype), dim=1)

    @property
    def mean_curve(self) -> Tensor:
        return self.scores.mean(dim=0)


def _step_counts(n_pixels: int, steps: int) -> Tensor:
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    k = torch.arange(steps + 1)
    return (k * n_pixels + steps // 2) // steps  # round(k P / steps), exact at both ends


def _curves(
    kind: Literal["deletion", "insertion"],
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None,
    *,
    steps: int,
    fill: Fill,
    mode: Mode,
    output: Output,
    batch_size: int,
    column: int,
) -> Curves:
    from xailab.core.hooks import model_device

    x = check_images(images).to(model_device(model))
    a = maps_for_images(maps, x, mode=mode, target=column)
    t = resolve_target(model, x, target, maps, column)
    n, _, h, w = x.shape
    ranks = pixel_ranks(a)  # [N, H, W]
    counts = _step_counts(h * w, steps).to(x.device)
    other = fill_images(x, fill)
    s1 = steps + 1

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(x.device)
        i, k = rows // s1, rows % s1
        changed = (ranks[i] < counts[k].view(-1, 1, 1))[:, None]  # [B, 1, H, W]
        if kind == "deletion":
            xb = torch.where(changed, other[i], x[i])
        else:
            xb = torch.where(changed, x[i], other[i])
        return xb, t[i]

    scores = scores_of_rows(model, n * s1, make, output=output, batch_size=batch_size).view(n, s1)
    return Curves(kind=kind, fractions=counts.cpu().double() / (h * w), scores=scores, targets=t.cpu())


@metric(
    direction="lower", category="faithfulness", low=0.0, high=1.0,
    summary="area under the class score as the most important pixels are removed first",
)
def deletion(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    steps: int = 32,
    fill: Fill = 0.0,
    mode: Mode = "signed",
    output: Output = "probability",
    batch_size: int = 64,
    column: int = 0,
) -> Curves:
    """Deletion curves of ``maps`` for ``images [N, C, H, W]`` (see the module docstring).

    Args:
        maps: an Explanation (column ``column``; its targets are used when ``target`` is None)
            or maps ``[N, H, W]`` / ``[N, C, H, W]`` (resized to the images if needed).
        target: classes to score, ``[N]``, an int, or a spec such as ``"top1"`` (default: the
            explanation's targets, else the model's top class).
        steps: number of equal steps from 0 to all pixels.
        fill: what a removed pixel becomes (default 0: the dataset mean of normalised inputs).
        mode: how the map's sign orders pixels (``"signed"``: most positive first).
        output: score the softmax ``"probability"`` (default, as Petsiuk et al.) or the ``"logit"``.
        batch_size: most perturbed images in one forward pass.
    """
    return _curves("deletion", model, images, maps, target, steps=steps, fill=fill, mode=mode,
                   output=output, batch_size=batch_size, column=column)


@metric(
    direction="higher", category="faithfulness", low=0.0, high=1.0,
    summary="area under the class score as the most important pixels are restored first",
)
def insertion(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    steps: int = 32,
    fill: Fill = "blur",
    mode: Mode = "signed",
    output: Output = "probability",
    batch_size: int = 64,
    column: int = 0,
) -> Curves:
    """Insertion curves: reveal pixels of the image on ``fill`` (default: the blurred image).

    Arguments as for :func:`deletion`.
    """
    return _curves("insertion", model, images, maps, target, steps=steps, fill=fill, mode=mode,
                   output=output, batch_size=batch_size, column=column)


def random_subsets(n_images: int, n_pixels: int, runs: int, size: int, seed: int = 0, first: int = 0) -> Tensor:
    """``[N, runs, size]`` pixel indices, each row drawn without replacement. Image ``i`` uses
    its own generator (``seed * 1_000_003 + first + i``), so a subset does not depend on the
    batch; ``first`` is the index of the first image in the whole set (a shard's offset)."""
    out = torch.empty(n_images, runs, size, dtype=torch.long)
    for i in range(n_images):
        g = torch.Generator().manual_seed(seed * 1_000_003 + first + i)
        out[i] = torch.rand(runs, n_pixels, generator=g).argsort(dim=1)[:, :size]
    return out


@metric(
    direction="higher", category="faithfulness", low=-1.0, high=1.0,
    summary="Pearson correlation of the score drop with the attribution of random pixel subsets",
)
def faithfulness_correlation(
    model: nn.Module,
    images: Tensor,
    maps: Maps,
    target: Tensor | int | str | None = None,
    *,
    runs: int = 64,
    subset: float | int = 0.1,
    fill: Fill = 0.0,
    mode: Mode = "signed",
    output: Output = "probability",
    seed: int = 0,
    batch_size: int = 64,
    column: int = 0,
    subsets: Tensor | None = None,
) -> Tensor:
    """Faithfulness correlation per image, ``[N]`` (NaN when the score never changes).

    Args:
        runs: random subsets per image.
        subset: pixels per subset: a fraction of the image (float) or a count (int).
        subsets: explicit pixel indices ``[N, runs, size]`` instead of random ones.
        Other arguments as for :func:`deletion`.
    """
    from xailab.core.hooks import model_device

    x = check_images(images).to(model_device(model))
    a = maps_for_images(maps, x, mode=mode, target=column).flatten(1).double()
    t = resolve_target(model, x, target, maps, column)
    n, _, h, w = x.shape
    p = h * w
    if subsets is None:
        size = int(subset) if isinstance(subset, int) else max(1, round(float(subset) * p))
        if not 1 <= size <= p or runs < 2:
            raise InputError(f"need 1 <= subset size <= {p} pixels and runs >= 2, got {size} and {runs}")
        subsets = random_subsets(n, p, runs, size, seed)
    if subsets.dim() != 3 or len(subsets) != n:
        raise InputError(f"subsets must be [N={n}, runs, size], got {tuple(subsets.shape)}")
    runs = subsets.shape[1]
    subsets = subsets.to(x.device)
    other = fill_images(x, fill)
    r1 = runs + 1  # row 0 of each image: the unmodified image

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(x.device)
        i, r = rows // r1, rows % r1
        mask = torch.zeros(len(rows), p, dtype=torch.bool, device=x.device)
        has = r > 0
        if has.any():
            mask[has] = mask[has].scatter(1, subsets[i[has], r[has] - 1], True)
        changed = mask.view(-1, 1, h, w)
        return torch.where(changed, other[i], x[i]), t[i]

    scores = scores_of_rows(model, n * r1, make, output=output, batch_size=batch_size).view(n, r1)
    drops = scores[:, :1] - scores[:, 1:]  # [N, runs]
    sums = torch.gather(a[:, None, :].expand(n, runs, p), 2, subsets).sum(2).cpu()
    return row_pearson(drops, sums)


@dataclass(frozen=True)
class Faithfulness:
    """Deletion and insertion curves and the faithfulness correlation ``[N]`` of one method."""

    deletion: Curves
    insertion: Curves
    correlation: Tensor


def faithfulness_all(
    model: nn.Module,
    images: Tensor,
    maps: Mapping[str, Maps],
    targets: Mapping[str, Tensor | int | str | None] | None = None,
    *,
    steps: int = 32,
    deletion_fill: Fill = 0.0,
    insertion_fill: Fill = "blur",
    runs: int = 32,
    subset: float | int = 0.1,
    seed: int = 0,
    mode: Mode = "signed",
    output: Output = "probability",
    batch_size: int = 64,
    column: int = 0,
    subsets: Tensor | None = None,
) -> dict[str, Faithfulness]:
    """:func:`deletion`, :func:`insertion` and :func:`faithfulness_correlation` of several maps
    of the same images in one pass: every perturbed image is scored once, for every class that
    needs it, in batches that mix images and methods.

    What the methods share is built once per image: the image itself (deletion's first step,
    insertion's last, the correlation's reference), the fully deleted image, insertion's start and
    the correlation's random subsets (the same for every map, drawn as there); only the
    intermediate deletion and insertion steps are a method's own. Results equal the three calls
    (``fill`` of the correlation = ``deletion_fill``), up to the rounding of a different batching.

        res = faithfulness_all(model, x, {"saliency": s, "gradcam": g}, {"saliency": t, "gradcam": t})
        res["gradcam"].deletion.auc, res["gradcam"].correlation

    ``subsets`` (``[N, runs, size]`` pixel indices) replaces the correlation's draws, e.g. a
    shard's share of the whole set's (:func:`random_subsets` with ``first``).
    """
    from xailab.core.hooks import model_device

    x = check_images(images).to(model_device(model))
    names = list(maps)
    if not names:
        return {}
    n, _, h, w = x.shape
    p, q = h * w, steps - 1
    attr = [maps_for_images(maps[m], x, mode=mode, target=column) for m in names]
    t = torch.stack([resolve_target(model, x, (targets or {}).get(m), maps[m], column) for m in names], 1)
    ranks = torch.stack([pixel_ranks(a) for a in attr])  # [M, N, H, W]
    counts = _step_counts(p, steps).to(x.device)
    size = int(subset) if isinstance(subset, int) else max(1, round(float(subset) * p))
    if not 1 <= size <= p or runs < 2:
        raise InputError(f"need 1 <= subset size <= {p} pixels and runs >= 2, got {size} and {runs}")
    if subsets is None:
        subsets = random_subsets(n, p, runs, size, seed)
    elif tuple(subsets.shape) != (n, runs, size):
        raise InputError(f"subsets must have shape {(n, runs, size)}, got {tuple(subsets.shape)}")
    subsets = subsets.to(x.device)
    make = _row_maker(x, t, ranks, counts, subsets, fill_images(x, deletion_fill), fill_images(x, insertion_fill),
                      runs, q)
    total = n * (3 + runs) + len(names) * n * 2 * q
    scores = scores_of_rows(model, total, make, output=output, batch_size=batch_size)  # [rows, M]
    return _collect(names, scores, attr, t, subsets, counts, runs, q)


def _row_maker(x: Tensor, t: Tensor, ranks: Tensor, counts: Tensor, subsets: Tensor, gone: Tensor, start: Tensor,
               runs: int, q: int) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """The perturbed images of ``faithfulness_all``'s rows and their targets. Rows come first
    per image (``3 + runs`` shared: the image, fully deleted, insertion's start, the correlation's
    subsets), then per method and image (``2 * (steps - 1)`` own: deletion's, then insertion's)."""
    n, _, h, w = x.shape
    p = h * w
    s_rows, m_rows = 3 + runs, 2 * q  # per image: shared rows; per image and method: its own

    def shared(rows: Tensor) -> Tensor:
        i, s = rows // s_rows, rows % s_rows
        mask = torch.zeros(len(rows), p, dtype=torch.bool, device=x.device)
        sub = s >= 3
        if sub.any():
            mask[sub] = mask[sub].scatter(1, subsets[i[sub], s[sub] - 3], True)
        mask[s == 1] = True
        xb = torch.where(mask.view(-1, 1, h, w), gone[i], x[i])
        return torch.where((s == 2).view(-1, 1, 1, 1), start[i], xb)

    def own(rows: Tensor) -> Tensor:
        m, rest = rows // (n * m_rows), rows % (n * m_rows)
        i, r = rest // m_rows, rest % m_rows
        changed = (ranks[m, i] < counts[r % q + 1].view(-1, 1, 1))[:, None]
        dele = torch.where(changed, gone[i], x[i])
        return torch.where((r < q).view(-1, 1, 1, 1), dele, torch.where(changed, x[i], start[i]))

    def make(rows: Tensor) -> tuple[Tensor, Tensor]:
        rows = rows.to(x.device)
        first = rows < n * s_rows
        parts = [shared(rows[first])] if first.any() else []
        if not first.all():
            parts.append(own(rows[~first] - n * s_rows))
        i = torch.where(first, rows // s_rows, ((rows - n * s_rows) % max(n * m_rows, 1)) // max(m_rows, 1))
        return torch.cat(parts), t[i]

    return make


def _collect(names: list[str], scores: Tensor, attr: list[Tensor], t: Tensor, subsets: Tensor, counts: Tensor,
             runs: int, q: int) -> dict[str, Faithfulness]:
    """Each method's curves and correlation from the scores of all rows (``[rows, M]``)."""
    n, p = t.shape[0], attr[0].flatten(1).shape[1]
    s_rows, k = 3 + runs, len(names)
    common = scores[: n * s_rows].view(n, s_rows, k)
    mine = scores[n * s_rows:].view(k, n, 2, q, k)
    fractions = counts.cpu().double() / p
    out: dict[str, Faithfulness] = {}
    for j, m in enumerate(names):
        base, deleted, started = common[:, 0, j:j + 1], common[:, 1, j:j + 1], common[:, 2, j:j + 1]
        d = torch.cat([base, mine[j, :, 0, :, j], deleted], 1)
        ins = torch.cat([started, mine[j, :, 1, :, j], base], 1)
        drops = base - common[:, 3:, j]
        flat = attr[j].flatten(1).double()
        sums = torch.gather(flat[:, None, :].expand(n, runs, p), 2, subsets).sum(2).cpu()
        targets_j = t[:, j].cpu()
        out[m] = Faithfulness(
            deletion=Curves(kind="deletion", fractions=fractions, scores=d, targets=targets_j),
            insertion=Curves(kind="insertion", fractions=fractions, scores=ins, targets=targets_j),
            correlation=row_pearson(drops, sums),
        )
    return out
