"""Agreement with the reference libraries on the same model, image and superpixels.

captum's Occlusion (same numbers), lime's LimeImageExplainer (same fit on the same samples; rank
agreement on independent samples) and shap's KernelExplainer (same values when both enumerate
every coalition; rank agreement when both sample). Tiny model, 12x12 / 16x16 images, block
superpixels: each test runs in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import xailab
from xailab.methods.perturbation.lime import lime_kernel
from xailab.methods.perturbation.regression import weighted_ridge
from xailab.methods.perturbation.segmentation import superpixel_fill

from .conftest import TinyCNN
from .test_perturbation import blocks

pytestmark = [pytest.mark.reference, pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")]


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return TinyCNN().double().eval()


@pytest.fixture
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    base = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)
    base[:, :, 4:12, 4:12] += 1.5  # an object in the middle gives the superpixels distinct roles
    return base


def scorer(model: torch.nn.Module, x: torch.Tensor, seg: torch.Tensor, fill: torch.Tensor, target: int):
    """``f(Z)`` for shap: coalitions ``[n, S]`` in {0, 1} -> the target logit of the masked images."""

    def f(z: np.ndarray) -> np.ndarray:
        keep = torch.from_numpy(np.asarray(z) > 0.5)[:, seg][:, None]  # [n, 1, H, W]
        with torch.no_grad():
            return model(torch.where(keep, x, fill)).numpy()[:, target]

    return f


# -- captum ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("window", "stride", "fill"), [((4, 4), (2, 2), 0.0), ((5, 3), (4, 2), 0.3)])
def test_occlusion_equals_captum(window: tuple[int, int], stride: tuple[int, int], fill: float) -> None:
    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = TinyCNN().eval()
    x = torch.rand(3, 3, 13, 16, generator=torch.Generator().manual_seed(1))
    ours = xailab.create("occlusion", model, window=window, stride=stride, fill=fill, batch_size=9).explain(
        x, target=["top1", "least"])
    captum = Occlusion(model)
    for j in range(2):
        ref = captum.attribute(x, sliding_window_shapes=(3, *window), strides=(1, *stride), baselines=fill,
                               target=ours.targets[:, j].tolist(), perturbations_per_eval=8)
        # captum sums the identical channel maps of a full-channel window; it divides in float32
        torch.testing.assert_close(ours.maps[:, j], ref[:, 0], rtol=1e-4, atol=1e-6)


# -- lime -------------------------------------------------------------------------------------------------
def _lime_explainer(model: torch.nn.Module, image: torch.Tensor, seg: torch.Tensor, seed: int = 0):
    from lime.lime_image import LimeImageExplainer

    def classifier_fn(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy()

    hwc = image[0].permute(1, 2, 0).numpy().copy()
    return LimeImageExplainer(random_state=seed), hwc, classifier_fn


def test_lime_fit_equals_limes_on_limes_own_samples(model: torch.nn.Module, image: torch.Tensor) -> None:
    """Same samples, same kernel, same ridge: the same superpixel weights (the definition)."""
    from sklearn.metrics import pairwise_distances

    seg = blocks(16, 16, 4)
    explainer, hwc, classifier_fn = _lime_explainer(model, image, seg)
    fudged = superpixel_fill(image[0], seg, 16, None).permute(1, 2, 0).numpy()
    data, labels = explainer.data_labels(hwc, fudged, seg.numpy(), classifier_fn, 300, batch_size=50)
    distances = pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    target = int(labels[0].argmax())
    _, exp, _, _ = explainer.base.explain_instance_with_data(data, labels, distances, target, 100000)
    ref = torch.zeros(16, dtype=torch.float64)
    for feature, weight in exp:
        ref[feature] = weight
    z = torch.from_numpy(data).bool()
    coef, _ = weighted_ridge(z, torch.from_numpy(labels[:, target : target + 1]), lime_kernel(z, 0.25), 1.0)
    torch.testing.assert_close(coef[0], ref, rtol=1e-7, atol=1e-9)


def test_lime_ranks_superpixels_like_lime(model: torch.nn.Module, image: torch.Tensor) -> None:
    seg = blocks(16, 16, 4)
    explainer, hwc, classifier_fn = _lime_explainer(model, image, seg)
    target = int(model(image).argmax())
    exp = explainer.explain_instance(hwc, classifier_fn, labels=(target,), top_labels=None, hide_color=None,
                                     num_samples=3000, batch_size=500, segmentation_fn=lambda _: seg.numpy(),
                                     random_seed=0)
    ref = np.zeros(16)
    for feature, weight in exp.local_exp[target]:
        ref[feature] = weight
    ours = xailab.create("lime", model, num_samples=3000, segmentation=seg, batch_size=500).explain(
        image, target=target)
    rho = spearmanr(ours.extras["weights"][0, 0].numpy(), ref).statistic
    assert rho >= 0.9, rho


# -- shap ------------------------------------------------------------------------------------------------
def test_kernel_shap_equals_shap_when_both_enumerate(model: torch.nn.Module, image: torch.Tensor) -> None:
    import shap

    seg = blocks(16, 16, 6)  # 9 superpixels: 510 coalitions, which both enumerate
    target = int(model(image).argmax())
    ours = xailab.create("kernel_shap", model, num_samples=512, segmentation=seg).explain(image, target=target)
    fill = superpixel_fill(image[0], seg, 9, None)
    f = scorer(model, image[0], seg, fill, target)
    ref = shap.KernelExplainer(f, np.zeros((1, 9))).shap_values(np.ones((1, 9)), l1_reg=False, silent=True)
    torch.testing.assert_close(ours.extras["weights"][0, 0], torch.from_numpy(np.asarray(ref).reshape(-1)),
                               rtol=1e-7, atol=1e-9)


def test_kernel_shap_ranks_superpixels_like_shap(model: torch.nn.Module, image: torch.Tensor) -> None:
    import shap

    seg = blocks(16, 16, 4)  # 16 superpixels: 65,534 coalitions, both sample 1,500
    target = int(model(image).argmax())
    ours = xailab.create("kernel_shap", model, num_samples=1500, segmentation=seg, batch_size=500).explain(
        image, target=target)
    fill = superpixel_fill(image[0], seg, 16, None)
    np.random.seed(0)
    ref = shap.KernelExplainer(scorer(model, image[0], seg, fill, target), np.zeros((1, 16))).shap_values(
        np.ones((1, 16)), nsamples=1500, l1_reg=False, silent=True)
    rho = spearmanr(ours.extras["weights"][0, 0].numpy(), np.asarray(ref).reshape(-1)).statistic
    assert rho >= 0.9, rho
