"""Channel screening of Score-CAM and Ablation-CAM: fewer passes, zero channels skipped exactly."""

from __future__ import annotations

import pytest
import torch

import xailab
from xailab.core.errors import InputError
from xailab.methods.cam.screening import screen

from .conftest import TinyCNN

DEAD = (1, 4)  # channels of features.2 that are zero for every input


def dead_channel_cnn() -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN().double().eval()
    with torch.no_grad():
        conv = model.features[2]
        conv.weight[list(DEAD)] = 0.0
        conv.bias[list(DEAD)] = -1.0  # ReLU(-1) = 0: dead
    return model


@pytest.fixture
def x() -> torch.Tensor:
    return torch.rand(3, 3, 10, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def test_screen_keeps_the_share_of_energy() -> None:
    maps = torch.tensor([4.0, 0.0, 3.0, 2.0, 1.0]).reshape(1, 5, 1, 1)
    assert screen(maps, None).tolist() == [[True] * 5]
    assert screen(maps, 1.0).tolist() == [[True, False, True, True, True]]  # only the zero one goes
    assert screen(maps, 0.7).tolist() == [[True, False, True, False, False]]  # 4 + 3 >= 0.7 * 10
    assert screen(maps, 2).tolist() == [[True, False, True, False, False]]
    assert screen(torch.zeros(1, 3, 2, 2), 0.5).sum() == 1  # at least one channel


def test_ablation_cam_skips_zero_channels_exactly(x: torch.Tensor) -> None:
    model = dead_channel_cnn()
    full = xailab.create("ablation_cam", model, layer="features.3").explain(x, target=["top1", "least"])
    fast = xailab.create("ablation_cam", model, layer="features.3", channels=1.0).explain(
        x, target=["top1", "least"])
    torch.testing.assert_close(fast.maps, full.maps, rtol=0, atol=1e-12)
    assert fast.evaluations <= full.evaluations - len(x) * len(DEAD)  # others may be zero too
    assert fast.params["channels"] == 1.0


def test_score_cam_skipping_zero_channels_only_rescales(x: torch.Tensor) -> None:
    model = dead_channel_cnn()
    full = xailab.create("score_cam", model, layer="features.3").explain(x)
    fast = xailab.create("score_cam", model, layer="features.3", channels=1.0).explain(x)
    assert fast.evaluations <= full.evaluations - len(x) * len(DEAD)  # others may be zero too
    for i in range(len(x)):
        a, b = full.maps[i, 0].reshape(-1), fast.maps[i, 0].reshape(-1)
        scale = float(b.norm() / a.norm())
        torch.testing.assert_close(b, a * scale, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["score_cam", "ablation_cam"])
def test_top_n_channels_cost_n_passes(name: str, x: torch.Tensor) -> None:
    model = dead_channel_cnn()
    full = xailab.create(name, model, layer="features.3").explain(x)
    top = xailab.create(name, model, layer="features.3", channels=2, batch_size=3).explain(x)
    assert top.evaluations == full.evaluations - len(x) * (6 - 2)
    assert torch.isfinite(top.maps).all()


@pytest.mark.parametrize("bad", [0, -1, 0.0, 1.5, "all", True])
def test_bad_channels_are_refused(bad: object) -> None:
    with pytest.raises(InputError, match="channels"):
        xailab.create("score_cam", TinyCNN(), layer="features.3", channels=bad)


def test_the_docs_example_runs() -> None:
    """The channel screening example of docs/methods/cam.md, as written."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "methods" / "cam.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    example = next(b for b in blocks if "channels=0.9" in b)
    scope: dict[str, object] = {}
    exec(compile(example, "cam.md", "exec"), scope)
    assert scope["fast"].evaluations < scope["full"].evaluations  # type: ignore[attr-defined]
