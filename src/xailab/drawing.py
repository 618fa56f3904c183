"""Fast PNG overlays: the figures of :mod:`xailab.plotting` drawn with numpy and PIL.

Same colour scales (matplotlib's ``bwr`` / ``inferno`` tables, saved in ``colormaps.npz`` so that
drawing imports no matplotlib), same
normalisation (:func:`xailab.plotting.color_limits`, opacity growing with ``|m|``), same layout
(methods as rows and targets as columns; or image | attribution with its colour bar | overlay),
at about 1/50 of the cost: no figure, no layout engine, one array per PNG, encoded by
:func:`png_bytes`.

    png = grid_png(image, {"saliency": [m_true, m_top1]}, ["true: cat (0.81)", "top1: cat (0.81)"])
    atomic_write_bytes(Path("runs/x/files/overlays/00000_grid.png"), png)
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DPI = 100  # pixels per inch, as plotting.save_png
BORDER = (0, 0, 0)


def color_limits(maps: Sequence[np.ndarray]) -> tuple[float, float, str]:
    """``(vmin, vmax, cmap)`` shared by ``maps``: symmetric diverging if any value is negative
    (the same rule as :func:`xailab.plotting.color_limits`, without importing matplotlib)."""
    lo = min(float(np.nanmin(m)) for m in maps)
    hi = max(float(np.nanmax(m)) for m in maps)
    if lo < 0:
        a = max(abs(lo), abs(hi)) or 1.0
        return -a, a, "bwr"
    return 0.0, (hi or 1.0), "inferno"


#: matplotlib's tables of the colour scales drawn here (``bwr``, ``inferno``), saved so that drawing
#: imports no matplotlib; ``tests/test_drawing.py`` checks them equal to matplotlib's
COLORMAPS = Path(__file__).with_name("colormaps.npz")


@lru_cache(maxsize=8)
def lut(cmap: str) -> np.ndarray:
    """The 256 RGBA colours (float in [0, 1]) of matplotlib's colormap ``cmap``."""
    with np.load(COLORMAPS) as saved:
        if cmap in saved.files:
            return saved[cmap]
    return matplotlib_lut(cmap)


def matplotlib_lut(cmap: str) -> np.ndarray:
    """``lut(cmap)`` read from matplotlib itself (what :data:`COLORMAPS` holds)."""
    import matplotlib

    return np.asarray(matplotlib.colormaps[cmap](np.arange(256)), dtype=np.float32)


