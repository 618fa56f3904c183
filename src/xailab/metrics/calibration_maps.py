"""Maps that ignore the model, for calibrating metrics: what does "no explanation" score?

* :func:`random_maps`: uniform noise, one independent map per image (seeded per image);
* :func:`edge_maps`: the Sobel gradient magnitude of the image (summed over channels), the
  "edge detector" of Adebayo et al. 2018. It looks like a saliency map and passes many visual
  checks, but does not depend on the model, so the randomisation test must flag it.

Both also exist as explain functions ``(model, images, targets) -> maps`` for the metrics that
re-explain (:func:`~xailab.metrics.sanity.randomisation_test`, max-sensitivity).

    baseline = deletion(model, images, random_maps(images)).auc.mean()
    randomisation_test(model, images, edge_explain).flagged     # True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.metrics.maps import check_images


def random_maps(images: Tensor, seed: int = 0) -> Tensor:
    """``[N, H, W]`` uniform noise in [0, 1); image ``i`` uses generator ``seed * 1_000_003 + i``."""
    x = check_images(images)
    n, _, h, w = x.shape
    out = torch.empty(n, h, w, dtype=torch.float64)
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[i] = torch.rand(h, w, generator=g, dtype=torch.float64)
    return out.to(x.dtype)


def edge_maps(images: Tensor) -> Tensor:
    """``[N, H, W]`` Sobel gradient magnitude, ``sqrt(gx^2 + gy^2)`` summed over channels."""
    x = check_images(images)
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype, device=x.device)
    c = x.shape[1]
    xp = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(xp, kx.view(1, 1, 3, 3).expand(c, 1, 3, 3), groups=c)
    gy = F.conv2d(xp, kx.t().reshape(1, 1, 3, 3).expand(c, 1, 3, 3), groups=c)
    return torch.sqrt(gx**2 + gy**2).sum(dim=1)


def random_explain(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """:func:`random_maps` as an explain function (ignores the model and the targets)."""
    return random_maps(images)


def edge_explain(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """:func:`edge_maps` as an explain function (ignores the model and the targets)."""
    return edge_maps(images)
