"""The counterfactual figure: image | counterfactual | difference (and, for prototypes, the
nearest image of the predicted class), drawn with :mod:`xailab.drawing` (PIL, no matplotlib figure).

The difference panel shows ``counterfactual - image`` summed over channels on a symmetric
blue-white-red scale (red: brighter), with its colour bar; regions removed are outlined by the
change itself.

    png = counterfactual_png(x0, x1, "Shirt -> T-shirt (pixel, L2 0.84)")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xailab.drawing import DPI, Canvas, heat_rgb8, to_rgb8


def counterfactual_png(original: np.ndarray, counterfactual: np.ndarray, title: str, *,
                       titles: Sequence[str] = ("image", "counterfactual", "difference"),
                       extra: np.ndarray | None = None, extra_title: str = "") -> bytes:
    """One row: ``original`` | ``counterfactual`` | their difference (| ``extra``), pixels ``[C, H, W]``."""
    diff = (np.asarray(counterfactual, dtype=np.float64) - np.asarray(original, dtype=np.float64)).sum(0)
    a = float(np.abs(diff).max()) or 1.0
    panels = [to_rgb8(original), to_rgb8(counterfactual), heat_rgb8(diff, -a, a, "bwr")]
    names = list(titles)
    if extra is not None:
        panels.append(to_rgb8(extra))
        names.append(extra_title)
    side, gap, left, top = 180, 20, 15, 56
    width = left * 2 + len(panels) * side + (len(panels) - 1) * gap + 50
    page = Canvas(width, top + side + 15)
    page.text(width / 2, 8, title, 10, anchor="mt")
    for j, (rgb, name) in enumerate(zip(panels, names, strict=True)):
        x = left + j * (side + gap) + (50 if j == 3 else 0)
        page.panel(x, top, side, rgb)
        page.text(x + side / 2, top - 8, name, 9)
        if j == 2:
            page.colorbar(x + side + 6, top, 9, side, -a, a, "bwr")
    return page.png()


__all__ = ["DPI", "counterfactual_png"]