def _index(m: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """matplotlib's lookup: ``int(256 * x)`` of the clipped normalised value, 1.0 in the last bin."""
    norm = (np.asarray(m, dtype=np.float64) - vmin) / max(vmax - vmin, 1e-12)
    return np.minimum((np.clip(norm, 0.0, 1.0) * 256).astype(np.intp), 255)


def heat_rgba8(m: np.ndarray, vmin: float, vmax: float, cmap: str, alpha: float) -> np.ndarray:
    """``[H, W, 4]`` uint8 colours of ``m`` whose opacity grows with ``|m|`` (zero is transparent),
    as :func:`xailab.plotting.heat_rgba`."""
    rgba = lut(cmap)[_index(m, vmin, vmax)]
    scale = max(abs(vmin), abs(vmax), 1e-12)
    rgba[..., 3] = alpha * np.sqrt(np.clip(np.abs(np.asarray(m, dtype=np.float32)) / scale, 0.0, 1.0))
    return (rgba * 255 + 0.5).astype(np.uint8)


def heat_rgb8(m: np.ndarray, vmin: float, vmax: float, cmap: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 colours of ``m`` (the opaque heatmap panel)."""
    return (lut(cmap)[_index(m, vmin, vmax)][..., :3] * 255 + 0.5).astype(np.uint8)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """``[C,H,W]``, ``[H,W,C]`` or ``[H,W]`` in [0, 1] (or uint8) -> ``[H,W,3]`` uint8."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float32), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(img)


@lru_cache(maxsize=8)
def font(points: float) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans (matplotlib's default face) at ``points`` on a 100-dpi page."""
    import importlib.util
    from pathlib import Path

    size = max(1, round(points * DPI / 72))
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.origin:
        ttf = Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if ttf.is_file():
            return ImageFont.truetype(str(ttf), size)
    return ImageFont.load_default(size)


def _text(s: str) -> str:
    return s.replace(r"\$", "$")  # plotting.plain escapes $ for matplotlib; PIL draws it as is


class Canvas:
    """A white page of ``width`` x ``height`` pixels with panels and text placed on it."""

    def __init__(self, width: int, height: int) -> None:
        self.image = Image.new("RGB", (width, height), (255, 255, 255))
        self.draw = ImageDraw.Draw(self.image)

    def text(self, x: float, y: float, s: str, points: float, anchor: str = "ms") -> None:
        """Text with its anchor (PIL's two letters: ``ms`` = middle, baseline) at ``(x, y)``."""
        self.draw.text((x, y), _text(s), fill=(0, 0, 0), font=font(points), anchor=anchor)

    def vtext(self, x: float, y: float, s: str, points: float) -> None:
        """Text rotated 90 degrees, centred on ``(x, y)`` (a y-axis label)."""
        strip = _rotated(_text(s), points)
        self.image.paste(strip, (round(x - strip.width / 2), round(y - strip.height / 2)), strip)

    def panel(self, x: int, y: int, side: int, rgb: np.ndarray | Image.Image, heat: np.ndarray | None = None) -> None:
        """``rgb`` scaled to ``side`` pixels (nearest; or a :func:`tile` already scaled), ``heat``
        (RGBA) over it (bilinear), a frame."""
        tile = rgb if isinstance(rgb, Image.Image) else scaled(rgb, side)
        if heat is not None:
            over = Image.fromarray(heat, "RGBA").resize((side, side), Image.Resampling.BILINEAR)
            tile = Image.alpha_composite(tile if tile.mode == "RGBA" else tile.convert("RGBA"), over).convert("RGB")
        self.image.paste(tile, (x, y))
        self.draw.rectangle((x - 1, y - 1, x + side, y + side), outline=BORDER)

    def colorbar(self, x: int, y: int, width: int, height: int, vmin: float, vmax: float, cmap: str,
                 points: float = 10) -> None:
        """A vertical colour bar with ticks at round values and matplotlib's minus sign."""
        ramp = (lut(cmap)[::-1, :3] * 255 + 0.5).astype(np.uint8)[:, None, :]
        bar = Image.fromarray(np.ascontiguousarray(np.repeat(ramp, 2, axis=1))).resize(
            (width, height), Image.Resampling.NEAREST)
        self.image.paste(bar, (x, y))
        self.draw.rectangle((x - 1, y - 1, x + width, y + height), outline=BORDER)
        for v in ticks(vmin, vmax):
            ty = y + (vmax - v) / max(vmax - vmin, 1e-12) * height
            self.draw.line((x + width, ty, x + width + 3, ty), fill=BORDER)
            self.text(x + width + 6, ty, tick_label(v), points, anchor="lm")

    def png(self) -> bytes:
        return png_bytes(np.asarray(self.image))


def png_bytes(rgb: np.ndarray, level: int = 1) -> bytes:
    """``[H, W, 3]`` (or ``[H, W]`` grey, ``[H, W, 4]`` RGBA) uint8 as a PNG file: every row filtered
    as its difference from the row above (PNG's "Up" filter, in numpy) and deflated at ``level``.
    The same pixels as PIL's encoder at about half its cost: PIL tries all five filters on every row."""
    if rgb.ndim == 2:
        rgb = rgb[..., None]
    h, w, c = rgb.shape
    rows = np.ascontiguousarray(rgb, dtype=np.uint8).reshape(h, w * c)
    raw = np.empty((h, w * c + 1), dtype=np.uint8)
    raw[:, 0] = 2  # Up
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # modulo 256, as PNG filters are

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, {1: 0, 3: 2, 4: 6}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw.data, level)) \
        + chunk(b"IEND", b"")


def scaled(rgb: np.ndarray, side: int, mode: str = "RGB") -> Image.Image:
    """``rgb`` as a ``side`` x ``side`` tile (nearest), in ``mode``: drawn once, pasted on every panel."""
    tile = Image.fromarray(rgb).resize((side, side), Image.Resampling.NEAREST)
    return tile if mode == "RGB" else tile.convert(mode)


@lru_cache(maxsize=256)
def _rotated(s: str, points: float) -> Image.Image:
    f = font(points)
    left, top, right, bottom = f.getbbox(s)
    strip = Image.new("L", (max(1, math.ceil(right - left)), max(1, math.ceil(bottom - top))), 0)
    ImageDraw.Draw(strip).text((-left, -top), s, fill=255, font=f)
    mask = strip.rotate(90, expand=True)
    out = Image.new("RGBA", mask.size, (0, 0, 0, 0))
    out.putalpha(mask)
    return out


def ticks(vmin: float, vmax: float, most: int = 4) -> list[float]:
    """Round values in ``[vmin, vmax]``, at most ``most`` of them, on a 1-2-2.5-5 step."""
    span = vmax - vmin
    if not math.isfinite(span) or span <= 0:
        return [vmin]
    base = 10.0 ** math.floor(math.log10(span / most))
    for mult in (1, 2, 2.5, 5, 10, 20):
        step = mult * base
        first = math.ceil(vmin / step - 1e-9)
        last = math.floor(vmax / step + 1e-9)
        if last - first + 1 <= most:
            return [k * step for k in range(first, last + 1)]
    return [vmin, vmax]


def tick_label(v: float) -> str:
    """``'10'``, ``'0.25'``, ``'−1e-05'``: short, with the minus sign matplotlib uses."""
    s = f"{v:.3g}" if abs(v) >= 1e-12 else "0"
    return s.replace("-", "\u2212", 1) if s.startswith("-") else s


#: inches per column of :func:`grid_png` (a panel and its colour bar)
GRID_COLUMN = 2.8


def merge_columns(titles: Sequence[str], classes: Sequence[int] | None) -> tuple[list[int], list[str]]:
    """The columns to draw and their titles: columns explaining the same class as an earlier one
    (``true`` and ``top1`` of a correctly classified image) are merged into it, their names joined
    (``'true = top1: cat (0.81)'``). Titles are ``'name: rest'``; without ``classes`` nothing merges."""
    if classes is None:
        return list(range(len(titles))), list(titles)
    keep: list[int] = []
    names: dict[int, list[str]] = {}
    for j, c in enumerate(classes):
        first = next((k for k in keep if classes[k] == c), None)
        if first is None:
            keep.append(j)
            names[j] = [titles[j].split(": ", 1)[0]]
        else:
            names[first].append(titles[j].split(": ", 1)[0])
    out = []
    for j in keep:
        rest = titles[j].split(": ", 1)[1] if ": " in titles[j] else ""
        out.append(" = ".join(names[j]) + (f": {rest}" if rest else ""))
    return keep, out


def grid_png(
    image: np.ndarray,
    maps: Mapping[str, Sequence[np.ndarray]],
    target_titles: Sequence[str],
    *,
    suptitle: str = "",
    alpha: float = 0.85,
    classes: Sequence[int] | None = None,
) -> bytes:
    """Methods as rows, targets as columns, overlays; every map on its own colour scale, shown by
    a colour bar beside it (one least-likely map does not wash out the others); with ``classes``
    (the class of each target column) columns of the same class are merged (:func:`merge_columns`).
    The layout of :func:`xailab.plotting.grid_figure`, as PNG bytes."""
    rgb = to_rgb8(image)
    keep, titles = merge_columns(target_titles, classes)
    methods = list(maps)
    rows, cols = len(methods), len(titles) + 1
    width, height = round(GRID_COLUMN * cols * DPI), round((2.2 * rows + 0.4) * DPI)
    page = Canvas(width, height)
    top = 70 if suptitle else 30
    left, right, bottom, gap, gx, gy, bar = 36, 8, 13, 17, 66, 6, 7
    side = int(min((width - left - right - gap - gx * (cols - 1)) / cols,
                   (height - top - bottom - gy * (rows - 1)) / rows))
    x0 = left + (width - left - right - gap - cols * side - gx * (cols - 1)) // 2
    y0 = max(top, height - bottom - rows * side - gy * (rows - 1))  # bottom-aligned, as tight_layout
    if suptitle:
        page.text(width / 2, 8, suptitle, 10, anchor="mt")

    def column_x(c: int) -> int:
        return x0 if c == 0 else x0 + side + gap + (c - 1) * (side + gx)

    for c, title in enumerate(titles, start=1):
        page.text(column_x(c) + side / 2, y0 - 8, title, 8)
    plain_tile, under = scaled(rgb, side), scaled(rgb, side, "RGBA")
    for r, name in enumerate(methods):
        y = y0 + r * (side + gy)
        page.panel(x0, y, side, plain_tile)
        page.vtext(x0 - 14, y + side / 2, name, 9)
        for c, j in enumerate(keep, start=1):
            m = maps[name][j]
            vmin, vmax, cmap = color_limits([m])
            page.panel(column_x(c), y, side, under, heat_rgba8(m, vmin, vmax, cmap, alpha))
            page.colorbar(column_x(c) + side + 4, y, bar, side, vmin, vmax, cmap, points=8)
    return page.png()


def overlay_png(
    image: np.ndarray,
    maps: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    suptitle: str = "",
    alpha: float = 0.85,
    shared_scale: bool = True,
) -> bytes:
    """One row per map: image | heatmap with its colour bar | overlay (the layout of
    :func:`xailab.plotting.overlay_figure`, as PNG bytes)."""
    rgb = to_rgb8(image)
    rows = len(maps)
    width, height = round(7.5 * DPI), round((2.5 * rows + (0.4 if suptitle else 0)) * DPI)
    page = Canvas(width, height)
    band = 40 if suptitle else 0
    row_h = (height - band) / max(rows, 1)
    side = int(min(204, row_h - 40))
    small = int(side * 0.91)
    middle_left, middle_right = 15 + side, width - 15 - side
    x1 = middle_left + (middle_right - middle_left - (small + 8 + 9 + 30)) // 2
    if suptitle:
        page.text(width / 2, 8, suptitle, 10, anchor="mt")
    limits = color_limits(maps) if shared_scale else None
    for r, (m, title) in enumerate(zip(maps, titles, strict=True)):
        vmin, vmax, cmap = limits or color_limits([m])
        y = round(band + r * row_h + (row_h - side) / 2 + 8)
        page.panel(15, y, side, rgb)
        page.text(15 + side / 2, y - 8, title, 9)
        ys = y + (side - small) // 2
        page.panel(x1, ys, small, heat_rgb8(m, vmin, vmax, cmap))
        page.text(x1 + small / 2, ys - 8, "attribution", 9)
        page.colorbar(x1 + small + 8, ys, 9, small, vmin, vmax, cmap)
        page.panel(width - 15 - side, y, side, rgb, heat_rgba8(m, vmin, vmax, cmap, alpha))
        page.text(width - 15 - side / 2, y - 8, "overlay", 9)
    return page.png()
