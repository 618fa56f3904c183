"""Decoding one image file into 8-bit grey or RGB, saying what was changed.

* 16-bit images (``I;16`` PNGs, medical and microscopy scans) are scaled to 8 bits
  (``v * 255 / 65535``), not clipped (clipping made every pixel above 255 white);
  32-bit integer images are scaled from their own bit depth, float images from ``[0, 1]``.
* Transparent images (``RGBA``, ``LA``, palette with transparency) are composited over white, as
  a viewer shows them, instead of dropping alpha (which reveals whatever colour the transparent
  pixels happen to hold).
* Upscaling beyond :data:`UPSCALE_WARN` times (a 1x1 image "explained" at 28x28) is noted.

Each change is a note (``"a.png: 16-bit grey scaled to 8 bits"``) appended to ``notes`` when a
list is given; :func:`xailab.data.load_images` warns once with them, and a job records them in
its run.

    img = decode_image(data, "scan.png", notes)      # mode L or RGB (or 1/P without alpha)
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

from xailab.core.errors import DataError

#: upscaling an image by more than this factor (in either side) warns and is noted
UPSCALE_WARN = 4.0


def decode_image(data: bytes, name: str, notes: list[str] | None = None) -> Image.Image:
    """Decode image bytes fully into an 8-bit image, or raise :class:`DataError` naming the file."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Image.DecompressionBombError as e:
        raise DataError(f"cannot decode image {name}: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        if isinstance(e, Image.UnidentifiedImageError) or "cannot identify image file" in str(e):
            why = "not an image format Pillow can read, or a damaged file"
        else:
            why = re.sub(r"<_io\.\w+ object at 0x[0-9a-fA-F]+>", name, str(e)) or type(e).__name__
        raise DataError(f"cannot decode image {name}: {why}") from e
    return eight_bit(img, name, notes)


def eight_bit(img: Image.Image, name: str, notes: list[str] | None = None) -> Image.Image:
    """``img`` as 8-bit grey or colour without alpha: deep images scaled, alpha composited."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top, what = 1.0, "float image in [0, 1]"
        elif mode.startswith("I;16") or a.max(initial=0) > 255:
            top, what = (65535.0, "16-bit grey") if a.max(initial=0) <= 65535 else (float(2**32 - 1), "32-bit grey")
        else:
            return img.convert("L")  # 32-bit container holding 8-bit values
        _note(notes, f"{name}: {what} scaled to 8 bits")
        return Image.fromarray(np.clip(np.round(a * 255.0 / top), 0, 255).astype(np.uint8), "L")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3]
        if alpha.min(initial=255) < 255:
            _note(notes, f"{name}: transparent pixels composited over white")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat = Image.alpha_composite(white, rgba)
        return flat.convert("L" if mode in ("LA", "La") else "RGB")
    return img


def check_upscale(name: str, size: tuple[int, int], target: Sequence[int], notes: list[str] | None = None,
                  resize: int | None = None) -> None:
    """Note when an image of ``size = (W, H)`` is scaled up to ``target = (H, W)`` (or its
    shorter side to ``resize``) by more than :data:`UPSCALE_WARN`."""
    w, h = size
    factor = resize / min(w, h) if resize else max(int(target[0]) / h, int(target[1]) / w)
    if factor > UPSCALE_WARN:
        text = (f"{name}: a {w}x{h} image upscaled {factor:.1f}x to {int(target[1])}x{int(target[0])} "
                f"(more than {UPSCALE_WARN:g}x: the model sees interpolated pixels)")
        _note(notes, text)


def warn_notes(notes: Sequence[str]) -> None:
    """One warning that lists what was done to the images (the first few, and how many)."""
    if notes:
        shown = "; ".join(notes[:3]) + (f"; ... ({len(notes)} in all)" if len(notes) > 3 else "")
        warnings.warn(f"images changed while loading: {shown}", stacklevel=3)


def _note(notes: list[str] | None, text: str) -> None:
    if notes is not None:
        notes.append(text)


__all__ = ["UPSCALE_WARN", "check_upscale", "decode_image", "eight_bit", "warn_notes"]
