"""Helpers shared by the metrics tests: a model whose right answer is known, and a run writer.

``PatchNet``: a hand-set CNN whose class-0 logit is the mean intensity inside a fixed patch::

    logit_0(x) = sum_{p in patch} relu(sum_c x_{c,p}) / (3 |patch|),    logit_1 = 0.5

so for non-negative images the evidence for class 0 lies in the patch and nowhere else: a good
attribution method puts all its relevance there; a map that ignores the model cannot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import xailab
from xailab.core.explanation import Explanation
from xailab.runs import Run

SIZE = 16
PATCH = (slice(4, 8), slice(9, 13))  # rows 4..7, columns 9..12: 16 pixels


def patch_mask(n: int, size: int = SIZE) -> torch.Tensor:
    m = torch.zeros(n, size, size, dtype=torch.bool)
    m[:, PATCH[0], PATCH[1]] = True
    return m


class PatchNet(nn.Module):
    """conv 3x3 (centre tap 1 for every channel) - ReLU - linear over the patch (see module)."""

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(size * size, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, 1, 1] = 1.0
            mask = patch_mask(1, size)[0].flatten().float()
            self.fc.weight.zero_()
            self.fc.weight[0] = mask / (3 * mask.sum())
            self.fc.bias.copy_(torch.tensor([0.0, 0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


def patch_images(n: int = 6, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, SIZE, SIZE, generator=g, dtype=torch.float64).to(dtype)


def explain_or_skip(name: str, model: nn.Module, x: torch.Tensor, target: object = 0, **kw: object) -> Explanation:
    """``xailab.create(name, model).explain(...)``, or skip when the method is not registered yet."""
    if name not in xailab.available():
        pytest.skip(f"method {name} is not registered (yet)")
    return xailab.create(name, model, **kw).explain(x, target=target)  # type: ignore[no-any-return]


def save_run(path: Path, images: torch.Tensor, explanations: dict[str, Explanation],
             config: dict[str, object] | None = None, names: list[str] | None = None) -> Run:
    """A run with the layout ``xailab explain`` writes: arrays/images, table images, explanations/<m>/."""
    run = Run.create(path, kind="explain", config=config or {})
    run.write_array("images", images.detach().cpu().float())
    n = len(images)
    run.write_table("images", pd.DataFrame({
        "index": np.arange(n), "name": names or [f"img{i}" for i in range(n)], "label": np.zeros(n, dtype=int),
    }))
    for m, res in explanations.items():
        res.save(run.path / "explanations" / m)
    return run


def as_explanation(maps: torch.Tensor, model: nn.Module, x: torch.Tensor, method: str,
                   target: int = 0, seconds: float = 1.0) -> Explanation:
    """Wrap raw maps ``[N, H, W]`` as an Explanation for class ``target``."""
    with torch.no_grad():
        logits = model(x)
    n = len(x)
    return Explanation(maps=maps[:, None], targets=torch.full((n, 1), target), target_names=(f"class{target}",),
                       logits=logits, method=method, seconds=seconds, evaluations=n)


def test_patchnet_logit_is_the_patch_mean() -> None:
    x = patch_images(3, dtype=torch.float64)
    model = PatchNet().double().eval()
    expected = x[:, :, PATCH[0], PATCH[1]].mean(dim=(1, 2, 3))
    torch.testing.assert_close(model(x)[:, 0], expected)
    y = x.clone()
    y[:, :, :4] = 0  # pixels outside the patch do not matter
    torch.testing.assert_close(model(y)[:, 0], expected)
