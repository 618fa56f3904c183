"""Turning what a user hands a metric into one attribution value per pixel, ``[N, H, W]``.

Every metric in :mod:`xailab.metrics` takes maps in any of these forms:

* an :class:`~xailab.core.explanation.Explanation`: its ``pixel_maps()`` column ``target``
  (channel maps summed over channels);
* a tensor ``[N, H, W]``: one value per pixel, as it is;
* a tensor ``[N, C, H, W]``: per-channel maps, summed over ``C`` (pass ``[N, 1, H, W]`` for a
  single-channel map). A 4-D tensor is never read as ``[N, T, H, W]``: pick the target first.

and treats their sign explicitly with ``mode`` (applied after the channel sum):

* ``"abs"``: ``|a|``, how much a pixel matters whatever the direction (agreement, sanity);
* ``"positive"``: ``max(a, 0)``, evidence *for* the class only (localisation, Arras et al. 2022);
* ``"signed"``: ``a`` as it is (deletion/insertion order: most positive first).

Maps of another resolution than the images (e.g. a 7x7 CAM) are resized bilinearly.

    a = pixel_maps(result)                      # [N, H, W] from an Explanation
    a = prepare(a, mode="abs", size=(32, 32))   # sign handled, resized
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation

Mode = Literal["abs", "positive", "signed"]
Maps: TypeAlias = "Tensor | Explanation"
#: ``explain(model, images [N, C, H, W], targets [N]) -> maps`` (any form :func:`pixel_maps` reads)
ExplainFn: TypeAlias = "Callable[[nn.Module, Tensor, Tensor], Tensor | Explanation]"

MODES = ("abs", "positive", "signed")


def pixel_maps(maps: Maps, target: int = 0, *, name: str = "maps") -> Tensor:
    """``[N, H, W]`` from an Explanation (column ``target``) or a 3-D / 4-D tensor (see module)."""
    if isinstance(maps, Explanation):
        t = maps.targets.shape[1]
        if not -t <= target < t:
            raise InputError(f"{name}: target column {target} does not exist (the explanation has {t})")
        return maps.pixel_maps()[:, target]
    if not isinstance(maps, Tensor):
        raise InputError(f"{name} must be a tensor or an Explanation, got {type(maps).__name__}")
    if maps.dim() == 3:
        out = maps
    elif maps.dim() == 4:
        out = maps.sum(dim=1)
    else:
        raise InputError(
            f"{name} must be [N, H, W] or [N, C, H, W] (or an Explanation), got shape {tuple(maps.shape)}"
        )
    if not out.is_floating_point():
        out = out.float()
    if not torch.isfinite(out).all():
        raise InputError(f"{name} contain NaN or infinite values")
    return out


def apply_mode(maps: Tensor, mode: Mode) -> Tensor:
    """``|a|``, ``max(a, 0)`` or ``a`` (see the module docstring)."""
    if mode == "abs":
        return maps.abs()
    if mode == "positive":
        return maps.clamp_min(0)
    if mode == "signed":
        return maps
    raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")


def resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of ``[N, H, W]`` maps to ``size`` (a no-op when already that size)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def prepare(
    maps: Maps,
    *,
    mode: Mode = "abs",
    size: tuple[int, int] | None = None,
    n: int | None = None,
    target: int = 0,
    name: str = "maps",
) -> Tensor:
    """``[N, H, W]`` maps with the sign handled by ``mode`` and resized to ``size``.

    ``n``: the number of images the maps must cover (a clear error names both counts).
    """
    a = pixel_maps(maps, target, name=name)
    if n is not None and len(a) != n:
        raise InputError(f"{name} cover {len(a)} images, expected {n} (one map per image)")
    if size is not None:
        a = resize(a, size)
    return apply_mode(a, mode)


def normalise_max(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Each map divided by its largest absolute value: ``a / max|a|`` (zero maps stay zero)."""
    scale = maps.abs().flatten(1).amax(dim=1).clamp_min(eps)
    return maps / scale.view(-1, *([1] * (maps.dim() - 1)))


def common_size(maps: list[Tensor]) -> tuple[int, int]:
    """The largest height and width among ``maps`` (the resolution they are compared at)."""
    return max(int(m.shape[-2]) for m in maps), max(int(m.shape[-1]) for m in maps)


