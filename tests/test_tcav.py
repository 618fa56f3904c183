"""TCAV: a concept planted in the data is significant, random concepts are not; CAVs and scores by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from xailab.concepts.tcav import (
    class_gradients,
    load_concept_images,
    random_subsets,
    run_tcav,
    tcav_score,
    tcav_to_run,
    train_cav,
)
from xailab.core.errors import DataError, InputError
from xailab.core.hooks import ActivationRecorder, count_hooks

S = 16  # image size




class StripeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x))))).flatten(1))


class Synth:
    """Smooth random backgrounds; class 1 = background with horizontal stripes (period 4)."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def background(self, n: int) -> torch.Tensor:
        low = torch.rand(n, 1, 4, 4, generator=self.g)
        smooth = nn.functional.interpolate(low, size=(S, S), mode="bilinear", align_corners=False)
        return 0.6 * smooth + 0.2 * torch.rand(n, 1, S, S, generator=self.g)

    def stripes(self, n: int) -> torch.Tensor:
        phase = torch.randint(0, 4, (n, 1), generator=self.g).float()
        rows = ((torch.arange(S).float()[None, :] + phase) % 4 < 2).float()
        return rows[:, None, :, None].expand(n, 1, S, S)

    def labelled(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n) % 2
        x = self.background(n)
        striped = 0.5 * x + 0.5 * self.stripes(n)
        return torch.where(y[:, None, None, None] == 1, striped, x), y


@pytest.fixture(scope="module")
def stripe_world() -> tuple[nn.Module, Synth]:
    torch.manual_seed(0)
    synth = Synth(0)
    net = StripeNet()
    x, y = synth.labelled(384)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(12):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(net(x[i : i + 64]), y[i : i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, yt = synth.labelled(200)
    with torch.no_grad():
        assert (net(xt).argmax(1) == yt).float().mean() > 0.95  # stripes decide the class
    return net, synth


def test_planted_stripes_are_significant_and_random_concepts_are_not(stripe_world: tuple[nn.Module, Synth]) -> None:
    net, synth = stripe_world
    stripes = 0.5 * synth.background(30) + 0.5 * synth.stripes(30)
    noise = synth.background(30)  # a "concept" of random images
    randoms = [synth.background(30) for _ in range(16)]
    xt, yt = synth.labelled(120)
    res = run_tcav(net, "relu1", {"stripes": stripes, "noise": noise}, randoms, {1: xt[yt == 1]},
                   class_names=["plain", "striped"])
    t = res.table.set_index("concept")
    assert t.loc["stripes", "score_mean"] > 0.95  # stripes push the striped class up in every image
    assert t.loc["stripes", "cav_accuracy"] > 0.95
    assert bool(t.loc["stripes", "significant"])
    assert t.loc["stripes", "p_value"] < 0.05 / 2
    assert not bool(t.loc["noise", "significant"])
    assert t.loc["noise", "cav_accuracy"] < 0.8  # noise vs noise: no better than chance
    assert len(res.scores[("stripes", 1)]) == 15 and len(res.random_scores[1]) == 15
    assert (t["n_tests"] == 2).all() and (t["class_name"] == "striped").all()
    assert count_hooks(net) == 0


def test_cav_is_the_separating_direction() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.zeros(20, dtype=torch.float64)
    d[3], d[7] = 6.0, -8.0  # the concept moves along d
    neg = torch.randn(40, 20, generator=g, dtype=torch.float64)
    pos = torch.randn(40, 20, generator=g, dtype=torch.float64) + d
    cav = train_cav(pos, neg, concept="d")
    cos = float(cav.vector.double() @ d / d.norm())
    assert cos > 0.8
    assert cav.accuracy == 1.0
    assert abs(float(cav.vector.norm()) - 1.0) < 1e-6
    flipped = train_cav(neg, pos)
    assert float(flipped.vector.double() @ d) < 0  # the CAV points toward its concept
    with pytest.raises(InputError, match="at least 2 images"):
        train_cav(pos[:1], neg)


def test_tcav_score_by_hand() -> None:
    grads = torch.tensor([[1.0, 0.0], [0.5, -1.0], [-1.0, 0.2], [0.0, 1.0]])
    assert tcav_score(grads, torch.tensor([1.0, 0.0])) == 0.5  # rows 0, 1 positive; row 3 is zero
    assert tcav_score(grads, torch.tensor([0.0, 1.0])) == 0.5
    assert tcav_score(grads, torch.tensor([-1.0, 0.0])) == 0.25


def test_class_gradients_are_the_layer_gradients(stripe_world: tuple[nn.Module, Synth]) -> None:
    net, synth = stripe_world
    x = synth.background(5)
    got = class_gradients(net, "relu1", x, 1, batch_size=2)
    with ActivationRecorder(net.relu1) as rec:
        out = net(x)
    assert rec.activation is not None
    (ref,) = torch.autograd.grad(out[:, 1].sum(), rec.activation)
    torch.testing.assert_close(got, ref.flatten(1))


def test_random_subsets_are_disjoint_when_they_can_be() -> None:
    sets = random_subsets(100, 5, 20, seed=1)
    allidx = torch.cat(sets)
    assert len(torch.unique(allidx)) == 100
    small = random_subsets(30, 5, 20, seed=1)
    assert all(len(torch.unique(s)) == 20 for s in small)
    with pytest.raises(InputError, match="fewer than a set"):
        random_subsets(10, 2, 20)


def test_bad_input(stripe_world: tuple[nn.Module, Synth], tmp_path: Path) -> None:
    net, synth = stripe_world
    empty = tmp_path / "empty_concept"
    empty.mkdir()
    with pytest.raises(DataError, match=r"concept folder .*empty_concept holds no usable images"):
        load_concept_images(empty)
    with pytest.raises(DataError, match="not found"):
        load_concept_images(tmp_path / "missing")
    x = synth.background(6)
    with pytest.raises(InputError, match="at least 3 random sets"):
        run_tcav(net, "relu1", {"c": x}, [x, x], {1: x})
    with pytest.raises(DataError, match="concept 'c' holds no images"):
        run_tcav(net, "relu1", {"c": x[:0]}, [x, x, x], {1: x})


def test_results_go_into_a_run(stripe_world: tuple[nn.Module, Synth], tmp_path: Path) -> None:
    net, synth = stripe_world
    x = synth.background(8)
    res = run_tcav(net, "relu2", {"c": 0.5 * x + 0.5 * synth.stripes(8)}, [synth.background(8) for _ in range(3)],
                   {0: x, 1: x})
    run = tcav_to_run(res, tmp_path / "run")
    assert set(run.tables()) >= {"tcav", "tcav_runs"}
    cavs = run.read_array("tcav_cavs")
    assert cavs.shape == (2, 2, 8 * S * S)  # concept + random rows, 2 runs, D
    assert np.isfinite(run.read_table("tcav")["p_value"]).all()
    assert (run.path / "files" / "tcav" / "scores.png").is_file()
