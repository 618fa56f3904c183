"""HiResCAM: the formula worked by hand on a tiny model, its linear-head property, agreement with
pytorch-grad-cam's HiResCAM, and its card in the report."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import xailab
from xailab.jobs.explain_images import explain_images
from xailab.report.site import build_site

from .conftest import TinyBNCNN, _randomise_bn


def hand_model() -> nn.Module:
    """x [1, 1, 2, 2] -> A = (x, -2x) [2, 2, 2] -> flatten -> 2 logits with chosen weights."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    fc = nn.Linear(8, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -2.0]).reshape(2, 1, 1, 1))
        w0 = torch.tensor([[[1.0, 0.0], [-1.0, 2.0]], [[0.5, -1.0], [-1.0, -1.0]]])  # class 0, per (k, i, j)
        fc.weight.copy_(torch.stack([w0.reshape(-1), torch.ones(8)]))
        fc.bias.copy_(torch.tensor([0.7, 0.0]))
    return nn.Sequential(OrderedDict(conv=conv, flat=nn.Flatten(), fc=fc)).eval()


def test_the_formula_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, -1.0]]).reshape(1, 1, 2, 2)
    res = xailab.create("hirescam", hand_model(), layer="conv").explain(x, target=0)
    # A_0 = x = [[1, 2], [3, -1]], A_1 = -2x = [[-2, -4], [-6, 2]]; G = the class-0 weights:
    # G_0 ⊙ A_0 = [[1, 0], [-3, -2]], G_1 ⊙ A_1 = [[-1, 4], [6, -2]]; sum = [[0, 4], [3, -4]]
    want = torch.tensor([[0.0, 4.0], [3.0, 0.0]])
    torch.testing.assert_close(res.extras["cam"][0, 0], want)
    torch.testing.assert_close(res.maps[0, 0], want)  # a 2 x 2 layer on a 2 x 2 image: no resizing
    assert "weights" not in res.extras  # per-location weights
    # Grad-CAM averages the gradient first: ReLU(0.5 A_0 - 0.625 A_1) = [[1.75, 3.5], [5.25, 0]]
    grad = xailab.create("gradcam", hand_model(), layer="conv").explain(x, target=0)
    torch.testing.assert_close(grad.extras["cam"][0, 0], torch.tensor([[1.75, 3.5], [5.25, 0.0]]))


def test_with_a_linear_head_the_map_is_each_positions_share_of_the_score() -> None:
    # all contributions positive (positive input, weights and activations): no ReLU clipping,
    # so the map sums exactly to the logit minus the bias (Draelos & Carin's guarantee)
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), flat=nn.Flatten(),
                                      fc=nn.Linear(4 * 6 * 6, 3))).double().eval()
    with torch.no_grad():
        model.fc.weight.abs_()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    res = xailab.create("hirescam", model, layer="relu").explain(x, target=1)
    logits = model(x).detach()
    torch.testing.assert_close(res.extras["cam"][:, 0].sum(dim=(-2, -1)), logits[:, 1] - model.fc.bias[1].detach())


def test_it_equals_gradcam_before_global_average_pooling_and_not_elsewhere(images: Tensor) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(TinyBNCNN(), 1).eval().double()  # relu2 -> avgpool -> fc
    x = images[:3].double()
    same = [xailab.create(m, model, layer="relu2").explain(x, target=["top1", "least"]).maps
            for m in ("hirescam", "gradcam")]
    torch.testing.assert_close(same[0], same[1])  # the gradient is constant over positions
    early = [xailab.create(m, model, layer="relu1").explain(x, target="top1").maps for m in ("hirescam", "gradcam")]
    assert (early[0] - early[1]).abs().max() > 1e-3 * early[1].abs().max()


@pytest.mark.reference
@pytest.mark.parametrize("case", ["tiny", "resnet"])
def test_agrees_with_pytorch_grad_cam(case: str) -> None:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    if case == "tiny":
        model: nn.Module = _randomise_bn(TinyBNCNN(), 1).eval()
        layer, x = model.relu1, torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))  # not before GAP
    else:
        import torchvision

        model = torchvision.models.resnet18(num_classes=10).eval()
        layer, x = model.layer2, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    classes = [1, 3, 0][: len(x)]
    ours = xailab.create("hirescam", model, layer=layer, batch_size=16).explain(x, target=torch.tensor(classes))
    raw: list[np.ndarray] = []
    with pgc.HiResCAM(model, [layer]) as cam:
        inner = cam.get_cam_image

        def capture(*args: Any, **kwargs: Any) -> np.ndarray:
            raw.append(inner(*args, **kwargs))
            return raw[-1]

        cam.get_cam_image = capture
        final = cam(x, [ClassifierOutputTarget(c) for c in classes])
    ref = np.maximum(raw[0], 0)  # its base class applies the ReLU after get_cam_image
    mine = ours.extras["cam"][:, 0].numpy()
    scale = float(np.abs(ref).max())
    assert scale > 0 and (ref > 0).mean() > 0.1  # a map with something in it
    np.testing.assert_allclose(mine, ref, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(minmax(ours.maps[:, 0]), final, atol=1e-3)


def minmax(maps: Tensor) -> np.ndarray:
    m = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return (m / (m.amax(dim=(-2, -1), keepdim=True) + 1e-7)).numpy()


def test_its_card_reaches_the_report(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _randomise_bn(TinyBNCNN(), 1).eval()
    run = explain_images(model, torch.randn(2, 3, 16, 16), out=tmp_path / "r", methods=["hirescam"],
                         targets="top1", png=False, log=lambda _: None)
    assert run.manifest["cards"]["hirescam"]["title"] == "HiResCAM"
    page = (build_site([run.path], tmp_path / "site") / "methods.html").read_text(encoding="utf-8")
    assert "HiResCAM" in page and "Draelos, Carin (2020)" in page and "No card in this run" not in page
