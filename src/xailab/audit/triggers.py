"""Backdoor triggers: what an attacker stamps on an image.

A trigger is written as a short spec (the CLI's ``--trigger``):

* ``patch:S[@WHERE]``: a white ``S`` x ``S`` square (BadNets, Gu et al. 2017, arXiv:1708.06733);
* ``checker:S[@WHERE]``: a black-and-white checkerboard square, visible on light and dark images;
* ``icon:S:FILE[@WHERE]``: an image file resized to ``S`` x ``S`` (a sticker, a logo);
* ``blend:A``: a fixed random pattern over the whole image, mixed in with weight ``A``:
  ``x' = (1 - A) x + A k`` (Chen et al. 2017, arXiv:1712.05526);
* ``warp:S[:K]``: a fixed smooth warping field (WaNet, Nguyen & Tran 2021, arXiv:2102.10369):
  uniform noise on a ``K`` x ``K`` grid (default 4) in [-1, 1], divided by its mean absolute
  value, upsampled bicubically to ``H`` x ``W``, and the image resampled at
  ``clip(identity + S * noise / H, -1, 1)`` (``grid_sample``, bilinear, normalised coordinates);
  a displacement of about ``S / 2`` pixels (WaNet's ``s = 0.5``: a quarter pixel, invisible).

``WHERE`` is ``corner`` (default: bottom right, 1 pixel from the borders), ``random`` (a place
drawn per image from the trigger's seed and the image's index, so the same image always gets the
same place) or ``TOP,LEFT``. Stamping replaces the square's pixels (``alpha`` 1) and returns the
mask of what it touched.

    t = parse_trigger("patch:4")
    x_triggered, mask = t.apply(pixels)            # pixels [N, C, H, W] in [0, 1]
    t.apply_uint8(ds.images)                       # the same on a dataset's uint8 images
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from xailab.core.errors import InputError

Kind = Literal["patch", "checker", "icon", "blend", "warp"]
WHOLE = ("blend", "warp")  # triggers over the whole image: no size, no place
_WHERE = re.compile(r"^(corner|random|\d+,\d+)$")


@dataclass(frozen=True)
class Trigger:
    """A trigger (see the module docstring). ``parse_trigger(spec)`` builds one from text."""

    kind: Kind = "patch"
    size: int = 4
    where: str = "corner"
    alpha: float = 1.0
    file: str | None = None
    seed: int = 0

    @property
    def spec(self) -> str:
        if self.kind == "blend":
            return f"blend:{self.alpha:g}"
        if self.kind == "warp":
            return f"warp:{self.alpha:g}" + (f":{self.size}" if self.size != 4 else "")
        body = f"{self.kind}:{self.size}" + (f":{self.file}" if self.kind == "icon" else "")
        return body + (f"@{self.where}" if self.where != "corner" else "")

    # -- checks ---------------------------------------------------------------------------------
    def check(self, image_size: tuple[int, int]) -> None:
        """An InputError unless the trigger fits images of ``image_size`` (H, W)."""
        h, w = image_size
        if self.kind in WHOLE:
            return
        s = self.size
        if s > h or s > w:
            raise InputError(f"a {s}x{s} trigger does not fit the {h}x{w} images; choose a size <= {min(h, w)}")
        if self.where == "corner" and (s + 1 > h or s + 1 > w):
            raise InputError(f"a {s}x{s} trigger in the corner (1 pixel from the border) does not fit "
                             f"{h}x{w} images; choose a size <= {min(h, w) - 1} or @0,0")
        if "," in self.where:
            top, left = (int(v) for v in self.where.split(","))
            if top + s > h or left + s > w:
                raise InputError(f"a {s}x{s} trigger at {top},{left} (top, left) leaves the {h}x{w} image; "
                                 f"top must be <= {h - s} and left <= {w - s}")

    # -- the pattern ------------------------------------------------------------------------------
    def pattern(self, channels: int, image_size: tuple[int, int]) -> Tensor:
        """The stamp in ``[0, 1]``: ``[C, S, S]``, or ``[C, H, W]`` for ``blend``."""
        h, w = image_size
        if self.kind == "patch":
            return torch.ones(channels, self.size, self.size)
        if self.kind == "checker":
            i = torch.arange(self.size)
            board = ((i[:, None] + i[None, :]) % 2 == 0).float()
            return board.expand(channels, -1, -1).clone()
        if self.kind == "blend":
            g = torch.Generator().manual_seed(self.seed + 7)
            return torch.rand(channels, h, w, generator=g)
        return _read_icon(self.file or "", channels, self.size)

    def positions(self, n: int, image_size: tuple[int, int], indices: Tensor | None = None) -> Tensor:
        """Top-left corners ``[n, 2]`` for images with these ``indices`` (default ``0..n-1``)."""
        h, w = image_size
        s = self.size
        if self.kind in WHOLE:
            return torch.zeros(n, 2, dtype=torch.long)
        if self.where == "corner":
            return torch.tensor([[h - s - 1, w - s - 1]]).expand(n, 2).clone()
        if self.where == "random":
            idx = torch.arange(n) if indices is None else torch.as_tensor(indices).reshape(-1).cpu()
            out = torch.empty(n, 2, dtype=torch.long)
            for j, i in enumerate(idx.tolist()):
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
                out[j, 0] = torch.randint(0, h - s + 1, (1,), generator=g)
                out[j, 1] = torch.randint(0, w - s + 1, (1,), generator=g)
            return out
        top, left = (int(v) for v in self.where.split(","))
        return torch.tensor([[top, left]]).expand(n, 2).clone()

    # -- stamping -----------------------------------------------------------------------------------
    def apply(self, images: Tensor, indices: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Stamp float pixels ``[N, C, H, W]`` in ``[0, 1]``: ``(stamped, mask [N, H, W] bool)``."""
        n, c, h, w = images.shape
        self.check((h, w))
        if self.kind == "warp":
            grid = self.warp_grid((h, w)).to(images)
            out = F.grid_sample(images, grid.expand(n, h, w, 2), mode="bilinear", padding_mode="border",
                                align_corners=True)
            return out.clamp(0, 1), torch.ones(n, h, w, dtype=torch.bool, device=images.device)
        pat = self.pattern(c, (h, w)).to(images)
        if self.kind == "blend":
            out = (1 - self.alpha) * images + self.alpha * pat[None]
            return out, torch.ones(n, h, w, dtype=torch.bool, device=images.device)
        pos = self.positions(n, (h, w), indices)
        out = images.clone()
        mask = torch.zeros(n, h, w, dtype=torch.bool, device=images.device)
        s = self.size
        for j in range(n):
            t, left = int(pos[j, 0]), int(pos[j, 1])
            region = out[j, :, t : t + s, left : left + s]
            out[j, :, t : t + s, left : left + s] = (1 - self.alpha) * region + self.alpha * pat
            mask[j, t : t + s, left : left + s] = True
        return out, mask

    def warp_grid(self, image_size: tuple[int, int]) -> Tensor:
        """The sampling grid ``[1, H, W, 2]`` (x, y in [-1, 1]) of a ``warp`` trigger, fixed by its seed."""
        h, w = image_size
        g = torch.Generator().manual_seed(self.seed + 11)
        noise = torch.rand(1, 2, self.size, self.size, generator=g, dtype=torch.float64) * 2 - 1
        noise = noise / noise.abs().mean()
        field = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64),
                                torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
        identity = torch.stack((xs, ys), dim=2)[None]
        return (identity + self.alpha * field / h).clamp(-1, 1).float()

    def apply_uint8(self, images: Tensor, indices: Tensor | None = None) -> Tensor:
        """The same on ``uint8 [N, C, H, W]`` images (rounded back to uint8)."""
        if images.dtype != torch.uint8:
            raise InputError(f"apply_uint8 takes uint8 images, got {images.dtype}")
        out, _ = self.apply(images.float() / 255.0, indices)
        return (out * 255.0).round().clamp(0, 255).to(torch.uint8)

    def masks(self, n: int, image_size: tuple[int, int], indices: Tensor | None = None) -> Tensor:
        """Where the trigger goes, ``[n, H, W]`` bool, without stamping anything."""
        h, w = image_size
        if self.kind in WHOLE:
            return torch.ones(n, h, w, dtype=torch.bool)
        pos = self.positions(n, image_size, indices)
        rows = torch.arange(h)[None, :, None]
        cols = torch.arange(w)[None, None, :]
        t, left = pos[:, 0].reshape(n, 1, 1), pos[:, 1].reshape(n, 1, 1)
        return (rows >= t) & (rows < t + self.size) & (cols >= left) & (cols < left + self.size)


