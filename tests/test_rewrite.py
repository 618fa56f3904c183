"""core.rewrite: functional activations become modules, so DeepLIFT and LRP explain such models exactly."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xailab
from xailab.core.errors import UnsupportedModelError
from xailab.core.rewrite import hook_friendly


class FunctionalCNN(nn.Module):
    """A Fashion-MNIST CNN as public repositories write it: F.relu, F.max_pool2d, x.relu()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 16), nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc2(self.fc1(torch.flatten(x, 1)).relu())


class ModuleCNN(FunctionalCNN):
    """The same network with a module per activation and pool (its hook-friendly twin)."""

    def __init__(self) -> None:
        super().__init__()
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.pool1, self.pool2 = nn.MaxPool2d(2), nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc2(self.relu3(self.fc1(torch.flatten(x, 1))))


class Branchy(FunctionalCNN):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0.5:  # depends on the input's values: fx cannot trace it
            x = x.flip(-1)
        return super().forward(x)


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act, self.fc = nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.conv(x))
        y.add_(1.0)
        return self.fc(self.act(y - 1.5).mean((2, 3)))


def functional_pair(dtype: torch.dtype = torch.float64) -> tuple[FunctionalCNN, ModuleCNN]:
    torch.manual_seed(0)
    f = FunctionalCNN()
    for bn in (f.bn1, f.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    m = ModuleCNN()
    m.load_state_dict(f.state_dict())
    return f.to(dtype).eval(), m.to(dtype).eval()


def test_rewrite_keeps_outputs_and_names_the_new_modules() -> None:
    f, _ = functional_pair()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    rw = hook_friendly(f)
    x = torch.rand(3, 1, 16, 16, dtype=torch.float64)
    assert torch.equal(rw.model(x), f(x))
    assert {"bn1_relu", "bn2_relu", "fc1_relu"} <= set(rw.added)
    assert rw.added["bn2_relu"] == "bn2"
    assert sum(isinstance(m, nn.MaxPool2d) for m in rw.model.modules()) == 2
    assert all(torch.equal(before[k], v) for k, v in f.state_dict().items())  # user's model untouched
    assert not any(isinstance(m, nn.ReLU) for m in f.modules())
    r = hook_friendly(Reused())
    assert any("in-place" in c for c in r.changes) and any("use 2" in c for c in r.changes)
    acts = [m for m in r.model.modules() if isinstance(m, nn.ReLU)]
    assert len(acts) == 2 and not any(a.inplace for a in acts)
    model = Reused()
    assert model.act.inplace  # the user's module keeps its flag


def test_deeplift_on_functional_relu_sums_to_delta_where_captum_does_not() -> None:
    """Summation-to-delta to 1e-5 (float64) on the F.relu CNN, equal to the module twin's maps;
    Captum's DeepLift on the same model silently uses the plain gradient at F.relu/F.max_pool2d."""
    from captum.attr import DeepLift

    f, m = functional_pair()
    x = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    ours = xailab.create("deeplift", f, baseline="black").explain(x)
    twin = xailab.create("deeplift", m, baseline="black").explain(x)
    assert float(ours.extras["delta"].abs().max()) < 1e-5
    torch.testing.assert_close(ours.maps, twin.maps)
    t = ours.targets[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = DeepLift(f).attribute(x, baselines=torch.zeros_like(x), target=t)
    gap = f(x).gather(1, t[:, None])[:, 0] - f(torch.zeros_like(x)).gather(1, t[:, None])[:, 0]
    captum_error = (theirs.flatten(1).sum(1) - gap).abs().max().detach()
    assert float(captum_error) > 1e3 * float(ours.extras["delta"].abs().max()) + 1e-6


def test_lrp_on_functional_relu_equals_the_module_twin_and_conserves() -> None:
    f, m = functional_pair(torch.float32)
    x = torch.rand(4, 1, 16, 16)
    kw = {"zero_bias": True, "epsilon": 1e-9}
    ours = xailab.create("lrp_epsilon_plus", f, **kw).explain(x)
    twin = xailab.create("lrp_epsilon_plus", m, **kw).explain(x)
    torch.testing.assert_close(ours.maps, twin.maps, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours.extras["relevance_sum"], ours.extras["score"], rtol=1e-3, atol=1e-5)


def test_untraceable_model_names_the_line_and_the_fix() -> None:
    f, _ = functional_pair(torch.float32)
    model = Branchy()
    model.load_state_dict(f.state_dict())
    with pytest.raises(UnsupportedModelError, match=r"test_rewrite.py:\d+ \(if x.mean\(\) > 0.5:.*To fix"):
        xailab.create("deeplift", model.eval()).explain(torch.rand(1, 1, 16, 16))
