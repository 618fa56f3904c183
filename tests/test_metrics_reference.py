"""Agreement with the reference implementations on the same model, images and maps.

Quantus 0.6.0 (test-only dependency) for deletion (its PixelFlipping), pointing game, relevance
mass / rank accuracy, max-sensitivity, MPRT and faithfulness correlation; SciPy for the rank
correlations; scikit-image for SSIM. Where the definitions differ, the test aligns the settings
and the docstring says how (see also docs/metrics.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xailab
from xailab.metrics import agreement as A
from xailab.metrics import localisation as L
from xailab.metrics.faithfulness import deletion, faithfulness_correlation
from xailab.metrics.sanity import randomisation_test
from xailab.metrics.sensitivity import max_sensitivity, uniform_noise
from xailab.metrics.ssim import ssim, structural_similarity

from .conftest import TinyBNCNN, _randomise_bn

pytestmark = pytest.mark.reference

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    quantus = pytest.importorskip("quantus")


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.filterwarnings("ignore", module="quantus")


def _model(in_ch: int, seed: int = 1) -> torch.nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(in_ch=in_ch), seed).eval()


def _saliency(model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return xailab.create("saliency", model).explain(x, target=t).pixel_maps()[:, 0]


def _quantus_explain(model: torch.nn.Module, inputs: np.ndarray, targets: np.ndarray, **kw: object) -> np.ndarray:
    return _saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()[:, None]


def test_deletion_equals_quantus_pixel_flipping(monkeypatch: pytest.MonkeyPatch) -> None:
    """Quantus flips *features* (channel values) in ``features_in_step`` chunks and records the
    score after each step, not before the first; with a pixel map broadcast over 4 channels and
    ``features_in_step = 4 x pixels per step`` every step flips whole pixels, so its curve is our
    curve without the first point. Its AUC is the trapezoid of that curve with unit spacing;
    ours spans the fractions 0..1 and includes the unmodified image."""
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 on NumPy >= 2.4
    model = _model(4)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 4, 16, 16, generator=g)
    a = torch.rand(5, 16, 16, generator=g)
    y = model(x).argmax(1)
    steps = 16
    ours = deletion(model, x, a, y, steps=steps, fill=0.0, output="probability")
    pf = quantus.PixelFlipping(features_in_step=4 * 256 // steps, perturb_baseline=0.0, normalise=False,
                               abs=False, disable_warnings=True)
    curve = np.array(pf(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                        softmax=True, channel_first=True))
    np.testing.assert_allclose(ours.scores[:, 1:].numpy(), curve, atol=1e-6)
    pf_auc = quantus.PixelFlipping(features_in_step=4 * 256 // steps, perturb_baseline=0.0, normalise=False,
                                   abs=False, disable_warnings=True, return_auc_per_sample=True)
    auc = np.array(pf_auc(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                          softmax=True, channel_first=True))
    np.testing.assert_allclose(np.trapezoid(ours.scores[:, 1:].numpy(), dx=1, axis=1), auc, rtol=1e-5)


def test_localisation_equals_quantus() -> None:
    """Same definitions on the same signed maps with ``mode="signed"``. Our default is
    ``mode="positive"`` (Arras et al. count positive relevance only); Quantus's is the raw map."""
    g = torch.Generator().manual_seed(4)
    x = torch.rand(6, 3, 16, 16, generator=g)
    a = torch.randn(6, 16, 16, generator=g)
    masks = torch.zeros(6, 16, 16)
    for i in range(6):
        masks[i, i : i + 5, 2 * i : 2 * i + 6] = 1
    a[0, 3, 3] = 10.0  # a hit for the pointing game
    y = np.zeros(6, dtype=int)
    cases = [
        (quantus.PointingGame, L.pointing_game),
        (quantus.RelevanceMassAccuracy, L.relevance_mass),
        (quantus.RelevanceRankAccuracy, L.relevance_rank),
    ]
    for qcls, ours in cases:
        q = np.array(qcls(normalise=False, abs=False, disable_warnings=True)(
            model=None, x_batch=x.numpy(), y_batch=y, a_batch=a[:, None].numpy(), s_batch=masks[:, None].numpy()
        ), dtype=float)
        np.testing.assert_allclose(ours(a, masks, mode="signed").numpy(), q, rtol=1e-5, err_msg=qcls.__name__)
    q_pos = np.array(quantus.RelevanceMassAccuracy(normalise=False, abs=False, disable_warnings=True)(
        model=None, x_batch=x.numpy(), y_batch=y, a_batch=a.clamp_min(0)[:, None].numpy(),
        s_batch=masks[:, None].numpy()))
    np.testing.assert_allclose(L.relevance_mass(a, masks).numpy(), q_pos, rtol=1e-5)