def _read_icon(file: str, channels: int, size: int) -> Tensor:
    from PIL import Image, UnidentifiedImageError

    p = Path(file).expanduser()
    if not p.is_file():
        raise InputError(f"trigger icon not found: {file}")
    try:
        img = Image.open(p).convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"trigger icon {file} is not an image: {e}") from None
    import numpy as np

    arr = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)
    arr = arr[None] if arr.dim() == 2 else arr.permute(2, 0, 1)
    return F.interpolate(arr[None], size=(size, size), mode="area")[0]


def parse_trigger(spec: str | Trigger, *, seed: int = 0) -> Trigger:
    """``"patch:4"``, ``"checker:3@random"``, ``"patch:4@2,20"``, ``"icon:6:logo.png"``, ``"blend:0.1"``."""
    if isinstance(spec, Trigger):
        return spec
    text = spec.strip()
    usage = ("a trigger is patch:S, checker:S or icon:S:FILE (optionally @corner, @random or "
             "@TOP,LEFT), blend:ALPHA or warp:STRENGTH[:GRID], e.g. patch:4, checker:3@random or warp:0.5")
    kind, _, rest = text.partition(":")
    kind = kind.lower()
    if kind == "blend":
        try:
            alpha = float(rest)
        except ValueError:
            raise InputError(f"bad trigger {spec!r}: blend needs a weight, e.g. blend:0.1") from None
        if not 0 < alpha <= 1:
            raise InputError(f"bad trigger {spec!r}: the blend weight must lie in (0, 1]")
        return Trigger("blend", size=0, alpha=alpha, seed=seed)
    if kind == "warp":
        return _parse_warp(spec, rest, seed)
    if kind not in ("patch", "checker", "icon"):
        raise InputError(f"bad trigger {spec!r}: {usage}")
    where = "corner"
    body = rest
    if "@" in rest:
        head, _, tail = rest.rpartition("@")
        if _WHERE.match(tail.strip()):
            body, where = head, tail.strip()
        elif kind != "icon":
            raise InputError(f"bad trigger {spec!r}: the place after @ is corner, random or TOP,LEFT")
    file = None
    if kind == "icon":
        size_text, _, file = body.partition(":")
        if not file:
            raise InputError(f"bad trigger {spec!r}: an icon trigger is icon:SIZE:FILE")
    else:
        size_text = body
    try:
        size = int(size_text)
    except ValueError:
        raise InputError(f"bad trigger {spec!r}: {usage}") from None
    if size < 1:
        raise InputError(f"bad trigger {spec!r}: the size must be at least 1 pixel")
    return Trigger(kind, size=size, where=where, file=file, seed=seed)  # type: ignore[arg-type]


def _parse_warp(spec: str, rest: str, seed: int) -> Trigger:
    """``warp:S`` or ``warp:S:K``: strength ``S`` > 0, grid ``K`` >= 2."""
    strength, _, grid = rest.partition(":")
    try:
        s, k = float(strength), int(grid) if grid else 4
    except ValueError:
        raise InputError(f"bad trigger {spec!r}: a warp is warp:STRENGTH[:GRID], e.g. warp:0.5 or warp:2:4") from None
    if not s > 0 or k < 2:
        raise InputError(f"bad trigger {spec!r}: the warp strength must be > 0 and its grid >= 2")
    return Trigger("warp", size=k, alpha=s, seed=seed)
