"""The fast overlays (numpy + PIL) against the matplotlib figures they replace."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xailab.core.errors import InputError
from xailab.drawing import color_limits, grid_png, heat_rgba8, overlay_png, ticks
from xailab.jobs.explain_images import explain_images
from xailab.plotting import grid_figure, heat_rgba, overlay_figure

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("signed", [True, False])
def test_heat_colours_and_opacity_equal_matplotlibs(signed: bool) -> None:
    m = RNG.normal(size=(9, 7)) if signed else RNG.random((9, 7))
    m[0, 0] = 0.0
    vmin, vmax, cmap = color_limits([m])
    ours = heat_rgba8(m, vmin, vmax, cmap, 0.85).astype(int)
    theirs = np.round(heat_rgba(m, vmin, vmax, cmap, 0.85) * 255).astype(int)
    assert cmap == ("bwr" if signed else "inferno")
    assert np.abs(ours - theirs).max() <= 1
    assert ours[0, 0, 3] == 0  # zero attribution is transparent


def _size(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


def test_figures_have_matplotlibs_page_size() -> None:
    image = RNG.random((3, 16, 16))
    maps = {"a": [RNG.normal(size=(16, 16)) for _ in range(3)], "b": [RNG.random((16, 16)) for _ in range(3)]}
    titles = ["true: cat (0.50)", "top1: $dog$ (0.40)", "least: car (0.00)"]
    grid, per = grid_figure(image, maps, titles, suptitle="x"), overlay_figure(image, maps["a"], titles, suptitle="x")
    want_grid = tuple(round(v) for v in grid.get_size_inches() * 100)
    want_per = tuple(round(v) for v in per.get_size_inches() * 100)
    assert _size(grid_png(image, maps, titles, suptitle="x")) == want_grid
    assert _size(overlay_png(image, maps["a"], titles, suptitle="x")) == want_per


def test_overlay_shows_the_image_where_the_map_is_zero_and_the_colour_where_it_peaks() -> None:
    image = np.full((3, 8, 8), 0.5)
    m = np.zeros((8, 8))
    m[:, 4:] = 1.0  # right half: the maximum of a non-negative map
    png = Image.open(io.BytesIO(grid_png(image, {"a": [m]}, ["t"]))).convert("RGB")
    arr = np.asarray(png).astype(int)
    w = arr.shape[1]
    row = arr[arr.shape[0] // 2 + 20]  # a row through the panels, below the titles
    grey = np.round(0.5 * 255)
    left_panel = row[int(w * 0.6): int(w * 0.7)]  # the overlay panel's left half (zero map)
    right_panel = row[int(w * 0.85): int(w * 0.9)]  # its right half (the peak)
    assert np.abs(left_panel - grey).max() <= 1
    top = np.round(heat_rgba(np.ones(1), 0.0, 1.0, "inferno", 1.0)[0, :3] * 255)
    want = 0.85 * top + 0.15 * grey
    assert np.abs(right_panel - want).max() <= 2


def test_ticks_are_round_and_inside_the_scale() -> None:
    assert ticks(-17.6, 17.6) == [-10.0, 0.0, 10.0]
    t = ticks(0.0, 0.0031)
    assert 2 <= len(t) <= 4 and all(0.0 <= v <= 0.0031 for v in t)


def test_explain_png_modes(tiny_cnn, images, tmp_path: Path) -> None:
    def pngs(mode: str | bool) -> list[str]:
        out = tmp_path / str(mode)
        explain_images(tiny_cnn, images[:2], out=out, methods=["saliency", "gradcam"], targets="top1",
                       png=mode, log=lambda _: None)
        folder = out / "files" / "overlays"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []

    assert pngs("grid") == ["00000_grid.png", "00001_grid.png"]
    assert pngs("all") == ["00000_gradcam.png", "00000_grid.png", "00000_saliency.png",
                           "00001_gradcam.png", "00001_grid.png", "00001_saliency.png"]
    assert pngs("none") == [] and pngs(False) == []
    with pytest.raises(InputError, match="png must be one of"):
        pngs("some")
