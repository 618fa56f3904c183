"""Max-sensitivity: how much a map changes under a small perturbation of the input.

Yeh et al. 2019, "On the (in)fidelity and sensitivity of explanations", NeurIPS,
arXiv:1901.09392, estimated by Monte Carlo as Quantus does::

    SENS_max(x) = max_{s = 1..S} || Phi(x + d_s) - Phi(x) ||_F / || Phi(x) ||_F,
    d_s ~ U[-r, r]^(C x H x W)

``Phi`` is the method's pixel map (channels summed) for the class explained at ``x``, kept fixed
for the noisy copies. Lower is better (a robust explanation). ``relative=False`` drops the
division by ``||Phi(x)||`` (Yeh et al.'s original, in the units of the map).

    s = max_sensitivity(model, images, "saliency", samples=10, radius=0.05)   # [N]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.hooks import model_device
from xailab.metrics.info import metric
from xailab.metrics.maps import ExplainFn, Maps, check_images, pixel_maps, resize, resolve_target
from xailab.metrics.sanity import explain_fn


def uniform_noise(shape: tuple[int, ...], samples: int, radius: float, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """``[samples, N, C, H, W]`` noise in ``[-radius, radius]``; image ``i`` draws from its own
    generator (``seed * 1_000_003 + i``), so its noise does not depend on the other images."""
    n = shape[0]
    out = torch.empty(samples, *shape, dtype=dtype)
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[:, i] = (torch.rand(samples, *shape[1:], generator=g, dtype=torch.float64) * 2 - 1).to(dtype) * radius
    return out


@metric(
    direction="lower", category="robustness", low=0.0,
    summary="largest relative change of the map under small uniform input noise",
)
def max_sensitivity(
    model: nn.Module,
    images: Tensor,
    method: str | ExplainFn,
    target: Tensor | int | str | None = None,
    *,
    samples: int = 10,
    radius: float = 0.2,
    relative: bool = True,
    seed: int = 0,
    maps: Maps | None = None,
    noise: Tensor | None = None,
    method_params: dict[str, Any] | None = None,
) -> Tensor:
    """Max-sensitivity per image, ``[N]`` (see the module docstring).

    Args:
        method: a registered method name (built with ``method_params``) or
            ``explain(model, images, targets [N]) -> maps``.
        samples: noisy copies per image; radius: half-width ``r`` of the uniform noise (in the
            model's input units).
        maps: the maps at the clean images, if already computed (default: explained here).
        noise: explicit noise ``[samples, N, C, H, W]`` instead of :func:`uniform_noise`.
    """
    name, explain = explain_fn(method, method_params)
    x = check_images(images).to(model_device(model))
    t = resolve_target(model, x, target, maps)
    base = pixel_maps(maps if maps is not None else explain(model, x, t), name=f"maps of {name}").detach()
    if len(base) != len(x):
        raise InputError(f"maps of {name} cover {len(base)} images, expected {len(x)}")
    size = tuple(base.shape[-2:])
    base = base.double().cpu()
    if noise is None:
        if samples < 1 or radius <= 0:
            raise InputError(f"need samples >= 1 and radius > 0, got {samples} and {radius}")
        noise = uniform_noise(tuple(x.shape), samples, radius, seed, x.dtype)
    if noise.dim() != 5 or tuple(noise.shape[1:]) != tuple(x.shape):
        raise InputError(f"noise must be [samples, *{tuple(x.shape)}], got {tuple(noise.shape)}")
    den = base.flatten(1).norm(dim=1) if relative else torch.ones(len(x), dtype=torch.float64)
    best = torch.full((len(x),), float("-inf"), dtype=torch.float64)
    for s in range(noise.shape[0]):
        xs = x + noise[s].to(x.device, x.dtype)
        new = pixel_maps(explain(model, xs, t), name=f"maps of {name}").detach().double().cpu()
        new = resize(new, size)  # type: ignore[arg-type]
        sens = (new - base).flatten(1).norm(dim=1) / den
        best = torch.maximum(best, torch.nan_to_num(sens, nan=float("-inf")))
    return torch.where(best == float("-inf"), torch.full_like(best, float("nan")), best)
