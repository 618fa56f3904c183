from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from xailab.core.errors import UnsupportedModelError
from xailab.core.hooks import count_hooks
from xailab.core.structure import inspect_structure, require_supported

from .conftest import TinyBNCNN


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        y += x
        return self.fc(y.mean((2, 3)))


class Reused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.act = nn.Linear(4, 4), nn.Linear(4, 2), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.act(self.a(self.act(x))))


def test_clean_model_has_no_issue() -> None:
    assert inspect_structure(TinyBNCNN(), torch.rand(2, 3, 8, 8)) == []


def test_each_pattern_is_found() -> None:
    kinds = {i.kind for i in inspect_structure(Functional(), torch.rand(1, 3, 4, 4))}
    assert kinds == {"functional_activation", "inplace_op"}
    issues = inspect_structure(Reused(), torch.rand(1, 4))
    assert [(i.kind, i.where) for i in issues] == [("reused_module", "act")]


def test_resnet18_is_refused_with_advice_and_left_clean() -> None:
    model = torchvision.models.resnet18(num_classes=3).train()
    with pytest.raises(UnsupportedModelError, match=r"reused_module.*own activation module"):
        require_supported(model, torch.rand(1, 3, 32, 32), "deeplift")
    assert count_hooks(model) == 0 and model.training


def test_only_requested_kinds_raise() -> None:
    rest = require_supported(Functional(), torch.rand(1, 3, 4, 4), "x", kinds={"reused_module"})
    assert {i.kind for i in rest} == {"functional_activation", "inplace_op"}