def test_max_sensitivity_equals_quantus() -> None:
    """Same estimator (max over samples of ||a' - a|| / ||a||); both draw the same noise here:
    Quantus through a perturb function that replays ours."""
    model = _model(3)
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    y = model(x).argmax(1)
    noise = uniform_noise(tuple(x.shape), 4, 0.1, seed=5)
    replay = iter(noise.numpy())

    def perturb(arr: np.ndarray, indices: np.ndarray, **kw: object) -> np.ndarray:
        return arr + next(replay).reshape(arr.shape)

    ms = quantus.MaxSensitivity(nr_samples=4, perturb_func=perturb, normalise=False, abs=False, disable_warnings=True)
    a = _saliency(model, x, y)
    q = np.array(ms(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
                    explain_func=_quantus_explain, softmax=False))
    ours = max_sensitivity(model, x, _saliency, y, noise=noise)
    np.testing.assert_allclose(ours.numpy(), q, rtol=1e-5)


def test_randomisation_equals_quantus_mprt() -> None:
    """Quantus's MPRT re-initialises the same layers in the same order (top down, each with
    ``reset_parameters()`` after ``torch.manual_seed(seed + 1)``) and reports the Spearman of
    the absolute maps per layer: our ``seed=43`` is its ``seed=42``. Its max-normalisation in
    float32 can merge near-equal values into ties, hence the tolerance."""
    model = _model(3)
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    y = model(x).argmax(1)
    a = _saliency(model, x, y)
    mprt = quantus.MPRT(seed=42, disable_warnings=True)
    q = mprt(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(),
             explain_func=_quantus_explain)
    ours = randomisation_test(model, x, _saliency, y, seed=43)
    assert [k for k in q if k != "original"] == ours.layers
    for k, layer in enumerate(ours.layers):
        np.testing.assert_allclose(ours.spearman[k].numpy(), np.array(q[layer]), atol=1e-4, err_msg=layer)


def test_faithfulness_correlation_equals_quantus() -> None:
    """Quantus draws subsets of *features* (channel values); on one-channel images features are
    pixels, and we replay its subsets (same NumPy seed, same draw order)."""
    model = _model(1, seed=2)
    g = torch.Generator().manual_seed(7)
    x = torch.rand(5, 1, 16, 16, generator=g)
    y = model(x).argmax(1)
    a = torch.randn(5, 16, 16, generator=g)
    runs, size = 20, 30
    np.random.seed(7)
    subsets = np.stack([np.stack([np.random.choice(256, size, replace=False) for _ in range(5)])
                        for _ in range(runs)])  # [runs, N, size], Quantus's order of draws
    np.random.seed(7)
    fc = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline=0.0, normalise=False,
                                         abs=False, return_aggregate=False, disable_warnings=True)
    q = np.array(fc(model=model, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=a[:, None].numpy(), softmax=True))
    ours = faithfulness_correlation(model, x, a, y, fill=0.0,
                                    subsets=torch.from_numpy(subsets).permute(1, 0, 2).contiguous())
    np.testing.assert_allclose(ours.numpy(), q, atol=1e-4)  # Quantus's softmax is float32


def test_correlations_equal_scipy() -> None:
    from scipy.stats import kendalltau, pearsonr, spearmanr

    g = torch.Generator().manual_seed(8)
    a = torch.rand(4, 12, 12, generator=g, dtype=torch.float64)
    b = a + 0.5 * torch.rand(4, 12, 12, generator=g, dtype=torch.float64)
    b[0, :3] = a[0, :3]
    a[1, :2] = 0.5  # ties
    b[1, :2] = 0.5
    for ours, ref in ((A.spearman, spearmanr), (A.kendall, kendalltau), (A.pearson, pearsonr)):
        expected = [ref(a[i].flatten().numpy(), b[i].flatten().numpy())[0] for i in range(4)]
        np.testing.assert_allclose(ours(a, b, mode="signed").numpy(), expected, rtol=1e-10, err_msg=ours.__name__)


def test_ssim_equals_skimage() -> None:
    from skimage.metrics import structural_similarity as sk_ssim

    g = torch.Generator().manual_seed(9)
    a = torch.rand(3, 20, 17, generator=g, dtype=torch.float64)
    b = a + 0.3 * torch.randn(3, 20, 17, generator=g, dtype=torch.float64)
    for win in (7, 5):
        ours = structural_similarity(a, b, 2.0, win_size=win)
        ref = [sk_ssim(a[i].numpy(), b[i].numpy(), data_range=2.0, win_size=win) for i in range(3)]
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    # the map-level wrapper: max-normalised maps, data range of the pair (as Quantus's ssim)
    na, nb = a.abs() / a.abs().amax(dim=(1, 2), keepdim=True), b.abs() / b.abs().amax(dim=(1, 2), keepdim=True)
    ref = [sk_ssim(na[i].numpy(), nb[i].numpy(),
                   data_range=float(max(na[i].max(), nb[i].max()) - min(na[i].min(), nb[i].min())))
           for i in range(3)]
    np.testing.assert_allclose(ssim(a, b).numpy(), ref, rtol=1e-10)
