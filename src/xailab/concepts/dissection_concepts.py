"""Concept sources for network dissection: colours from pixels, and the Broden dataset.

* :class:`ColourConcepts`: the 11 basic colour terms (Berlin & Kay 1969) as pixel masks,
  each pixel assigned to the nearest colour prototype in CIE Lab (CIE76 distance). Needs no
  annotation, so dissection runs on CIFAR or any folder of photos.
* :class:`BrodenDataset`: the Broden layout of Bau et al. (2017) for users who have it::

      ROOT/index.csv      image,split,ih,iw,sh,sw,color,object,part,material,scene,texture
      ROOT/label.csv      number,name,category,frequency,coverage,syns
      ROOT/category.csv   name,first,last,count,frequency   (optional)
      ROOT/images/...     the images and their mask PNGs

  A pixel-category cell (``color``, ``object``, ``part``, ``material``) lists mask PNGs
  separated by ``;`` whose pixels encode a label number as ``R + 256 G``; an image-category
  cell (``scene``, ``texture``) lists label numbers that hold for the whole image. A concept's
  IoU counts only images on which its category is annotated (a non-empty cell).

    concepts = ColourConcepts(prep.denormalize)
    broden = BrodenDataset("broden1_224", prep); dissect(model, broden, "layer4", broden)
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from xailab.concepts.dissection import ConceptMasks
from xailab.core.errors import DataError

# sRGB prototypes of the 11 basic colour terms (near the focal colours of Berlin & Kay; a term
# may have several prototypes: Lab puts saturated and dark blues on either side of purple)
Prototype = tuple[int, int, int]
BASIC_COLOURS: dict[str, tuple[Prototype, ...]] = {
    "black": ((20, 20, 20),),
    "white": ((240, 240, 240),),
    "grey": ((128, 128, 128),),
    "red": ((200, 30, 30),),
    "orange": ((240, 140, 20),),
    "yellow": ((240, 220, 40),),
    "green": ((40, 150, 40),),
    "blue": ((40, 80, 170), (20, 30, 240), (50, 60, 200), (100, 150, 220)),
    "purple": ((120, 40, 130), (150, 70, 200)),
    "pink": ((240, 150, 190),),
    "brown": ((130, 80, 40),),
}


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in ``[0, 1]`` (``[..., 3, H, W]``) -> CIE Lab (D65), same layout.

    Linearise (``((c + 0.055) / 1.055)^2.4`` above 0.04045), to XYZ with the sRGB matrix,
    normalise by the D65 white, ``f(t) = t^(1/3)`` above ``(6/29)^3``;
    ``L = 116 f(Y) - 16``, ``a = 500 (f(X) - f(Y))``, ``b = 200 (f(Y) - f(Z))``.
    """
    c = rgb.clamp(0, 1)
    lin = torch.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92)
    m = torch.tensor([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]],
                     dtype=lin.dtype, device=lin.device)
    xyz = torch.einsum("ij,...jhw->...ihw", m, lin)
    white = torch.tensor([0.95047, 1.0, 1.08883], dtype=lin.dtype, device=lin.device).view(3, 1, 1)
    t = xyz / white
    d = 6 / 29
    f = torch.where(t > d**3, t.clamp_min(1e-12) ** (1 / 3), t / (3 * d * d) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)


