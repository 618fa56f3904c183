"""Counterfactuals on the toy problem (bars and blocks, a small CNN trained in a second).

Properties, not numbers: every valid counterfactual is classified as its target by the model;
the lambda search never ends farther than its first round; chunking does not change the answer;
beam search needs no more regions than greedy; the nearest prototype is the nearest; concept
edits replayed reproduce the class; bad input is refused with one line and an unreachable
target is "not found", not an error; a randomised model's counterfactuals are not plausible.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xailab.audit.toy import ToyNet, toy_images
from xailab.concepts.ice_basis import fit_ice
from xailab.core.errors import InputError, LayerError, TargetError
from xailab.counterfactual import (
    OTHER,
    PixelMap,
    Reference,
    class_concept_maps,
    concept_counterfactuals,
    pixel_counterfactuals,
    plausibility,
    prototype_counterfactuals,
    region_counterfactuals,
)
from xailab.counterfactual.region import fill_pixels
from xailab.data.transforms import Preprocessing
from xailab.models import set_preprocessing

PREP = Preprocessing(mean=(0.2,), std=(0.25,), channels=1)


def _inputs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = toy_images(n, seed=seed)
    return PREP.normalize(x.float() / 255), y


def _model(train: bool) -> nn.Module:
    torch.manual_seed(0)
    m = ToyNet()
    set_preprocessing(m, PREP)
    if train:
        x, y = _inputs(300, 0)
        opt = torch.optim.Adam(m.parameters(), lr=0.01)
        for _ in range(120):
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
        m.zero_grad(set_to_none=True)
    return m.eval()


@pytest.fixture(scope="module")
def toy() -> dict[str, object]:
    x, y = _inputs(12, 1)
    model = _model(True)
    assert float((model(x).argmax(1) == y).float().mean()) > 0.9
    return {"model": model, "x": x, "y": y, "ref": Reference.of(model, *_inputs(90, 2), k=3)}


def _classes(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(PixelMap.for_model(model).to_inputs(pixels)).argmax(1)


@pytest.mark.parametrize("target", ["top2", "least", "other"])
def test_pixel_counterfactuals_reach_their_target(toy: dict, target: str) -> None:
    model, x = toy["model"], toy["x"]
    cf = pixel_counterfactuals(model, x, target, steps=40, search_steps=3)
    assert bool(cf.valid.all()), cf.status
    got = _classes(model, cf.counterfactual)
    assert torch.equal(got, cf.counterfactual_class)
    want = torch.where(cf.target == OTHER, got, cf.target)
    assert torch.equal(got, want) and bool((got != cf.original_class).all())
    assert float(cf.counterfactual.min()) >= 0 and float(cf.counterfactual.max()) <= 1
    assert torch.allclose(cf.original, PixelMap.for_model(model).to_pixels(x).clamp(0, 1))
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_pixel_search_and_chunks(toy: dict) -> None:
    model, x = toy["model"], toy["x"][:4]
    one = pixel_counterfactuals(model, x, "top2", steps=20, search_steps=1)
    five = pixel_counterfactuals(model, x, "top2", steps=20, search_steps=4)
    assert bool((five.measures["l2"] <= one.measures["l2"] + 1e-6).all())  # the search keeps its best
    assert bool((five.measures["evaluations"] > one.measures["evaluations"]).all())
    chunked = pixel_counterfactuals(model, x, "top2", steps=20, search_steps=4, batch_size=1)
    assert torch.allclose(chunked.counterfactual, five.counterfactual, atol=1e-5)
    sparse = pixel_counterfactuals(model, x, "top2", distance="l1", steps=20, search_steps=4)
    dense = pixel_counterfactuals(model, x, "top2", distance="l2", steps=20, search_steps=4)
    assert float(sparse.measures["changed_pixels"].double().median()) < float(dense.measures["changed_pixels"].double().median())


def test_bad_input_and_unreachable(toy: dict) -> None:
    model, x, y = toy["model"], toy["x"], toy["y"]
    with pytest.raises(InputError, match="impossible budget"):
        pixel_counterfactuals(model, x, "top2", steps=0)
    with pytest.raises(InputError, match="distance"):
        pixel_counterfactuals(model, x, "top2", distance="l3")
    same = x[y == 0]
    with pytest.raises(TargetError, match="already predicts"):
        pixel_counterfactuals(model, same, 0)
    cf = pixel_counterfactuals(model, x, "least", steps=1, search_steps=1, lr=1e-6)
    assert not bool(cf.valid.any()) and cf.status[0] == "not found within 1 x 1 steps"
    assert torch.equal(cf.counterfactual, cf.original)
    mixed = pixel_counterfactuals(model, x[:4], 0, steps=20, search_steps=2)
    assert "already the target class" in mixed.status and mixed.summary()["n"] < 4
    with pytest.raises(InputError, match="impossible budget"):
        region_counterfactuals(model, x, "top2", max_regions=0)


def test_region_counterfactuals(toy: dict) -> None:
    model, x = toy["model"], toy["x"]
    greedy = region_counterfactuals(model, x, "other", fill="mean", max_regions=6)
    beam = region_counterfactuals(model, x, "other", fill="mean", max_regions=6, beam=3)
    assert greedy.valid.float().mean() >= 0.5
    both = greedy.valid & beam.valid
    assert bool((beam.measures["regions"][both] <= greedy.measures["regions"][both]).all())
    assert bool(beam.valid[greedy.valid].all())  # the greedy path is always in the beam
    # replaying the mask with the fill gives the counterfactual and its class
    filled = fill_pixels(greedy.original, "mean")
    mask = greedy.extras["region_mask"][:, None]
    replay = torch.where(mask, filled, greedy.original)
    assert torch.allclose(replay, greedy.counterfactual)
    assert torch.equal(_classes(model, replay)[greedy.valid], greedy.counterfactual_class[greedy.valid])
    seg = greedy.extras["segments"]
    for i in greedy.valid.nonzero()[:, 0].tolist():
        assert len(seg[i][greedy.extras["region_mask"][i]].unique()) == int(greedy.measures["regions"][i])
    tight = region_counterfactuals(model, x, "least", fill="mean", max_regions=1)
    assert any(s == "not found within 1 regions" for s in tight.status) or bool(tight.valid.all())
    ranked = region_counterfactuals(model, x[:3], "other", attribution="saliency", max_regions=6)
    assert ranked.params["attribution"] == "saliency"


def test_prototypes_are_the_nearest(toy: dict) -> None:
    model, x, ref = toy["model"], toy["x"], toy["ref"]
    cf = prototype_counterfactuals(model, x, "top2", ref, k=3)
    assert bool(cf.valid.all())
    assert torch.equal(_classes(model, cf.counterfactual), cf.target)
    from xailab.counterfactual.prototype import features

    f, _ = features(model, x)
    for i in range(len(x)):
        ok = (ref.labels == cf.target[i]) & (ref.predictions == cf.target[i])
        d = torch.cdist(f[i:i + 1], ref.features[ok])[0]
        assert float(cf.extras["target_distances"][i, 0]) == pytest.approx(float(d.min()), rel=1e-4)
    # prototypes are real members of their class: about as plausible as the class's own images
    score = plausibility(ref, cf.counterfactual, cf.counterfactual_class)
    assert float(score.median()) < 1.5


def test_randomised_model_counterfactuals_are_not_plausible(toy: dict) -> None:
    """Measured in the trained model's feature space: the trained model's counterfactuals move
    towards their new class; a randomised model's flip without looking like the class."""
    x, ref = toy["x"], toy["ref"]
    trained = pixel_counterfactuals(toy["model"], x, "other", steps=40, search_steps=3)
    rand = pixel_counterfactuals(_model(False), x, "other", steps=40, search_steps=3)
    ok_t, ok_r = trained.valid, rand.valid
    assert ok_t.sum() >= 6 and ok_r.sum() >= 6
    p_t = plausibility(ref, trained.counterfactual[ok_t], trained.counterfactual_class[ok_t])
    p_r = plausibility(ref, rand.counterfactual[ok_r], rand.counterfactual_class[ok_r])
    assert float(p_r.median()) > 1.5 * float(p_t.median())


def test_concept_counterfactuals(toy: dict) -> None:
    model, x = toy["model"], toy["x"]
    tx, ty = _inputs(90, 2)
    basis = fit_ice(model, tx, 4, layer="features.1", seed=0)
    add = class_concept_maps(model, basis, tx, ty)
    cf = concept_counterfactuals(model, basis, x, "top2", add_maps=add, max_concepts=4)
    assert cf.valid.any(), cf.status
    edits = cf.extras["edits"]
    assert bool((edits[cf.valid] != 0).sum(1).eq(cf.measures["concepts"][cf.valid].long()).all())
    assert all(s == "found" or s.startswith("not found within 4 concepts") for s in cf.status)
    with pytest.raises(LayerError, match=r"fitted on layer 'features\.1', not 'features\.0'"):
        concept_counterfactuals(model, basis, x, "top2", layer="features.0")
    other = fit_ice(_Wide().eval(), torch.rand(8, 1, 12, 12), 2, layer="features.1")
    with pytest.raises(LayerError, match="another model"):
        concept_counterfactuals(model, other, x, "top2")


class _Wide(nn.Module):
    """Another model with a layer of the same name and 5 channels (ToyNet's has 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 5, 3, padding=1), nn.ReLU())

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.features(t).mean((2, 3))
