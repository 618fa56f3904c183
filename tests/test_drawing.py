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
    left_panel = row[int(w * 0.50): int(w * 0.64)]  # the overlay panel's left half (zero map)
    right_panel = row[int(w * 0.70): int(w * 0.84)]  # its right half (the peak); its colour bar follows
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


def test_each_map_has_its_own_scale_and_equal_targets_share_a_column() -> None:
    from xailab.drawing import merge_columns

    keep, titles = merge_columns(["true: cat (0.81)", "top1: cat (0.81)", "least: car (0.00)"], [3, 3, 1])
    assert keep == [0, 2] and titles == ["true = top1: cat (0.81)", "least: car (0.00)"]
    assert merge_columns(["a: x", "b: x"], None) == ([0, 1], ["a: x", "b: x"])
    image = np.full((3, 8, 8), 0.5)
    small, big = np.zeros((8, 8)), np.zeros((8, 8))
    small[:, 4:], big[:, 4:] = 1e-3, 1e3  # a least-likely map a million times larger
    both = np.asarray(Image.open(io.BytesIO(grid_png(image, {"a": [small, big]}, ["t", "u"]))).convert("RGB"))
    y = both.shape[0] // 2 + 20
    peak = both[y, 390:470].astype(int)  # the right half of the small map's panel (x 269-484 of 840)
    top = np.round(heat_rgba(np.ones(1), 0.0, 1.0, "inferno", 1.0)[0, :3] * 255)
    assert np.abs(peak - (0.85 * top + 0.15 * 128)).max() <= 2  # its own maximum: full colour, not washed out
    merged = Image.open(io.BytesIO(grid_png(image, {"a": [small, small]}, ["true: c", "top1: c"], classes=[1, 1])))
    assert merged.size == Image.open(io.BytesIO(grid_png(image, {"a": [small]}, ["t"]))).size
