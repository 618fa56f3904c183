"""Agreement of xailab's LRP with zennit's own attributor and with Captum's LRP.

zennit: the same composite and canonizers through ``zennit.attribution.Gradient`` with the
output relevance ``one_hot(target) * logit``; this checks our wiring (targets as rows, batching,
channels). Known difference: zennit's BatchNorm merge leaves the batch norm dividing by
``sqrt(1 + eps)``, ours makes it exactly the identity, so with zennit's own canonizers the two
agree to ~1e-5 relative, and exactly with ours.

Captum: its LRP uses the ε-rule (ε = 1e-9) on conv, linear and pooling layers and passes
relevance through ReLUs, which is our ``lrp_epsilon`` with ``epsilon = stabilizer = 1e-9`` on a
plain sequential CNN. Captum has no residual canonizer: on ResNets its relevance doubles at every
addition (see bench/bench_lrp.py and docs/methods/propagation.md).
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import Tensor, nn
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlus, EpsilonPlusFlat
from zennit.rules import Norm
from zennit.torchvision import ResNetCanonizer

import xailab
from xailab.core.modules import Add
from xailab.methods.propagation.canonizers import MergeBatchNorm

from .conftest import _randomise_bn

pytestmark = pytest.mark.reference


def zennit_lrp(model: nn.Module, composite: object, x: Tensor, targets: Tensor) -> Tensor:
    """``[N, T, C, H, W]``: zennit's Gradient attributor, one call per target column."""
    maps = []
    for t in range(targets.shape[1]):
        with Gradient(model=model, composite=composite) as attributor:
            def start(out: Tensor, col: Tensor = targets[:, t]) -> Tensor:
                return torch.zeros_like(out).scatter(1, col[:, None], out.gather(1, col[:, None]))

            _, rel = attributor(x.clone(), attr_output=start)
        maps.append(rel)
    return torch.stack(maps, dim=1)


def composites(canonizer: type) -> dict[str, object]:
    low, high = torch.full((1, 3, 1, 1), -0.1, dtype=torch.float64), torch.full((1, 3, 1, 1), 1.1, dtype=torch.float64)
    return {
        "epsilon_plus": EpsilonPlus(canonizers=[canonizer()]),
        "epsilon_alpha2_beta1": EpsilonAlpha2Beta1(canonizers=[canonizer()]),
        "epsilon_plus_flat": EpsilonPlusFlat(canonizers=[canonizer()]),
        "epsilon_gamma_box": EpsilonGammaBox(low=low, high=high, canonizers=[canonizer()]),
    }


@pytest.mark.parametrize("name", ["epsilon_plus", "epsilon_alpha2_beta1", "epsilon_plus_flat", "epsilon_gamma_box"])
def test_equals_zennit_gradient_attributor(tiny_bn_cnn: nn.Module, images: Tensor, name: str) -> None:
    model = tiny_bn_cnn.double()
    x = images[:5].double() * 1.2 - 0.1  # inside the box [-0.1, 1.1]
    ours = xailab.create("lrp", model, composite=name, low=-0.1, high=1.1, batch_size=3).explain(
        x, target=["top1", "least", 2])
    exact = zennit_lrp(model, composites(MergeBatchNorm)[name], x, ours.targets)
    torch.testing.assert_close(ours.maps, exact, rtol=1e-10, atol=1e-13)
    theirs = zennit_lrp(model, composites(SequentialMergeBatchNorm)[name], x, ours.targets)
    torch.testing.assert_close(ours.maps, theirs, rtol=1e-4, atol=1e-4 * float(theirs.abs().max()))


def test_equals_zennit_on_resnet18_with_its_resnet_canonizer() -> None:
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(num_classes=10), 4).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = xailab.create("lrp_epsilon_plus", model).explain(x, target=["top1", "least"])
    theirs = zennit_lrp(model, EpsilonPlus(canonizers=[ResNetCanonizer()]), x, ours.targets)
    torch.testing.assert_close(ours.maps, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max()))


def test_equals_zennit_on_the_zoo_resnet20_with_our_add_entry() -> None:
    """The zoo's residual sum is xailab's ``Add``, not zennit's ``Sum``: zennit with our one
    layer-map entry (the z-rule for ``Add``) gives the same relevance, to float64 rounding."""
    from xailab.models import create_model

    torch.manual_seed(0)
    model = _randomise_bn(create_model("resnet20"), 5).double().eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    low, high = float(x.min()), float(x.max())
    lo, hi = torch.full((1, 3, 1, 1), low, dtype=torch.float64), torch.full((1, 3, 1, 1), high, dtype=torch.float64)
    ours_map = [(Add, Norm())]
    for name, theirs_composite in {
        "epsilon_plus": EpsilonPlus(layer_map=ours_map, canonizers=[MergeBatchNorm()]),
        "epsilon_alpha2_beta1": EpsilonAlpha2Beta1(layer_map=ours_map, canonizers=[MergeBatchNorm()]),
        "epsilon_gamma_box": EpsilonGammaBox(low=lo, high=hi, layer_map=ours_map, canonizers=[MergeBatchNorm()]),
    }.items():
        ours = xailab.create("lrp", model, composite=name, low=low, high=high).explain(x, target=["top1", "least"])
        theirs = zennit_lrp(model, theirs_composite, x, ours.targets)
        torch.testing.assert_close(ours.maps, theirs, rtol=1e-10, atol=1e-13)
    plain = zennit_lrp(model, EpsilonPlus(canonizers=[MergeBatchNorm()]), x, ours.targets)  # no rule for Add
    assert not torch.allclose(plain, zennit_lrp(model, EpsilonPlus(layer_map=ours_map, canonizers=[MergeBatchNorm()]),
                                                x, ours.targets))


def test_without_the_resnet_canonizer_relevance_is_not_conserved() -> None:
    """Why the canonizer matters: zennit's rules alone let ``out += identity`` copy relevance."""
    torch.manual_seed(0)
    model = _randomise_bn(torchvision.models.resnet18(num_classes=10), 4).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = xailab.create("lrp_epsilon_plus", model, zero_bias=True).explain(x)
    score = ours.extras["score"]
    torch.testing.assert_close(ours.extras["relevance_sum"], score, rtol=1e-4, atol=0)
    naive = zennit_lrp(model, EpsilonPlus(zero_params=["bias"], canonizers=[SequentialMergeBatchNorm()]),
                       x, ours.targets)
    assert abs(float(naive.sum()) / float(score.sum())) > 2  # relevance multiplied by the skips


def test_equals_captum_lrp_on_a_sequential_cnn(tiny_cnn: nn.Module, images: Tensor) -> None:
    from captum.attr import LRP as CaptumLRP

    model = tiny_cnn.double()
    x = images[:4].double()
    ours = xailab.create("lrp_epsilon", model, epsilon=1e-9, stabilizer=1e-9).explain(x, target=["top1", "least"])
    for t in range(2):
        theirs = CaptumLRP(model).attribute(x.clone().requires_grad_(True), target=ours.targets[:, t])
        torch.testing.assert_close(ours.maps[:, t], theirs.detach(), rtol=1e-7, atol=1e-12)
