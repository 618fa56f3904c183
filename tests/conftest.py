"""Shared fixtures: tiny models whose answers are known, and the shared real data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """Run the suite on one thread (torch and BLAS pools).

    The tests use small models, for which thread start-up costs more than it gains; and on a
    loaded 2-core machine two OpenMP threads made tests 10-100x slower. Restored afterwards.
    """
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


#: modules whose tests must not run beside each other's on another worker: each starts a local Ray cluster
SERIAL_GROUPS = {"tests/test_distributed.py": "ray", "tests/test_distributed_dissect.py": "ray"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs on two workers): a test
    without a group of its own runs on the worker of its module (module fixtures are made once),
    the Ray tests one after another. The examples runner groups its examples by the folder they
    share (:mod:`tests.test_examples_run`). Without ``-n`` the groups change nothing."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            module = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(SERIAL_GROUPS.get(module, module)))


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p}")
    return p


class TinyCNN(nn.Module):
    """conv(3->4) - ReLU - conv(4->6) - ReLU - avgpool - linear(6->5): small, but a real CNN."""

    def __init__(self, in_ch: int = 3, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, 4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class Constant(nn.Module):
    """Logits ``(2, -1)`` whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([2.0, -1.0], dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), 2) + 0 * x.sum()


class TinyBNCNN(nn.Module):
    """conv-BN-ReLU-maxpool-conv-BN-ReLU-avgpool-linear, for BatchNorm and pooling paths."""

    def __init__(self, in_ch: int = 3, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(5, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.pool2(x).flatten(1))


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@pytest.fixture
def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return TinyCNN().eval()


@pytest.fixture
def tiny_bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return _randomise_bn(TinyBNCNN(), 1).eval()


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=g)


@pytest.fixture
def labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 3, 4, 0])
