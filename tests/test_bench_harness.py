"""The benchmark harness itself: same inputs for every implementation, only the work each needs.

Ratios in the closing notes come from these helpers, so they are tested like library code:
the inputs are the layout users have (contiguous NCHW unless ``BENCH_LAYOUT`` says otherwise),
the floor does exactly the passes it claims, the reference CAM call makes no extra scoring pass,
and timing one function as both "ours" and "reference" gives a ratio near 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from bench import common
from bench.bench_gradient import floor_work, interleaved
from torch import nn


class Rows(nn.Module):
    """A linear model that counts the rows it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3 * 4 * 4, 5)
        self.rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows += len(x)
        return self.lin(x.flatten(1))


def test_inputs_are_contiguous_nchw_by_default() -> None:
    assert common.LAYOUT == "nchw"
    x = common.cifar_batch(4)
    assert x.shape == (4, 3, 32, 32) and x.is_contiguous()
    cl = x.contiguous(memory_format=torch.channels_last)
    assert not cl.is_contiguous()  # so the check above can fail: the layouts differ


@pytest.mark.parametrize(("grad", "fwd", "bs"), [(10, 0, 4), (6, 9, 8), (0, 3, 64)])
def test_floor_does_exactly_the_passes_it_claims(grad: int, fwd: int, bs: int) -> None:
    model = Rows()
    x = torch.randn(3, 3, 4, 4)
    floor_work(model, x, grad, fwd, bs)()
    assert model.rows == grad + fwd


def test_reference_cam_makes_no_scoring_pass() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from bench.bench_cam import RowCounter, pgc_run

    model = common.cifar_cnn()
    x = torch.randn(3, 3, 32, 32)
    with RowCounter(model) as counter:
        pgc_run("gradcam", model, model.features[20], x, 64)()
    assert counter.rows == len(x)  # one forward (+ backward) per image, as ours


def test_same_function_as_ours_and_reference_gives_ratio_one() -> None:
    a = torch.randn(96, 96, generator=torch.Generator().manual_seed(0))

    def work() -> torch.Tensor:
        out = a
        for _ in range(60):
            out = torch.tanh(out @ a) / 96
        return out

    best, last = interleaved({"ours": work, "reference": work}, rounds=7, clock="cpu", warmup=1)
    assert torch.equal(last["ours"], last["reference"])
    assert all(math.isfinite(s) and s > 0 for s in best.values())
    assert 0.67 < best["reference"] / best["ours"] < 1.5
