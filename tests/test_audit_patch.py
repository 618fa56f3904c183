"""The patch attack and the explanation shift, on models whose answer is known by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xailab.audit import explanation_shift, patch_attack
from xailab.audit.pixel import grid_positions, square_masks
from xailab.core.errors import InputError


def corner_model(size: int = 10) -> nn.Module:
    """Two classes; class 1's score is the brightness of the bottom-right 3 x 3 corner (rows and
    columns 6-8), class 0's a constant: only that corner can change the decision."""
    lin = nn.Linear(size * size, 2).double()
    with torch.no_grad():
        lin.weight.zero_()
        w = torch.zeros(size, size, dtype=torch.float64)
        w[6:9, 6:9] = 1.0
        lin.weight[1] = w.flatten()
        lin.bias.copy_(torch.tensor([4.0, 0.0], dtype=torch.float64))
    return nn.Sequential(nn.Flatten(), lin).eval()


def dark(n: int = 4, size: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, size, size, generator=g, dtype=torch.float64) * 0.1


def test_grid_and_masks() -> None:
    g = grid_positions((10, 10), 3, 3)
    assert g[:, 0].unique().tolist() == [0, 3, 6, 7]  # the last place touches the border
    m = square_masks(2, (10, 10), 3, torch.tensor([[0, 0], [7, 7]]))
    assert m.sum().item() == 18 and bool(m[1, 9, 9]) and not bool(m[1, 6, 6])


@pytest.mark.parametrize("position", ["search", "saliency"])
def test_patch_finds_the_only_place_that_matters(position: str) -> None:
    m, x = corner_model(), dark()
    res = patch_attack(m, x, size=3, position=position, stride=1, steps=20, search_steps=3,
                       preprocessing=None)
    assert res.success.all() and (res.clean_pred == 0).all()
    assert res.extras["positions"].tolist() == [[6, 6]] * 4
    # nothing outside the square changed; inside it went to white (the gradient is +1 there)
    outside = ~res.mask[:, None]
    assert torch.equal(res.adversarial[outside], res.clean[outside])
    torch.testing.assert_close(res.adversarial[:, 0, 6:9, 6:9], torch.ones(4, 3, 3, dtype=torch.float64))
    assert (res.norms()[2] <= 9).all()


def test_fixed_place_away_from_the_corner_fails() -> None:
    m, x = corner_model(), dark()
    res = patch_attack(m, x, size=3, position=(0, 0), steps=10, preprocessing=None)
    assert not res.success.any()
    assert res.mask[:, :3, :3].all() and res.mask.sum() == 4 * 9
    centre = patch_attack(m, x, size=2, position="center", steps=1, preprocessing=None)
    assert centre.extras["positions"].tolist() == [[4, 4]] * 4


def test_patch_eps_bounds_the_change_inside_the_square() -> None:
    m, x = corner_model(), dark()
    res = patch_attack(m, x, size=3, position=(6, 6), eps=0.2, steps=10, preprocessing=None)
    assert float(res.norms()[0].max()) <= 0.2 + 1e-12


def test_targeted_patch_and_batch_parity() -> None:
    m, x = corner_model(), dark(n=5)
    a = patch_attack(m, x, size=3, target=1, stride=2, steps=8, search_steps=2, batch_size=64, preprocessing=None)
    b = patch_attack(m, x, size=3, target=1, stride=2, steps=8, search_steps=2, batch_size=7, preprocessing=None)
    assert a.targeted and a.success.all()
    torch.testing.assert_close(a.adversarial, b.adversarial, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"size": 11}, "does not fit"),
        ({"size": 0}, "at least 1"),
        ({"size": 3, "position": (8, 0)}, "leaves the 10x10 image"),
        ({"size": 3, "position": "middle"}, "position must be"),
        ({"size": 3, "eps": 0.0}, "eps of a patch"),
    ],
)
def test_bad_patch_is_refused(kwargs: dict, error: str) -> None:
    with pytest.raises(InputError, match=error):
        patch_attack(corner_model(), dark(), preprocessing=None, **kwargs)


def test_shift_on_a_linear_model_is_known_by_hand() -> None:
    # saliency of a linear model is |W| of the class explained, whatever the image: the clean and
    # attacked maps of class 1 are identical (IoU 1, rank correlation 1), and the mass in the
    # patch is the patch's share of |W_1|, 1 (all of class 1's weight lies in the corner).
    m, x = corner_model(), dark(n=3)
    res = patch_attack(m, x, size=3, position=(6, 6), steps=10, preprocessing=None)
    shift = explanation_shift(m, res, ["saliency"], targets=["top1", "adversarial"], preprocessing=None)
    t = shift.table
    assert len(t) == 6 and set(t["target"]) == {"top1", "adversarial"}
    same = t[t.target == "adversarial"]  # class 1 on both images
    assert (same["iou"] == 1.0).all()
    torch.testing.assert_close(torch.tensor(same["spearman"].values), torch.ones(3, dtype=torch.float64))
    top1 = t[t.target == "top1"]
    assert (top1["class_clean"] == 0).all() and (top1["class_adv"] == 1).all()
    torch.testing.assert_close(torch.tensor(top1["mass_adv"].values), torch.ones(3, dtype=torch.float64))
    assert (t["area"] == 9 / 100).all()
    summary = shift.summary()
    assert list(summary["target"]) == ["top1", "adversarial"]


def test_shift_needs_a_known_target() -> None:
    m, x = corner_model(), dark(n=2)
    res = patch_attack(m, x, size=3, position=(6, 6), steps=2, preprocessing=None)
    with pytest.raises(InputError, match="targeted attack"):
        explanation_shift(m, res, ["saliency"], targets=["target"], preprocessing=None)
    with pytest.raises(InputError, match="unknown explanation target"):
        explanation_shift(m, res, ["saliency"], targets=["mine"], preprocessing=None)
