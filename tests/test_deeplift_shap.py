"""DeepLIFT-SHAP: exact summation to f(x) - mean f(b_k), the mean of DeepLIFT over the
baselines, Captum's DeepLiftShap on the same background, clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xailab
from xailab.core.errors import InputError


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 5, 3, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)).double().eval()


def test_sums_exactly_to_the_score_minus_the_mean_background_score() -> None:
    m, x, bg = _model(), torch.rand(4, 3, 8, 8, dtype=torch.float64), torch.rand(6, 3, 8, 8, dtype=torch.float64)
    res = xailab.create("deeplift_shap", m, background=bg, n_samples=None).explain(x, target=["top1", "least"])
    with torch.no_grad():
        fx, fb = m(x), m(bg).mean(0)
    for j in range(2):
        t = res.targets[:, j]
        gap = fx.gather(1, t[:, None])[:, 0] - fb[t]
        torch.testing.assert_close(res.maps[:, j].sum(dim=(1, 2, 3)), gap, rtol=0, atol=1e-10)
    assert res.extras["delta"].abs().max() < 1e-10
    assert res.evaluations == len(x) + 2 * len(bg) * len(x)  # scoring pass + (baseline, image) per pair


def test_is_the_mean_of_deeplift_over_the_baselines() -> None:
    m, x, bg = _model(), torch.rand(2, 3, 8, 8, dtype=torch.float64), torch.rand(3, 3, 8, 8, dtype=torch.float64)
    res = xailab.create("deeplift_shap", m, background=bg, n_samples=None).explain(x, target="top1")
    each = [xailab.create("deeplift", m, baseline=b).explain(x, target=res.targets[:, 0]).maps for b in bg]
    torch.testing.assert_close(res.maps, torch.stack(each).mean(0), rtol=0, atol=1e-12)


def test_drawn_baselines_are_per_image_and_seeded() -> None:
    m, x, bg = _model(), torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.rand(20, 3, 8, 8, dtype=torch.float64)
    a = xailab.create("deeplift_shap", m, background=bg, n_samples=4, seed=1, batch_size=4).explain(x)
    b = xailab.create("deeplift_shap", m, background=bg, n_samples=4, seed=1, batch_size=64).explain(x)
    c = xailab.create("deeplift_shap", m, background=bg, n_samples=4, seed=2).explain(x)
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=1e-12)
    assert not torch.allclose(a.maps, c.maps)
    ds = xailab.create("deeplift_shap", m, background=bg, n_samples=4, seed=1)
    drawn = ds.baselines(x)  # [B, K, C, H, W], rows of the background
    assert drawn.shape == (3, 4, 3, 8, 8)
    assert all(any(torch.equal(d, r) for r in bg) for d in drawn.flatten(0, 1))


def test_clear_errors() -> None:
    m = _model()
    with pytest.raises(InputError, match="not a baseline"):
        xailab.create("deeplift_shap", m, baseline="black")
    with pytest.raises(InputError, match="needs a background tensor"):
        xailab.create("deeplift_shap", m, n_samples=None)
    with pytest.raises(InputError, match="do not match"):
        xailab.create("deeplift_shap", m, background=torch.rand(2, 3, 4, 4, dtype=torch.float64)).explain(
            torch.rand(1, 3, 8, 8, dtype=torch.float64))


@pytest.mark.reference
def test_agrees_with_captum_deepliftshap() -> None:
    captum = pytest.importorskip("captum.attr")
    # no max-pool after an activation: there Captum 0.9's DeepLIFT is wrong (docs/methods/gradient.md)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(5 * 8 * 8, 3)).double().eval()
    x, bg = torch.rand(3, 3, 8, 8, dtype=torch.float64), torch.rand(5, 3, 8, 8, dtype=torch.float64)
    ours = xailab.create("deeplift_shap", m, background=bg, n_samples=None).explain(x, target="top1")
    theirs = captum.DeepLiftShap(m).attribute(x, baselines=bg, target=ours.targets[:, 0])
    torch.testing.assert_close(ours.maps[:, 0], theirs, rtol=0, atol=1e-10)