class ColourConcepts:
    """Colour masks computed from pixels: each pixel gets its nearest colour term in Lab.

    Args:
        to_pixels: maps the image set's (normalised) images to ``[0, 1]`` RGB, e.g.
            ``prep.denormalize``; ``None`` if the images already are in ``[0, 1]``.
        colours: ``{name: (r, g, b)}`` or ``{name: ((r, g, b), ...)}`` prototypes in 0..255
            (default :data:`BASIC_COLOURS`); a pixel takes the term of its nearest prototype.
        size: mask resolution ``(H, W)``; default the image size, at most 112 a side (images
            are area-averaged down first, as Broden's masks are half the image size).

        ColourConcepts(prep.denormalize).masks(index, x).layers  # [B, 1, H, W] colour index
    """

    def __init__(
        self,
        to_pixels: Callable[[Tensor], Tensor] | None = None,
        colours: dict[str, Any] | None = None,
        size: int | tuple[int, int] | None = None,
    ) -> None:
        self.to_pixels = to_pixels
        cols = colours or BASIC_COLOURS
        self.names = list(cols)
        self.categories = ["color"] * len(self.names)
        protos: list[Any] = []
        owner: list[int] = []
        for k, name in enumerate(self.names):
            value = cols[name]
            group = value if isinstance(value[0], (tuple, list)) else (value,)
            protos += list(group)
            owner += [k] * len(group)
        proto = torch.tensor(protos, dtype=torch.float32) / 255.0
        self._lab = rgb_to_lab(proto.T[:, :, None]).squeeze(-1).T  # [P, 3]
        self._owner = torch.tensor(owner, dtype=torch.long)  # prototype -> colour term
        self.size = (size, size) if isinstance(size, int) else size

    def mask_size(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        s = min(1.0, 112 / max(h, w))
        return max(1, round(h * s)), max(1, round(w * s))

    def masks(self, index: Tensor, images: Tensor) -> ConceptMasks:
        x = images.float()
        px = self.to_pixels(x) if self.to_pixels is not None else x
        if px.shape[1] == 1:
            px = px.expand(-1, 3, -1, -1)
        size = self.mask_size(px.shape[-2], px.shape[-1])
        if tuple(px.shape[-2:]) != size:
            px = F.interpolate(px, size=size, mode="area")
        lab = rgb_to_lab(px)  # [B, 3, H, W]
        proto = self._lab.to(lab.device, lab.dtype)  # [K, 3]
        # argmin_k |l - p_k|^2 = argmin_k (|p_k|^2 - 2 l . p_k): one small matmul per pixel
        d = (proto * proto).sum(1)[None, :, None, None] - 2 * torch.einsum("kc,bchw->bkhw", proto, lab)
        return ConceptMasks(layers=self._owner.to(d.device)[d.argmin(1, keepdim=True)])


# -- Broden ---------------------------------------------------------------------------------------
PIXEL_CATEGORIES = ("color", "object", "part", "material")
IMAGE_CATEGORIES = ("scene", "texture")


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} not found: a Broden folder has index.csv and label.csv (see docs/dissection.md)")
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def decode_label_png(path: Path) -> np.ndarray:
    """A Broden mask PNG -> int label numbers ``[H, W]`` (``R + 256 G``; 0 = none)."""
    try:
        arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read Broden mask {path}: {e}") from e
    return arr[..., 0] + 256 * arr[..., 1]


