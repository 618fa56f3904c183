"""Preprocessing: how raw pixels become a model's input, and back.

A :class:`Preprocessing` says what a model expects: channels, input size, how to resize a photo
of another size (shorter side to ``resize``, then a centre crop to ``input_size``) and the
per-channel normalisation ``x' = (x - mean) / std`` of pixels ``x`` in ``[0, 1]``. Models of the
zoo carry one; datasets normalise with the same formula.

    prep = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                         input_size=(224, 224), resize=256)
    x = prep.prepare_pil(Image.open("cat.jpg"))      # [3, 224, 224], normalised
    prep.denormalize(x)                               # back to [0, 1]

EfficientNet-Lite's ``(255 x - 127) / 128`` is the same formula with mean ``127/255`` and std
``128/255``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX,
}


def _as_tuple(v: Any, n: int | None = None) -> tuple[float, ...]:
    t = tuple(float(a) for a in (v if isinstance(v, list | tuple) else [v]))
    if n is not None and len(t) == 1 and n > 1:
        t = t * n
    return t


@dataclass(frozen=True)
class Preprocessing:
    """What a model expects as input.

    Args:
        mean, std: per-channel normalisation of pixels in ``[0, 1]``: ``(x - mean) / std``.
        input_size: ``(H, W)`` the model was built for; ``None``: any size (images keep theirs).
        resize: shorter side an image is scaled to before the centre crop to ``input_size``;
            ``None``: scale so the image covers ``input_size``, then centre-crop (no-op when the
            size already matches).
        channels: 1 (grey) or 3 (RGB); images are converted.
        interpolation: how photos are resized: ``bilinear`` (default), ``bicubic``,
            ``nearest``, ``lanczos`` or ``box`` (timm and Hugging Face models say theirs).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int] | None = None
    resize: int | None = None
    channels: int = 3
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {', '.join(_RESAMPLE)}")
        object.__setattr__(self, "mean", _as_tuple(self.mean, self.channels))
        object.__setattr__(self, "std", _as_tuple(self.std, self.channels))
        if self.input_size is not None:
            s = self.input_size
            size = (int(s), int(s)) if isinstance(s, int) else (int(s[0]), int(s[1]))
            object.__setattr__(self, "input_size", size)
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {self.mean} / {self.std}")

    # -- normalisation ------------------------------------------------------------------------
    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (-1, 1, 1)
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return m, s

    def normalize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` for ``x`` in ``[0, 1]``, shape ``[..., C, H, W]``."""
        m, s = self._stats(x)
        return (x - m) / s

    def denormalize(self, x: Tensor) -> Tensor:
        """Inverse of :meth:`normalize`: back to ``[0, 1]`` (up to clipping)."""
        m, s = self._stats(x)
        return x * s + m

    # -- images -------------------------------------------------------------------------------
    def prepare_pil(self, img: Image.Image) -> Tensor:
        """A PIL image -> normalised float tensor ``[C, H, W]`` of the model's size."""
        img = img.convert("L" if self.channels == 1 else "RGB")
        if self.input_size is not None:
            img = resize_center_crop(img, self.input_size, self.resize, self.interpolation)
        return self.normalize(pil_to_tensor01(img))

    def prepare_uint8(self, x: Tensor) -> Tensor:
        """uint8 images ``[N, C, H, W]`` -> normalised float ``[N, C, H', W']``."""
        if x.shape[1] != self.channels:
            x = convert_channels(x, self.channels)
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            imgs = [tensor_to_pil(im) for im in x]
            return torch.stack([self.prepare_pil(im) for im in imgs])
        return self.normalize(x.float() / 255.0)

    # -- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        size = d.get("input_size")
        return cls(
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            input_size=(int(size[0]), int(size[1])) if size is not None else None,
            resize=d.get("resize"),
            channels=int(d.get("channels", len(d["mean"]))),
            interpolation=str(d.get("interpolation", "bilinear")),
        )


def pil_to_tensor01(img: Image.Image) -> Tensor:
    """PIL image -> float tensor ``[C, H, W]`` in ``[0, 1]``."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 255.0


def tensor_to_pil(x: Tensor) -> Image.Image:
    """uint8 ``[C, H, W]`` (or float in ``[0, 1]``) -> PIL image (mode ``L`` or ``RGB``)."""
    if x.dtype != torch.uint8:
        x = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    a = x.cpu().permute(1, 2, 0).numpy()
    return Image.fromarray(a[:, :, 0], mode="L") if a.shape[2] == 1 else Image.fromarray(a, mode="RGB")


def convert_channels(x: Tensor, channels: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` to 1 or 3 channels (ITU-R 601 luma for grey, repeat for RGB)."""
    c = x.shape[1]
    if c == channels:
        return x
    if channels == 3 and c == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_center_crop(
    img: Image.Image, size: tuple[int, int], resize: int | None = None, interpolation: str = "bilinear"
) -> Image.Image:
    """Scale (shorter side to ``resize``, or just enough to cover ``size``), then centre-crop.

    ``size`` is ``(H, W)``. Bilinear by default, as torchvision's ``Resize`` + ``CenterCrop``.
    """
    h, w = size
    iw, ih = img.size
    if (iw, ih) == (w, h) and resize is None:
        return img
    if resize is not None:  # torchvision Resize(int): shorter side -> resize, the other truncated
        if iw <= ih:
            nw, nh = resize, int(resize * ih / iw)
        else:
            nw, nh = int(resize * iw / ih), resize
        nw, nh = max(nw, w), max(nh, h)
    else:
        scale = max(w / iw, h / ih)
        nw, nh = max(w, math.ceil(iw * scale - 1e-9)), max(h, math.ceil(ih * scale - 1e-9))
    if (nw, nh) != (iw, ih):
        img = img.resize((nw, nh), _RESAMPLE[interpolation])
    left, top = round((nw - w) / 2.0), round((nh - h) / 2.0)
    return img.crop((left, top, left + w, top + h))


def random_crop_flip(
    x: Tensor, *, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None
) -> Tensor:
    """Random crop after zero padding, and a random horizontal flip, per image of ``[N, C, H, W]``.

    The CIFAR augmentation of He et al. 2016: pad 4 with black, crop back to 32x32, flip with
    p = 0.5. One gather for the whole batch; works on uint8 or float images.
    """
    n, _, h, w = x.shape
    if padding:
        x = torch.nn.functional.pad(x, (padding,) * 4)
        offs = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    else:
        offs = torch.zeros(n, 2, dtype=torch.long)
    rows = offs[:, :1] + torch.arange(h)  # [N, H]
    cols = offs[:, 1:] + torch.arange(w)  # [N, W]
    if flip:
        flips = torch.rand(n, generator=generator) < 0.5
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n)[:, None, None]
    out = x.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # [N, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()
