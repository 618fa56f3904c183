"""Structural similarity (SSIM) of two maps, batched over images.

Wang et al. 2004, "Image quality assessment: from error visibility to structural similarity"
(IEEE TIP 13(4)), with the settings of ``skimage.metrics.structural_similarity``: a 7x7 uniform
window, sample covariances, ``K1 = 0.01``, ``K2 = 0.03``, and the mean of the SSIM image over
the pixels whose window lies inside the image::

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)),
    C1 = (K1 L)^2,  C2 = (K2 L)^2,  L = data range

Adebayo et al. 2018 (arXiv:1810.03292) use it, beside rank correlation, to say how much a map
changed after the model's weights were randomised.

    s = ssim(saliency_maps, gradcam_maps)      # [N], 1 = identical structure
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from xailab.core.errors import InputError
from xailab.metrics.info import metric
from xailab.metrics.maps import Maps, Mode, common_size, prepare


def structural_similarity(
    x: Tensor,
    y: Tensor,
    data_range: Tensor | float,
    *,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> Tensor:
    """Mean SSIM of each pair of images ``x, y [N, H, W]`` -> ``[N]``, as scikit-image computes it.

    ``data_range``: the value range ``L`` (a number, or one per image ``[N]``).
    """
    if x.shape != y.shape or x.dim() != 3:
        raise InputError(f"SSIM needs two [N, H, W] stacks of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if win_size % 2 == 0 or win_size < 3:
        raise InputError(f"win_size must be odd and >= 3, got {win_size}")
    if min(x.shape[-2:]) < win_size:
        raise InputError(
            f"maps of {tuple(x.shape[-2:])} pixels are smaller than the SSIM window ({win_size}); "
            "compare them at a higher resolution or pass a smaller odd win_size"
        )
    x = x.double()[:, None]
    y = y.double()[:, None]
    npix = win_size * win_size
    cov_norm = npix / (npix - 1)

    def mean(t: Tensor) -> Tensor:  # the uniform filter over the 'valid' region = skimage's crop
        return F.avg_pool2d(t, win_size, stride=1)

    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    rng = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).reshape(-1, 1, 1, 1)
    c1 = (k1 * rng) ** 2
    c2 = (k2 * rng) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


@metric(
    direction="neither", category="agreement", low=-1.0, high=1.0,
    summary="structural similarity of two maps",
)
def ssim(
    a: Maps,
    b: Maps,
    *,
    mode: Mode = "abs",
    win_size: int = 7,
    data_range: float | None = None,
    target: int = 0,
) -> Tensor:
    """SSIM of two methods' maps per image, ``[N]``.

    Each map is first divided by its largest absolute value (methods have different units), so
    ``data_range`` defaults to ``max - min`` of the pair per image (as Quantus does). Maps of
    different resolutions are compared at the larger one.
    """
    pa = prepare(a, mode="signed", target=target, name="first maps")
    pb = prepare(b, mode="signed", target=target, name="second maps", n=len(pa))
    size = common_size([pa, pb])
    pa = prepare(pa, mode=mode, size=size).double()
    pb = prepare(pb, mode=mode, size=size).double()
    pa = pa / pa.abs().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    pb = pb / pb.abs().flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    if data_range is None:
        both = torch.cat([pa.flatten(1), pb.flatten(1)], dim=1)
        rng = (both.amax(dim=1) - both.amin(dim=1)).clamp_min(1e-12)
        return structural_similarity(pa, pb, rng, win_size=win_size)
    return structural_similarity(pa, pb, data_range, win_size=win_size)
