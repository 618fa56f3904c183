"""Network dissection: quantile sketch, IoU on hand-set detectors, class-level, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xailab.concepts.dissection import (
    ConceptMasks,
    QuantileSketch,
    class_selectivity,
    dissect,
    dissect_classes,
)
from xailab.concepts.dissection_concepts import ColourConcepts, rgb_to_lab
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import count_hooks

S = 16  # image side


def detector_model() -> nn.Module:
    """1x1 conv with three hand-set units: 0 = red (2R - G - B - 0.5), 1 = green, 2 = blue;
    then ReLU ("1", full resolution) and 2x2 average pooling ("2", half resolution)."""
    conv = nn.Conv2d(3, 3, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[2.0, -1, -1], [-1, 2, -1], [-1, -1, 2]]).view(3, 3, 1, 1))
        conv.bias.fill_(-0.5)
    return nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))


def planted_images(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Grey images, each with a red 5x6 patch (varying intensity) and a blue 6x6 square.
    Returns (images [n, 3, S, S] in [0, 1], square masks bool [n, S, S])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, S, S), 0.5)
    sq = torch.zeros(n, S, S, dtype=torch.bool)
    for i in range(n):
        r0, c0 = torch.randint(0, S - 5, (2,), generator=g).tolist()
        x[i, :, r0 : r0 + 5, c0 : c0 + 6] = torch.tensor([1.0, 0.1, 0.1]).view(3, 1, 1)
        x[i, 0, r0 : r0 + 5, c0 : c0 + 6] -= 0.2 * torch.rand(5, 6, generator=g)
        s0, t0 = torch.randint(0, S - 6, (2,), generator=g).tolist()
        x[i, :, s0 : s0 + 6, t0 : t0 + 6] = torch.tensor([0.1, 0.1, 1.0]).view(3, 1, 1)
        x[i, 2, s0 : s0 + 6, t0 : t0 + 6] -= 0.2 * torch.rand(6, 6, generator=g)
        sq[i, s0 : s0 + 6, t0 : t0 + 6] = True
    return x, sq


class SquareConcepts:
    """Two concepts from known boxes: 'square' inside, 'background' outside."""

    def __init__(self, squares: torch.Tensor) -> None:
        self.names = ["square", "background"]
        self.categories = ["object", "object"]
        self.squares = squares

    def masks(self, index: torch.Tensor, images: torch.Tensor) -> ConceptMasks:
        return ConceptMasks(layers=(~self.squares[index]).long()[:, None])


def reference_iou(acts: torch.Tensor, labels: torch.Tensor, k: int, thresholds: torch.Tensor) -> torch.Tensor:
    """All in memory, line by line from the paper: IoU[unit, concept] over the whole set."""
    up = F.interpolate(acts.double(), size=labels.shape[-2:], mode="bilinear", align_corners=False)
    m = up > thresholds.double().view(1, -1, 1, 1)
    out = torch.zeros(acts.shape[1], k, dtype=torch.float64)
    for u in range(acts.shape[1]):
        for c in range(k):
            lc = labels == c
            out[u, c] = (m[:, u] & lc).sum() / (m[:, u] | lc).sum().clamp_min(1)
    return out


# -- quantile sketch --------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["normal", "relu", "growing"])
def test_sketch_matches_exact_quantile(dist: str) -> None:
    g = torch.Generator().manual_seed(1)
    data = torch.randn(5, 40_000, generator=g, dtype=torch.float64)
    if dist == "relu":
        data = data.clamp_min(0) * torch.arange(1, 6, dtype=torch.float64)[:, None]
    if dist == "growing":  # the first batch holds small values only: the range must double
        data = data.abs() * torch.linspace(0.01, 10, 40_000, dtype=torch.float64)
    sk = QuantileSketch(5, bins=512)
    for chunk in data.split(3000, dim=1):
        sk.update(chunk)
    assert sk.total == 40_000
    for q in (0.005, 0.05, 0.2):
        exact = torch.quantile(data, 1 - q, dim=1)
        assert sk.lo is not None and sk.hi is not None
        width = (sk.hi - sk.lo) / sk.bins
        err = (sk.upper(q) - exact).abs()
        assert (err <= width + 1e-12).all(), (q, err, width)
    # fraction of values above the estimate is q up to one bin's mass
    t = sk.upper(0.01)
    frac = (data > t[:, None]).double().mean(1)
    assert ((frac - 0.01).abs() < 0.003).all()


def test_sketch_rejects_bad_use() -> None:
    with pytest.raises(InputError):
        QuantileSketch(2, bins=3)
    sk = QuantileSketch(2)
    with pytest.raises(InputError, match="no values"):
        sk.upper(0.1)
    sk.update(torch.rand(2, 10))
    with pytest.raises(InputError):
        sk.upper(1.5)


# -- IoU on known detectors -------------------------------------------------------------------
def test_colour_units_get_their_colour_and_iou_matches_reference() -> None:
    model = detector_model().double()
    x, _ = planted_images()
    red_share = 30 / (S * S)
    res = dissect(model, x.double(), ["1", "2"], ColourConcepts(), quantile=red_share / 2, batch_size=7)
    t = res.table.set_index(["layer", "unit"])
    assert t.loc[("1", 0), "label"] == "red" and t.loc[("1", 0), "labelled"]
    assert t.loc[("1", 2), "label"] == "blue" and t.loc[("1", 2), "labelled"]
    assert t.loc[("2", 0), "label"] == "red"
    # the top q of all pixels lie inside the red ones: IoU = q * pixels / red pixels
    labels = ColourConcepts().masks(torch.arange(len(x)), x).layers[:, 0]
    red = int((labels == ColourConcepts().names.index("red")).sum())
    assert t.loc[("1", 0), "score"] == pytest.approx(red_share / 2 * labels.numel() / red, abs=0.02)
    # accumulated IoU equals the in-memory reference at the same thresholds
    with torch.no_grad():
        a1 = model[1](model[0](x.double()))
        a2 = model[2](a1)
    for name, acts in (("1", a1), ("2", a2)):
        ref = reference_iou(acts, labels, 11, res.thresholds[name])
        assert torch.allclose(res.scores[name].double(), ref, atol=1e-6), name
    assert count_hooks(model) == 0


def test_square_unit_gets_the_square_concept() -> None:
    model = detector_model().double()
    x, sq = planted_images()
    res = dissect(model, x.double(), "1,2", SquareConcepts(sq), quantile=36 / (S * S), batch_size=5)
    t = res.table.set_index(["layer", "unit"])
    assert t.loc[("1", 2), "label"] == "square"
    assert t.loc[("1", 2), "score"] > 0.7
    assert t.loc[("2", 2), "label"] == "square" and t.loc[("2", 2), "score"] > 0.5
    assert "background" in t.loc[("1", 2), "runner_up"]
    # the top images of the blue unit all contain a square (every image does) and are distinct
    assert len(set(res.top_images["1"][2].tolist())) == res.top_images["1"].shape[1]


def test_iou_threshold_decides_labelled() -> None:
    model = detector_model().double()
    x, sq = planted_images(8)
    res = dissect(model, x.double(), "1", SquareConcepts(sq), quantile=0.1, threshold=0.99)
    assert not res.table["labelled"].any()
    assert (res.table["score"] <= 1.0).all()


def test_valid_mask_restricts_union() -> None:
    """A concept not annotated on an image does not count that image's activations."""
    model = detector_model().double()
    x, sq = planted_images(6)

    class Half(SquareConcepts):
        def masks(self, index: torch.Tensor, images: torch.Tensor) -> ConceptMasks:
            m = super().masks(index, images)
            valid = torch.ones(len(index), 2, dtype=torch.bool)
            valid[:, 0] = index < 3  # 'square' annotated on the first three images only
            m.layers[~valid[:, 0]] = torch.where(m.layers[~valid[:, 0]] == 0, -1, m.layers[~valid[:, 0]])
            m.valid = valid
            return m

    part = dissect(model, x.double(), "1", Half(sq), quantile=0.1)
    ref = reference_iou(model[1](model[0](x[:3].double())).detach(), (~sq[:3]).long(), 2, part.thresholds["1"])
    assert torch.allclose(part.scores["1"][:, 0].double(), ref[:, 0], atol=1e-6)
    assert not torch.allclose(part.scores["1"][:, 1], ref[:, 1].float())  # 'background': all six


