"""Localisation against masks and the randomisation sanity check, on the patch model."""

from __future__ import annotations

import pytest
import torch

from xailab.core.errors import InputError, LayerError
from xailab.metrics import calibration_maps
from xailab.metrics.localisation import pointing_game, relevance_mass, relevance_rank
from xailab.metrics.sanity import randomisable_layers, randomisation_test, randomise_layer

from .conftest import TinyBNCNN, _randomise_bn
from .test_metrics_support import PatchNet, explain_or_skip, patch_images, patch_mask

GOOD_METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "deeplift", "lrp"]


def test_localisation_by_hand() -> None:
    a = torch.zeros(2, 4, 4)
    a[0, 0, 0], a[0, 3, 3], a[0, 0, 1] = 3.0, 1.0, -5.0
    a[1, 2, 2] = 2.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2] = True  # holds the maximum and the negative pixel
    masks[1, 0, 0] = True  # the maximum is 2 pixels away (diagonally) from the mask
    assert pointing_game(a, masks).tolist() == [1.0, 0.0]
    assert pointing_game(a, masks, tolerance=2).tolist() == [1.0, 1.0]
    # positive relevance only (Arras et al.): 3 of 4 inside; signed: (3 - 5) / (3 + 1 - 5)
    assert relevance_mass(a, masks).tolist() == pytest.approx([0.75, 0.0])
    assert relevance_mass(a, masks, mode="signed")[0].item() == pytest.approx(2.0)
    # K = 2 top pixels of image 0: (0,0) inside, (3,3) outside
    assert relevance_rank(a, masks).tolist() == pytest.approx([0.5, 0.0])


def test_localisation_empty_mask_and_bad_shapes() -> None:
    a = torch.rand(2, 4, 4)
    masks = torch.zeros(2, 4, 4)
    masks[0, 1, 1] = 1
    assert torch.isnan(relevance_mass(a, masks)[1]) and torch.isnan(pointing_game(a, masks)[1])
    assert not torch.isnan(relevance_rank(a, masks)[0])
    with pytest.raises(InputError, match="3 maps for 2 masks"):
        relevance_mass(torch.rand(3, 4, 4), masks)
    with pytest.raises(InputError, match=r"masks must be \[N, H, W\]"):
        pointing_game(a, torch.zeros(4, 4))
    # maps at a coarser resolution are resized to the masks
    assert relevance_rank(torch.rand(2, 2, 2), torch.ones(2, 8, 8)).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("name", GOOD_METHODS)
def test_good_methods_localise_the_patch_and_random_maps_do_not(name: str) -> None:
    model = PatchNet().eval()
    x = patch_images(6)
    masks = patch_mask(6)
    res = explain_or_skip(name, model, x, target=0)
    assert pointing_game(res, masks).mean() == 1.0
    assert relevance_mass(res, masks).mean() > 0.9
    assert relevance_rank(res, masks).mean() > 0.9
    rnd = calibration_maps.random_maps(x)
    assert relevance_mass(rnd, masks).mean() < 0.15  # the patch is 16 / 256 = 6 % of the image
    assert relevance_rank(rnd, masks).mean() < 0.3
    assert pointing_game(rnd, masks).mean() <= 0.5


def test_randomisation_flags_the_edge_detector_not_saliency() -> None:
    model = PatchNet().eval()
    x = patch_images(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sal = randomisation_test(model, x, "saliency", 0)
    edge = randomisation_test(model, x, calibration_maps.edge_explain, 0)
    assert sal.layers == ["fc", "conv"] and sal.steps == [0, 1]
    assert not sal.flagged and sal.final_spearman < 0.3
    assert edge.flagged and edge.final_spearman == pytest.approx(1.0)
    assert (edge.ssim - 1).abs().max() < 1e-9
    table = sal.table()
    assert list(table.columns) == ["method", "step", "layer", "spearman", "spearman_std", "ssim", "ssim_std",
                                  "input_spearman"]
    # the user's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_randomisation_on_a_batchnorm_model_steps_and_independent_mode() -> None:
    torch.manual_seed(0)
    model = _randomise_bn(TinyBNCNN(), 1)
    model.train()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    order = randomisable_layers(model)
    assert order == ["fc", "bn2", "conv2", "bn1", "conv1"]
    res = randomisation_test(model, x, "saliency", max_steps=2)
    assert res.steps == [0, 4] and res.spearman.shape == (2, 3)
    assert model.training  # flags restored
    ind = randomisation_test(model, x, "saliency", layers=["conv1"], cascading=False)
    assert ind.layers == ["conv1"]
    with pytest.raises(LayerError, match="no layer named 'conv9'"):
        randomisation_test(model, x, "saliency", layers=["conv9"])


def test_randomise_layer_is_seeded_and_leaves_the_global_rng() -> None:
    a, b = PatchNet(), PatchNet()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    randomise_layer(a.fc, 7)
    randomise_layer(b.fc, 7)
    assert torch.equal(a.fc.weight, b.fc.weight)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a.fc.weight, PatchNet().fc.weight)


def test_randomisation_rebuilds_a_method_from_its_recorded_params() -> None:
    # SmoothGrad records a parameter named "method" (its inner method): it must reach the method
    from xailab.core.registry import METHODS
    from xailab.metrics.compare_parts import accepted_params as _accepted_params

    model = PatchNet().eval()
    x = patch_images(2)
    res = explain_or_skip("smoothgrad", model, x, 0, **METHODS.get("smoothgrad").quick_params)
    params = _accepted_params("smoothgrad", dict(res.params))
    out = randomisation_test(model, x, "smoothgrad", 0, method_params=params, max_steps=1)
    assert out.method == "smoothgrad" and out.steps == [1]
