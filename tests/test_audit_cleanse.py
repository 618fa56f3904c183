"""Neural Cleanse, the trigger's region against its explanation, and STRIP, on a hand-built model
whose backdoor is known: five "band" classes (class k: the brightness of rows 3k..3k+1 over its
first 6 + 2k columns) and class 5, fired by a bright 2 x 2 patch in the bottom-right corner."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from xailab.audit.cleanse import (
    CleanseSettings,
    anomaly_index,
    flag_small,
    neural_cleanse,
    normal_tail,
    reference_norms,
    relative_flags,
    stamp,
)
from xailab.audit.strip import StripFilter, strip_entropy, strip_threshold, superimpose
from xailab.audit.trigger_regions import box_iou, mask_region, top_iou, trigger_explanation
from xailab.core.errors import InputError

PATCH = (14, 14, 15, 15)


class TriggerNet(nn.Module):
    """Band classes 0-4 (areas 12 to 28 pixels: a larger change reaches a later class) and the
    backdoor class 5: ``30 sigmoid(4 (s - 3)) - 3`` with ``s`` the sum of the 2 x 2 corner."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(5, 1, 16, 16)
        for k in range(5):
            w[k, 0, 3 * k : 3 * k + 2, : 6 + 2 * k] = 10.0 / (2 * (6 + 2 * k))
        self.band = nn.Conv2d(1, 5, 16, bias=False)
        self.band.weight.data = w

    def forward(self, x: Tensor) -> Tensor:
        s = x[:, 0, 14:16, 14:16].flatten(1).sum(1, keepdim=True)
        return torch.cat([self.band(x).flatten(1), 30 * torch.sigmoid(4 * (s - 3)) - 3], 1)


