"""How attributions are distributed: histograms of normalised values, scatter data of two methods.

Maps are normalised per image, ``a / max|a|`` (after ``mode``), so every method lies in
``[0, 1]`` (``[-1, 1]`` when signed) and methods of different units share one axis. Users often
look only at the informative pixels: ``low`` drops every value whose magnitude is below it
(default 0.2), and the histogram records which fraction of the pixels was kept.

    h = histogram(saliency_maps, low=0.2)    # h.edges [bins + 1], h.counts [bins], h.kept
    x, y = scatter_data(saliency_maps, gradcam_maps, max_points=5000)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from xailab.core.errors import InputError
from xailab.metrics.maps import Maps, Mode, common_size, normalise_max, pixel_maps, prepare


@dataclass(frozen=True)
class Histogram:
    """Counts of normalised attribution values over all images.

    Attributes:
        edges: ``bins + 1`` bin edges; from ``low`` to 1 (and from -1 to ``-low`` when signed).
        counts: number of pixels in each bin, summed over images.
        kept: the fraction of all pixels whose magnitude is at least ``low``.
    """

    edges: np.ndarray
    counts: np.ndarray
    kept: float

    @property
    def density(self) -> np.ndarray:
        """Counts as a probability density over the kept pixels."""
        total = self.counts.sum()
        widths = np.diff(self.edges)
        return self.counts / (total * widths) if total else np.zeros_like(self.counts, dtype=float)


def histogram(maps: Maps, *, bins: int = 20, low: float = 0.2, mode: Mode = "abs", target: int = 0) -> Histogram:
    """Histogram of max-normalised attributions with magnitude ``>= low`` (see module)."""
    if bins < 1:
        raise InputError(f"bins must be >= 1, got {bins}")
    if not 0.0 <= low < 1.0:
        raise InputError(f"low is a cut on max-normalised values and must lie in [0, 1), got {low}")
    a = normalise_max(prepare(maps, mode=mode, target=target)).flatten().double()
    keep = a.abs() >= low
    vals = a[keep].cpu().numpy()
    if mode == "signed":
        edges = np.linspace(-1.0, 1.0, 2 * bins + 1) if low == 0 else np.concatenate(
            [np.linspace(-1.0, -low, bins + 1), np.linspace(low, 1.0, bins + 1)]
        )
        counts, _ = np.histogram(vals, bins=edges)
        if low > 0:  # the middle bin (-low, low) holds nothing by construction; drop it
            counts = np.delete(counts, bins)
            edges = np.delete(edges, bins)
    else:
        edges = np.linspace(low, 1.0, bins + 1)
        counts, _ = np.histogram(vals, bins=edges)
    return Histogram(edges=edges, counts=counts, kept=float(keep.double().mean()))


def scatter_data(
    a: Maps,
    b: Maps,
    *,
    mode: Mode = "abs",
    low: float = 0.0,
    max_points: int | None = 5000,
    seed: int = 0,
    target: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs ``(a_i, b_i)`` of max-normalised values at the same pixels of the same images.

    Pixels where both magnitudes are below ``low`` are dropped; at most ``max_points`` pairs
    are returned, drawn at random with ``seed`` (same seed, same points).
    """
    pa = pixel_maps(a, target, name="first maps")
    pb = pixel_maps(b, target, name="second maps")
    if len(pa) != len(pb):
        raise InputError(f"the two sets of maps cover {len(pa)} and {len(pb)} images; they must match")
    size = common_size([pa, pb])
    x = normalise_max(prepare(pa, mode=mode, size=size)).flatten().double()
    y = normalise_max(prepare(pb, mode=mode, size=size)).flatten().double()
    keep = (x.abs() >= low) | (y.abs() >= low)
    x, y = x[keep], y[keep]
    if max_points is not None and len(x) > max_points:
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(x), generator=g)[:max_points].to(x.device)
        x, y = x[idx], y[idx]
    return x.cpu().numpy(), y.cpu().numpy()


def summary(maps: Maps, *, mode: Mode = "abs", target: int = 0) -> dict[str, float]:
    """A few numbers describing a method's maps: share of mass in the top 10 % of pixels
    (concentration), Gini coefficient of the magnitudes, share of negative attribution."""
    raw = pixel_maps(maps, target).double()
    a = prepare(raw, mode=mode).abs().flatten(1)
    srt, _ = a.sort(dim=1)
    n = a.shape[1]
    total = srt.sum(dim=1).clamp_min(1e-300)
    k = max(1, round(0.1 * n))
    top = srt[:, -k:].sum(dim=1) / total
    idx = torch.arange(1, n + 1, dtype=torch.float64, device=a.device)
    gini = ((2 * idx - n - 1) * srt).sum(dim=1) / (n * total)
    neg = raw.clamp_max(0).abs().flatten(1).sum(1) / raw.abs().flatten(1).sum(1).clamp_min(1e-300)
    return {"top10_mass": float(top.mean()), "gini": float(gini.mean()), "negative_share": float(neg.mean())}
