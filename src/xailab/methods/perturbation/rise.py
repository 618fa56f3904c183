"""RISE (Petsiuk, Das & Saenko 2018, "RISE: Randomized input sampling for explanation of black-box
models", arXiv:1806.07421).

``n_masks`` random masks: a ``g x g`` grid of cells, each kept with probability ``p``, upsampled
bilinearly to ``(g + 1) * cell_size`` pixels and cropped to the image at a random shift of up to
one cell (so cell borders fall anywhere). The saliency of a pixel is the score the masked images
keep, weighted by how much of the pixel each mask kept::

    map[p] = 1 / (N * p) * sum_i f(x * M_i + fill * (1 - M_i)) * M_i[p]

    res = create("rise", model, n_masks=2000).explain(images)
    res.maps.shape        # [N, 1, H, W]; about E[f(masked x) | pixel kept]

As in the paper's code the masked image is ``x * M`` with ``fill = 0`` (the dataset mean for
normalised inputs). Masks are drawn per image from the seed and built just before their forward
pass, never all at once; the masks of several images share passes.

``sampler="orthogonal"`` (opt-in, ``p = 0.5``) draws structured masks for the same map: the grids
are rows of randomised strength-3 orthogonal arrays in complement pairs (each cell kept in exactly
half the masks of a block, every two cells together in exactly a quarter; the LIME sampler's
arrays, :func:`~xailab.methods.perturbation.sampling.orthogonal_pairs`), a pair sharing its shift,
and the estimate is centred on the mean score ``f_bar`` (a control variate: ``E[M[p]] = p`` for
every pixel, so the expectation is unchanged)::

    map[p] = f_bar + 1 / (N * p) * sum_i (f(x_i) - f_bar) * M_i[p]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.methods.perturbation.base import (
    PerturbationExplainer,
    as_fill,
    perturbation_card,
    plain_value,
)
from xailab.methods.perturbation.sampling import orthogonal_pairs

RISE_SAMPLERS = ("random", "orthogonal")


def rise_masks(grid: Tensor, shifts: Tensor, cell: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """``[m, H, W]`` soft masks from binary grids ``[m, gh, gw]`` and shifts ``[m, 2]``."""
    m, gh, gw = grid.shape
    up = F.interpolate(grid[:, None], size=((gh + 1) * cell[0], (gw + 1) * cell[1]), mode="bilinear",
                       align_corners=False)[:, 0]
    h, w = size
    r = shifts[:, :1] + torch.arange(h, device=grid.device)  # [m, H]
    c = shifts[:, 1:] + torch.arange(w, device=grid.device)  # [m, W]
    return up[torch.arange(m, device=grid.device)[:, None, None], r[:, :, None], c[:, None, :]]


@register("rise", family="perturbation")
class Rise(PerturbationExplainer):
    """RISE: random smooth masks weighted by the score they keep (Petsiuk et al. 2018).

    Args:
        n_masks: masks (= model evaluations) per image; the paper used 4000-8000 on ImageNet,
            the default 2000 trades a little noise for half the time.
        cell_size: side of a grid cell in pixels (int or ``(h, w)``); ``None`` (default) gives a
            7 x 7 grid as in the paper (``ceil(H / 7)``: 5 pixels at 32x32, 32 at 224x224).
        p: probability that a cell is kept (paper: 0.5).
        fill: what masked pixels show (one number or one per channel), default 0.
        sampler: ``"random"`` (default, the paper's masks) or ``"orthogonal"`` (``p = 0.5``:
            balanced complement pairs and a centred estimate, see the module docstring).
    """

    card = perturbation_card(
        "RISE",
        summary="Random smooth binary masks (low-resolution, upsampled with random shifts); the "
                "map is the sum of the masks weighted by the class score of the masked image.",
        paper="Petsiuk, Das, Saenko (2018), \"RISE: Randomized Input Sampling for Explanation of "
              "Black-box Models\", BMVC.",
        where="BMVC 2018; any classifier.",
        cost="n_masks (default 2000) forward passes per image, shared by every target.",
        limits=(
            "Needs thousands of masks for a stable map; random.",
            "Mask cell size and keep probability set the resolution and change the result.",
        ),
    )

    quick_params: ClassVar[dict[str, Any]] = {"n_masks": 32}
    ranges: ClassVar[dict[str, Limit]] = {"n_masks": (1, None), "p": (0, 1)}

    def __init__(
        self,
        model: nn.Module,
        *,
        n_masks: int = 2000,
        cell_size: int | tuple[int, int] | None = None,
        p: float = 0.5,
        fill: float | Sequence[float] = 0.0,
        sampler: str = "random",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if n_masks < 1:
            raise InputError(f"n_masks must be >= 1, got {n_masks}")
        if not 0.0 < p <= 1.0:
            raise InputError(f"p must be in (0, 1], got {p}")
        if cell_size is not None:
            cs = (cell_size, cell_size) if isinstance(cell_size, int) else tuple(cell_size)
            if len(cs) != 2 or min(cs) < 1:
                raise InputError(f"cell_size must be a positive int or (h, w), got {cell_size!r}")
        if sampler not in RISE_SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(RISE_SAMPLERS)}, not {sampler!r}")
        if sampler == "orthogonal" and p != 0.5:
            raise InputError(f"sampler='orthogonal' keeps every cell in half the masks: it needs p=0.5, not {p}")
        self.sampler = sampler
        self.n_masks = int(n_masks)
        self.cell_size = cell_size
        self.p = float(p)
        self.fill = fill
        self._cell: tuple[int, int] | None = None

    def resolve(self, height: int, width: int) -> tuple[int, int]:
        """The cell size ``(h, w)`` in pixels for an ``height x width`` image."""
        if self.cell_size is None:
            return math.ceil(height / 7), math.ceil(width / 7)
        cs = self.cell_size
        cell = (cs, cs) if isinstance(cs, int) else (int(cs[0]), int(cs[1]))
        if cell[0] > height or cell[1] > width:
            raise InputError(
                f"RISE cell_size {cell[0]}x{cell[1]} does not fit the {height}x{width} images "
                f"(every mask would be nearly constant): give cell_size in 1..{min(height, width)}")
        return cell

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        self._cell = self.resolve(*x.shape[-2:])

    def samples_per_image(self, n_targets: int) -> int:
        return self.n_masks

    def params(self) -> dict[str, Any]:
        fill = plain_value(self.fill)
        cell = self._cell or self.cell_size
        return {**super().params(), "n_masks": self.n_masks, "cell_size": cell, "p": self.p, "fill": fill,
                **({"sampler": self.sampler} if self.sampler != "random" else {})}

    def draw(self, g: torch.Generator, grid: tuple[int, int], cell: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """``(grids [n_masks, gh, gw] bool, shifts [n_masks, 2])`` for one image."""
        n, (gh, gw) = self.n_masks, grid
        if self.sampler == "orthogonal":
            grids = orthogonal_pairs(n, gh * gw, g).reshape(n, gh, gw)
            half = (n + 1) // 2  # a complement pair shares its shift
            shifts = torch.stack([torch.randint(cell[0], (half,), generator=g),
                                  torch.randint(cell[1], (half,), generator=g)], dim=1)
            return grids, shifts.repeat_interleave(2, dim=0)[:n]
        grids = torch.rand(n, gh, gw, generator=g, dtype=torch.float64) < self.p
        shifts = torch.stack([torch.randint(cell[0], (n,), generator=g), torch.randint(cell[1], (n,), generator=g)], dim=1)
        return grids, shifts

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        b_count, t = targets.shape
        h, w = x.shape[-2:]
        cell = self._cell or self.resolve(h, w)
        gh, gw = math.ceil(h / cell[0]), math.ceil(w / cell[1])
        grids, shifts = zip(*(self.draw(self.generator(b), (gh, gw), cell) for b in range(b_count)), strict=True)
        fill = as_fill(self.fill, x)
        saliency = torch.zeros(b_count, t, h, w, dtype=x.dtype, device=x.device)
        score_sum = torch.zeros(b_count, t, 1, 1, dtype=x.dtype, device=x.device)  # for the centred estimate
        mask_sum = torch.zeros(b_count, 1, h, w, dtype=x.dtype, device=x.device)
        pending: dict[tuple[int, int], Tensor] = {}

        def build(b: int, lo: int, hi: int) -> Tensor:
            grid = grids[b][lo:hi].to(device=x.device, dtype=x.dtype)
            masks = rise_masks(grid, shifts[b][lo:hi].to(x.device), cell, (h, w))
            pending[(b, lo)] = masks
            return x[b] * masks[:, None] + fill * (1 - masks[:, None])

        def consume(b: int, lo: int, hi: int, scores: Tensor) -> None:
            masks = pending.pop((b, lo))
            saliency[b] += torch.einsum("mt,mhw->thw", scores.to(x.dtype), masks)
            score_sum[b, :, 0, 0] += scores.to(x.dtype).sum(0)
            mask_sum[b, 0] += masks.sum(0)

        self.evaluate([self.n_masks] * b_count, build, consume, targets)
        if self.sampler == "orthogonal":  # sum (f_i - f_bar) M_i / (N p) + f_bar
            f_bar = score_sum / self.n_masks
            return (saliency - f_bar * mask_sum) / (self.n_masks * self.p) + f_bar
        return saliency / (self.n_masks * self.p)