def check_images(images: Tensor, name: str = "images") -> Tensor:
    """``images`` as a finite floating-point batch ``[N, C, H, W]`` (a clear error otherwise)."""
    if not isinstance(images, Tensor):
        raise InputError(f"{name} must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() != 4:
        raise InputError(f"{name} must be [N, C, H, W], got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise InputError(f"no {name} given")
    if not images.is_floating_point():
        raise InputError(f"{name} must be floating point, got {images.dtype} (convert and normalise first)")
    if not torch.isfinite(images).all():
        raise InputError(f"{name} contain NaN or infinite values")
    return images.detach()


def maps_for_images(maps: Maps, images: Tensor, *, mode: Mode, target: int = 0, name: str = "maps") -> Tensor:
    """Maps ``[N, H, W]`` matched to ``images [N, C, H, W]``: same count, resized to their size."""
    a = pixel_maps(maps, target, name=name)
    if len(a) != len(images):
        raise InputError(
            f"{name} {tuple(a.shape)} do not match the images {tuple(images.shape)}: "
            f"{len(a)} maps for {len(images)} images"
        )
    return apply_mode(resize(a, (int(images.shape[-2]), int(images.shape[-1]))), mode).to(images.device, images.dtype)


def rankdata(x: Tensor) -> Tensor:
    """Ranks (1-based) of each row of ``x [N, P]``, ties given their average rank (as scipy)."""
    n, p = x.shape
    sorted_x, order = x.sort(dim=1, stable=True)
    new = torch.ones_like(sorted_x, dtype=torch.bool)
    new[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    group = new.long().cumsum(dim=1) - 1 + torch.arange(n, device=x.device)[:, None] * p
    pos = torch.arange(p, device=x.device, dtype=torch.float64).expand(n, p).reshape(-1)
    flat = group.reshape(-1)
    first = torch.full((n * p,), float(p), dtype=torch.float64, device=x.device)
    last = torch.zeros(n * p, dtype=torch.float64, device=x.device)
    first = first.scatter_reduce(0, flat, pos, reduce="amin")
    last = last.scatter_reduce(0, flat, pos, reduce="amax")
    avg = ((first[flat] + last[flat]) / 2 + 1).reshape(n, p)
    ranks = torch.empty_like(avg)
    ranks.scatter_(1, order, avg)
    return ranks


def row_pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of each row pair of ``x, y [N, P]`` (float64; NaN for a constant row)."""
    x = x.double() - x.double().mean(dim=1, keepdim=True)
    y = y.double() - y.double().mean(dim=1, keepdim=True)
    den = x.norm(dim=1) * y.norm(dim=1)
    r = (x * y).sum(dim=1) / den
    return torch.where(den > 0, r.clamp(-1, 1), torch.full_like(r, float("nan")))


def nanmean(values: object, axis: int | None = None) -> Any:
    """``np.nanmean`` that returns NaN for an all-NaN slice without a RuntimeWarning."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(values, dtype=float), axis=axis)


def nanstd(values: object, axis: int | None = None) -> Any:
    """``np.nanstd`` without RuntimeWarnings for all-NaN slices."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(np.asarray(values, dtype=float), axis=axis)


def resolve_target(
    model: nn.Module,
    images: Tensor,
    target: Tensor | int | str | None,
    maps: Maps | None = None,
    column: int = 0,
) -> Tensor:
    """One class per image, ``LongTensor [N]``.

    ``None`` takes the explanation's own targets (column ``column``) when ``maps`` is an
    Explanation, else the model's top class; an ``int`` / ``str`` / tensor goes through
    :func:`xailab.core.targets.resolve_targets` (e.g. ``"top1"``, ``"least"``, a class index).
    """
    from xailab.core.hooks import model_session
    from xailab.core.targets import resolve_targets

    if target is None and isinstance(maps, Explanation):
        return maps.targets[:, column].to(images.device)
    if isinstance(target, Tensor) and target.dim() == 1:
        if len(target) != len(images):
            raise InputError(f"got {len(target)} targets for {len(images)} images")
        return target.to(images.device, torch.long)
    from xailab.metrics.perturb import logits_of

    with model_session(model), torch.no_grad():
        logits = logits_of(model(images), len(images))
    spec = "top1" if target is None else target
    cols, _ = resolve_targets(spec, logits)
    if cols.shape[1] != 1:
        raise InputError("metrics take one target per image; pick one column of a multi-target spec")
    return cols[:, 0]