class BrodenDataset(torch.utils.data.Dataset[tuple[Tensor, int]]):
    """A Broden-layout folder as an image set *and* a concept source for :func:`dissect`.

    Args:
        root: folder with ``index.csv``, ``label.csv`` and ``images/``.
        preprocessing: the model's (``get_preprocessing(model)``): images are resized to its
            input size (whole image, no crop, so the masks stay aligned) and normalised;
            ``None``: kept at their size in ``[0, 1]``.
        categories: the categories to use (default: every known category present in index.csv).
        split: keep only rows of this ``split`` column value (e.g. ``"val"``), if given.
        max_images: keep at most the first this many rows.

    ``names`` / ``categories`` list the concepts (labels of ``label.csv`` except number 0);
    a label whose ``category`` cell names several (``"object(12);part(3)"``) takes the first.
    """

    def __init__(
        self,
        root: str | Path,
        preprocessing: Any | None = None,
        *,
        categories: Sequence[str] | None = None,
        split: str | None = None,
        max_images: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataError(f"no Broden folder at {self.root}")
        rows = _read_csv(self.root / "index.csv")
        if split is not None:
            rows = [r for r in rows if r.get("split") == split]
        self.rows = rows[:max_images] if max_images else rows
        if not self.rows:
            raise DataError(f"{self.root}/index.csv lists no images" + (f" of split {split!r}" if split else ""))
        header = list(self.rows[0])
        known = [c for c in (*PIXEL_CATEGORIES, *IMAGE_CATEGORIES) if c in header]
        self.category_columns = list(categories) if categories is not None else known
        bad = [c for c in self.category_columns if c not in header]
        if bad:
            raise DataError(f"index.csv has no column {', '.join(bad)} (columns: {', '.join(header)})")
        self.names: list[str] = []
        self.categories: list[str] = []
        self._index: dict[int, int] = {}
        for r in _read_csv(self.root / "label.csv"):
            number = int(r["number"])
            if number == 0:
                continue
            cat = (r.get("category") or "").split(";")[0].split("(")[0].strip()
            self._index[number] = len(self.names)
            self.names.append(r["name"])
            self.categories.append(cat)
        self.preprocessing = preprocessing
        self.targets = [0] * len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _image(self, i: int) -> Tensor:
        path = self.root / "images" / self.rows[i]["image"]
        try:
            img = Image.open(path).convert("RGB")
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read Broden image {path}: {e}") from e
        prep = self.preprocessing
        if prep is not None and prep.input_size is not None:
            img = img.resize((prep.input_size[1], prep.input_size[0]), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return prep.normalize(x) if prep is not None else x

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self._image(int(i)), 0

    def mask_size(self, i: int) -> tuple[int, int]:
        r = self.rows[i]
        if r.get("sh") and r.get("sw"):
            return int(r["sh"]), int(r["sw"])
        img = Image.open(self.root / "images" / r["image"])
        return img.height, img.width

    def image_labels(self, i: int) -> tuple[list[np.ndarray], list[int], set[str]]:
        """``(label-number maps, whole-image label numbers, annotated categories)`` of row i."""
        r = self.rows[i]
        maps, whole, cats = [], [], set()
        for cat in self.category_columns:
            cell = (r.get(cat) or "").strip()
            if not cell:
                continue
            cats.add(cat)
            for item in cell.split(";"):
                item = item.strip()
                if not item:
                    continue
                if cat in IMAGE_CATEGORIES or item.isdigit():
                    whole.append(int(item))
                else:
                    maps.append(decode_label_png(self.root / "images" / item))
        return maps, whole, cats

    def masks(self, index: Tensor, images: Tensor) -> ConceptMasks:
        """Label layers ``[B, L, sh, sw]`` (concept indices, -1 none) and validity ``[B, K]``."""
        K = len(self.names)
        per_image, valid = [], torch.zeros(len(index), K, dtype=torch.bool)
        sizes = {self.mask_size(int(i)) for i in index}
        if len(sizes) != 1:
            raise DataError(f"Broden images of one batch have different mask sizes {sorted(sizes)}: use batch_size=1")
        (H, W) = sizes.pop()
        lut = np.full(max(self._index, default=0) + 1, -1, dtype=np.int64)
        for number, k in self._index.items():
            lut[number] = k
        cat_of = np.array(self.categories)
        for b, i in enumerate(index.tolist()):
            maps, whole, cats = self.image_labels(int(i))
            layers = []
            for m in maps:
                if m.shape != (H, W):
                    m = np.asarray(Image.fromarray(m.astype(np.int32)).resize((W, H), Image.Resampling.NEAREST))
                m = np.where(m < len(lut), m, 0)
                layers.append(lut[m])
            for number in whole:
                k = lut[number] if number < len(lut) else -1
                layers.append(np.full((H, W), k, dtype=np.int64))
            per_image.append(layers)
            valid[b] = torch.from_numpy(np.isin(cat_of, sorted(cats)))
        L = max(1, max(len(p) for p in per_image))
        out = torch.full((len(index), L, H, W), -1, dtype=torch.long)
        for b, layers in enumerate(per_image):
            for j, m in enumerate(layers):
                out[b, j] = torch.from_numpy(m)
        return ConceptMasks(layers=out, valid=valid)