def band_images(n: int, seed: int = 0) -> Tensor:
    """Clean images: dark noise and the band of class ``i % 5`` at 0.9; the corner stays dark."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    for i in range(n):
        k = i % 5
        x[i, 0, 3 * k : 3 * k + 2, : 6 + 2 * k] = 0.9
    return x


def patch_truth() -> Tensor:
    t = torch.zeros(16, 16, dtype=torch.bool)
    t[14:, 14:] = True
    return t


@pytest.fixture(scope="module")
def cleansed() -> tuple[TriggerNet, Tensor, object]:
    torch.manual_seed(0)
    model, x = TriggerNet(), band_images(50)
    assert bool((model(x).argmax(1) == torch.arange(50) % 5).all())
    return model, x, neural_cleanse(model, x, settings=CleanseSettings(steps=200), preprocessing=None)


def test_anomaly_index_by_hand() -> None:
    norms = np.array([10.0, 11, 12, 13, 2])  # median 11, deviations 1 0 1 2 9, MAD 1
    np.testing.assert_allclose(anomaly_index(norms), np.array([1, 0, 1, 2, 9]) / 1.4826)
    assert flag_small(norms, 2.0) == [4]
    assert flag_small(np.array([10.0, 11, 12, 13, 40]), 2.0) == []  # a large mask is no backdoor
    assert flag_small(norms, 7.0) == []
    np.testing.assert_array_equal(anomaly_index(np.array([3.0, 3, 3, 1])), [0, 0, 0, np.inf])
    assert flag_small(np.array([10.0, 11, 12, 1])) == []  # four classes: no verdict
    assert flag_small(norms, 2.0, reached=np.array([True] * 4 + [False])) == []  # an unfinished mask


def test_relative_test_by_hand() -> None:
    from scipy.stats import norm

    norms = np.array([10.0, 11, 12, 13, 2])
    flags, z, p = relative_flags(norms, None)  # no reference: the paper's test on the norms
    assert flags == flag_small(norms) == [4]
    np.testing.assert_allclose(z, np.array([1, 0, -1, -2, 9]) / 1.4826)
    np.testing.assert_allclose(p, norm.sf(z))
    # class 4 is as small in clean models: no outlier of the ratio
    ref = reference_norms([[10.0, 11, 12, 13, 2], [9.0, 12, 11, 14, 2.2], [11.0, 10, 13, 12, 1.8]])
    np.testing.assert_allclose(ref, [10, 11, 12, 13, 2])
    assert relative_flags(norms, ref)[0] == []
    # class 1 shrank to a third of its reference: flagged, though not the smallest mask
    shrunk = np.array([10.0, 11 / 3, 12.5, 12, 2.1])
    flags, z, p = relative_flags(shrunk, ref)
    assert flags == [1] and flag_small(shrunk) == [4] and p[1] == p.min() < 0.023
    rng = np.random.default_rng(0)
    for _ in range(20):  # without a reference the rule is flag_small's, whatever the norms
        v = rng.lognormal(3, 0.5, 10)
        assert relative_flags(v, None)[0] == flag_small(v)
    with pytest.raises(InputError, match="reference"):
        relative_flags(norms, ref[:3])
    with pytest.raises(InputError, match="positive"):
        reference_norms([[1.0, 0.0]])
    np.testing.assert_allclose(normal_tail(np.array([0.0, 2.0])), [0.5, norm.sf(2.0)])


def test_finds_the_planted_trigger(cleansed: tuple) -> None:
    res = cleansed[2]
    assert res.flagged == [5]
    assert res.anomaly[5] > 2 and res.l1[5] < np.median(res.l1)
    assert top_iou(res.masks[5], patch_truth()) == 1.0      # its 4 largest pixels are the patch
    assert mask_region(res.masks[5]) == PATCH
    assert res.success[5] >= 0.99 and bool(res.reached.all())
    assert float(res.masks.min()) >= 0 and float(res.masks.max()) <= 1
    assert float(res.patterns.min()) >= 0 and float(res.patterns.max()) <= 1
    t = res.table
    assert list(t["flagged"]) == [False] * 5 + [True] and len(t) == 6


def test_success_is_measured_with_the_trigger_found(cleansed: tuple) -> None:
    model, x, res = cleansed
    xs = stamp(x, res.masks[5], res.patterns[5])
    assert float((model(xs).argmax(1) == 5).double().mean()) == pytest.approx(res.success[5])


def test_the_model_is_left_as_it_was() -> None:
    model = TriggerNet().train()
    model.band.weight.requires_grad_(True)
    neural_cleanse(model, band_images(10), settings=CleanseSettings(steps=10, check_every=5), preprocessing=None)
    assert model.training and model.band.weight.requires_grad and model.band.weight.grad is None


def test_classes_in_groups_give_the_same_result() -> None:
    """``batch_size`` only decides how many classes share a forward pass."""
    x = band_images(20)
    s = dict(steps=20, check_every=5, images_per_step=8)
    a = neural_cleanse(TriggerNet(), x, settings=CleanseSettings(**s, batch_size=48), preprocessing=None)
    b = neural_cleanse(TriggerNet(), x, settings=CleanseSettings(**s, batch_size=8), preprocessing=None)
    # every group draws its own images, so the masks differ; the shapes and classes do not
    assert a.masks.shape == b.masks.shape == (6, 16, 16) and a.patterns.shape == (6, 1, 16, 16)


def test_explanation_agrees_with_the_trigger(cleansed: tuple) -> None:
    model, x, res = cleansed
    a = trigger_explanation(model, x, res.masks[5], res.patterns[5], 5, method="saliency", preprocessing=None)
    assert a.mask_box == PATCH and a.explanation_box == PATCH and a.iou == 1.0
    assert a.share_in_mask > 0.9


def test_box_and_top_iou_by_hand() -> None:
    assert box_iou((0, 0, 1, 1), (1, 1, 2, 2)) == pytest.approx(1 / 7)
    assert box_iou(None, (0, 0, 1, 1)) == 0.0
    m = torch.zeros(4, 4)
    m[0, 0], m[0, 1], m[3, 3] = 1.0, 0.9, 0.8
    t = torch.zeros(4, 4, dtype=torch.bool)
    t[0, 0], t[1, 1] = True, True
    assert top_iou(m, t) == pytest.approx(1 / 3)  # top 2 = (0,0), (0,1); union 3


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InputError, match="target_success"):
        CleanseSettings(target_success=0)
    with pytest.raises(InputError, match="pixels in"):
        neural_cleanse(TriggerNet(), band_images(4) * 3, preprocessing=None)


# -- STRIP ------------------------------------------------------------------------------------------
def test_strip_rejects_triggered_inputs() -> None:
    model = TriggerNet()
    pool, calib, test = band_images(40, seed=1), band_images(40, seed=2), band_images(40, seed=3)
    f = StripFilter.calibrate(model, calib, pool, frr=0.05, overlays=10, preprocessing=None)
    assert f.threshold == pytest.approx(float(np.quantile(f.calibration_entropy, 0.05)))
    trig = test.clone()
    trig[:, :, 14:, 14:] = 1.0
    rates = f.rates(model, test, trig)
    assert rates["far"] == 0.0 and rates["frr"] <= 0.2
    assert rates["triggered_entropy_mean"] < 0.01 < rates["clean_entropy_mean"]


def test_strip_entropy_by_hand_and_batch_invariant() -> None:
    model = TriggerNet()
    x, pool = band_images(6, seed=4), band_images(8, seed=5)
    e = strip_entropy(model, x, pool, overlays=3, preprocessing=None, batch_size=3)
    assert np.allclose(e, strip_entropy(model, x, pool, overlays=3, preprocessing=None, batch_size=100))
    idx = torch.randperm(8, generator=torch.Generator().manual_seed(0 * 1_000_003 + 2))[:3]
    with torch.no_grad():
        p = torch.softmax(model(superimpose(x[2:3], pool[idx])).double(), dim=1)
    assert e[2] == pytest.approx(float((-(p * torch.log2(p))).sum(1).mean()))


def test_strip_bad_input() -> None:
    with pytest.raises(InputError, match="false rejection"):
        strip_threshold(np.zeros(5), 1.5)
    with pytest.raises(InputError, match="add or blend"):
        superimpose(torch.zeros(1), torch.zeros(1), "max")
    with pytest.raises(InputError, match="overlays"):
        strip_entropy(TriggerNet(), band_images(2), band_images(2), overlays=5, preprocessing=None)


def test_as_a_registered_detector() -> None:
    from xailab.audit.detectors import AuditData, available_detectors, run_detector

    assert "neural_cleanse" in available_detectors()
    data = AuditData(TriggerNet(), class_names=[f"c{k}" for k in range(6)])
    res = run_detector("neural_cleanse", data, images=band_images(50), preprocessing=None, steps=200)
    assert res.flagged == [5] and not res.needs_data and res.model_score > 1
    f = res.finding(5)
    assert f.region == PATCH and f.score > f.threshold == 2.0
    assert all(res.finding(k).score <= 2.0 for k in range(5))
    assert f.p_value == pytest.approx(float(normal_tail(np.array([f.score]))[0])) and f.p_value < 0.023
    # against reference norms equal to its own, no class stands out
    ref = [res.finding(k).extra["l1"] for k in range(6)]
    again = run_detector("neural_cleanse", data, images=band_images(50), preprocessing=None, steps=200, reference=ref)
    assert again.flagged == [] and "reference" in again.evidence
    with pytest.raises(InputError, match="reference"):
        run_detector("neural_cleanse", data, images=band_images(50), preprocessing=None, steps=1, reference=ref[:2])
    with pytest.raises(InputError, match="clean images"):
        run_detector("neural_cleanse", data)