def test_colour_concepts_from_pixels() -> None:
    x = torch.zeros(1, 3, 2, 3)
    cols = [(1, 0, 0), (0, 0.6, 0), (0, 0, 1), (1, 1, 1), (0, 0, 0), (1, 0.9, 0.1)]
    for j, c in enumerate(cols):
        x[0, :, j // 3, j % 3] = torch.tensor(c)
    cc = ColourConcepts()
    got = [cc.names[int(k)] for k in cc.masks(torch.arange(1), x).layers.flatten()]
    assert got == ["red", "green", "blue", "white", "black", "yellow"]
    # photo blues (navy, steel, sky, royal, pure) are blue; plum and violet are purple
    shades = {(30, 40, 90): "blue", (40, 60, 140): "blue", (90, 140, 220): "blue", (50, 50, 200): "blue",
              (0, 0, 255): "blue", (110, 40, 110): "purple", (140, 60, 200): "purple"}
    px = torch.tensor(list(shades)).float().T[None, :, :, None] / 255
    assert [cc.names[int(k)] for k in cc.masks(torch.arange(1), px).layers.flatten()] == list(shades.values())
    custom = ColourConcepts(colours={"dark": (0, 0, 0), "light": ((255, 255, 255), (255, 0, 0))})
    three = torch.tensor([[1.0, 0, 0], [1, 1, 1], [0, 0, 0]]).T[None, :, :, None]
    assert custom.masks(torch.arange(1), three).layers.flatten().tolist() == [1, 1, 0]
    lab = rgb_to_lab(torch.tensor([1.0, 1.0, 1.0]).view(3, 1, 1)).flatten()
    assert torch.allclose(lab, torch.tensor([100.0, 0.0, 0.0]), atol=0.05)
    big = ColourConcepts().masks(torch.arange(1), torch.rand(1, 3, 224, 224)).layers
    assert big.shape == (1, 1, 112, 112)


# -- class-level ------------------------------------------------------------------------------
def test_class_dissection_on_labelled_synthetic_data() -> None:
    model = detector_model().double()
    g = torch.Generator().manual_seed(0)
    n = 30
    y = torch.arange(n) % 3
    x = torch.full((n, 3, 8, 8), 0.2, dtype=torch.float64)
    for i in range(n):  # class c: a patch of pure colour c (red, green, blue)
        x[i, int(y[i]), 2:6, 2:6] = 0.6 + 0.4 * torch.rand(1, generator=g, dtype=torch.float64)
    res = dissect_classes(model, x, "1", labels=y, class_names=["r", "g", "b"], batch_size=8)
    t = res.table.set_index("unit")
    assert list(t["label"]) == ["r", "g", "b"]
    # selectivity by hand: mean spatial max per class, then (max - rest) / (max + rest)
    with torch.no_grad():
        peak = model[1](model[0](x)).amax((2, 3))
    means = torch.stack([peak[y == c].mean(0) for c in range(3)], 1)
    assert torch.allclose(res.scores["1"].double(), means, atol=1e-6)
    _, sel = class_selectivity(means)
    assert torch.allclose(torch.tensor(t["score"].values), sel.double(), atol=1e-6)
    assert (t["score"] == 1.0).all()  # the other classes never activate the unit
    assert t["labelled"].all()


def test_class_selectivity_formula() -> None:
    best, sel = class_selectivity(torch.tensor([[1.0, 1.0, 1.0], [3.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    assert best[1] == 0
    assert sel.tolist() == pytest.approx([0.0, 0.5, 0.0])


def test_class_dissection_needs_labels() -> None:
    model = detector_model()
    with pytest.raises(InputError, match="labels"):
        dissect_classes(model, torch.rand(4, 3, 8, 8), "1")


# -- bad input --------------------------------------------------------------------------------
def test_unknown_layer_lists_candidates() -> None:
    with pytest.raises(LayerError, match="Conv layers: 0"):
        dissect(detector_model(), torch.rand(2, 3, 8, 8), "layer9", ColourConcepts())


def test_empty_image_set() -> None:
    with pytest.raises(InputError, match="empty"):
        dissect(detector_model(), torch.rand(0, 3, 8, 8), "1", ColourConcepts())
    with pytest.raises(InputError, match="empty"):
        dissect_classes(detector_model(), torch.rand(0, 3, 8, 8), "1", labels=torch.zeros(0, dtype=torch.long))


def test_layer_without_spatial_maps() -> None:
    model = detector_model()
    with pytest.raises(LayerError, match="not spatial maps"):
        dissect(model, torch.rand(2, 3, 8, 8), "1,4", ColourConcepts())
    assert count_hooks(model) == 0
    with pytest.raises(LayerError):
        dissect(model, torch.rand(2, 3, 8, 8), " , ", ColourConcepts())
