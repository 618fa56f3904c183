from __future__ import annotations

import pytest
import torch

from xailab.core.errors import TargetError
from xailab.core.targets import parse_target_list, resolve_targets

LOGITS = torch.tensor([[0.1, 3.0, -2.0, 1.0], [5.0, 0.0, 1.0, -1.0]])


def test_named_targets() -> None:
    t, names = resolve_targets(["true", "top1", "top2", "least"], LOGITS, labels=[2, 3])
    assert names == ["true", "top1", "top2", "least"]
    assert t.tolist() == [[2, 1, 3, 2], [3, 0, 2, 3]]


def test_aliases_ints_per_image_and_all() -> None:
    assert resolve_targets("second", LOGITS)[0].tolist() == [[3], [2]]
    assert resolve_targets(1, LOGITS)[0].tolist() == [[1], [1]]
    assert resolve_targets([3, 0], LOGITS)[0].tolist() == [[3], [0]]  # one class per image
    assert resolve_targets(torch.tensor([[0, 1], [2, 3]]), LOGITS)[0].tolist() == [[0, 1], [2, 3]]
    # a flat list that is not one per image is a list of class columns
    assert resolve_targets([0, 1, 2], LOGITS)[0].tolist() == [[0, 1, 2], [0, 1, 2]]
    every, names = resolve_targets("all", LOGITS)
    assert every.shape == (2, 4) and names[-1] == "class3"


@pytest.mark.parametrize(
    ("spec", "labels", "message"),
    [
        (4, None, "out of range: the model has 4 classes"),
        ("true", None, "needs the images' labels"),
        ("true", [0, 9], "label 9 is out of range"),
        ("top5", None, "rank must be between 1 and 4"),
        ("best", None, "unknown target 'best'"),
        (torch.tensor([0, 1, 2]), None, "3 per-image targets for 2 images"),
    ],
)
def test_errors(spec, labels, message) -> None:
    with pytest.raises(TargetError, match=message):
        resolve_targets(spec, LOGITS, labels=labels)


def test_parse_target_list() -> None:
    assert parse_target_list("true, top1,3") == ["true", "top1", 3]
    with pytest.raises(TargetError):
        parse_target_list(" , ")
