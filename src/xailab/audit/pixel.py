"""Pixel space: attacks and triggers change pixels in ``[0, 1]``; the model sees them normalised.

A model of the zoo expects ``(x - mean) / std`` (its :class:`~xailab.data.transforms.Preprocessing`,
see :func:`xailab.models.get_preprocessing`). An attack that stepped in normalised space would have
to clip every channel to ``[(0 - mean) / std, (1 - mean) / std]`` and measure its budget in units of
``std``; working on pixels keeps the budget (``eps = 8/255``) and the valid range (``[0, 1]``) what a
user means by them. :class:`PixelModel` puts the normalisation inside the model, as foolbox's
``PyTorchModel(preprocessing=...)`` does.

    px = PixelModel(model, get_preprocessing(model))   # px(x01) == model((x01 - mean) / std)
    linf, l2, changed = perturbation_norms(x_adv - x)  # [N] each
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.data.transforms import Preprocessing

#: a pixel counts as changed when some channel moved by more than this (far below 1/255)
CHANGE_TOL = 1e-6


class PixelModel(nn.Module):
    """``model(normalise(x))`` for pixels ``x`` in ``[0, 1]``; the identity normalisation when
    ``preprocessing`` is None (a model that takes pixels as they are)."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing | None) -> None:
        super().__init__()
        self.model = model
        self.preprocessing = preprocessing

    def normalize(self, x: Tensor) -> Tensor:
        return self.preprocessing.normalize(x) if self.preprocessing is not None else x

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(self.normalize(x))
        if isinstance(out, (tuple, list)):
            out = out[0]
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise InputError("the model must return logits [N, classes]")
        return out


def resolve_preprocessing(model: nn.Module, preprocessing: Preprocessing | str | None = "model") -> Preprocessing | None:
    """``"model"`` (default): what :func:`xailab.models.get_preprocessing` recorded for ``model``
    (None when nothing was recorded: the model takes pixels); ``None``: none; else the one given."""
    if isinstance(preprocessing, str):
        if preprocessing != "model":
            raise InputError(f"preprocessing must be a Preprocessing, None or 'model', not {preprocessing!r}")
        from xailab.models.preprocessing import get_preprocessing

        return get_preprocessing(model)
    return preprocessing


def check_pixels(images: Tensor, what: str = "images") -> Tensor:
    """``images`` as a float batch ``[N, C, H, W]`` in ``[0, 1]``, or an InputError that says why."""
    if not isinstance(images, Tensor):
        raise InputError(f"{what} must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
    if images.dim() == 3:
        raise InputError(f"{what} must be a batch [N, C, H, W], got one image {tuple(images.shape)}: use .unsqueeze(0)")
    if images.dim() != 4 or len(images) == 0:
        raise InputError(f"{what} must be a non-empty batch [N, C, H, W], got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"{what} must be float pixels in [0, 1], got {images.dtype} (divide uint8 by 255)")
    if not torch.isfinite(images).all():
        raise InputError(f"{what} contain NaN or infinite values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-6 or hi > 1 + 1e-6:
        raise InputError(
            f"{what} must be pixels in [0, 1], got values in [{lo:.3g}, {hi:.3g}]: pass images before "
            "normalisation (ImageDataset.denormalize / Preprocessing.denormalize undo it); the attack "
            "normalises them through the model's preprocessing"
        )
    return images.detach().clamp(0.0, 1.0)


def perturbation_norms(delta: Tensor, tol: float = CHANGE_TOL) -> tuple[Tensor, Tensor, Tensor]:
    """Per image: ``(max |d|, ||d||_2, pixels changed)`` of ``delta [N, C, H, W]``.

    A pixel (one spatial position) counts as changed when any of its channels moved by more
    than ``tol``.
    """
    flat = delta.detach().flatten(1)
    linf = flat.abs().amax(dim=1)
    l2 = flat.double().norm(dim=1).to(delta.dtype)
    changed = (delta.detach().abs().amax(dim=1) > tol).flatten(1).sum(dim=1)
    return linf, l2, changed


def square_masks(n: int, size: tuple[int, int], patch: int, positions: Tensor) -> Tensor:
    """Boolean masks ``[n, H, W]``: a ``patch`` x ``patch`` square at ``positions [n, 2]`` (top, left)."""
    h, w = size
    rows = torch.arange(h, device=positions.device)[None, :, None]
    cols = torch.arange(w, device=positions.device)[None, None, :]
    top = positions[:, 0].reshape(n, 1, 1)
    left = positions[:, 1].reshape(n, 1, 1)
    return (rows >= top) & (rows < top + patch) & (cols >= left) & (cols < left + patch)


def check_patch(patch: int, size: tuple[int, int], what: str = "patch") -> None:
    """An InputError unless a ``patch`` x ``patch`` square fits images of ``size`` (H, W)."""
    h, w = size
    if patch < 1:
        raise InputError(f"the {what} size must be at least 1 pixel, got {patch}")
    if patch > h or patch > w:
        raise InputError(f"a {patch}x{patch} {what} does not fit {h}x{w} images; choose a size <= {min(h, w)}")


def grid_positions(size: tuple[int, int], patch: int, stride: int) -> Tensor:
    """Top-left corners ``[P, 2]`` of a grid of patches with ``stride`` (the last row and column
    always touch the image border, so the whole image is covered)."""
    h, w = size
    if stride < 1:
        raise InputError(f"the patch search stride must be >= 1, got {stride}")

    def axis(n: int) -> list[int]:
        xs = list(range(0, n - patch + 1, stride))
        if xs[-1] != n - patch:
            xs.append(n - patch)
        return xs

    return torch.tensor([(y, x) for y in axis(h) for x in axis(w)], dtype=torch.long)
