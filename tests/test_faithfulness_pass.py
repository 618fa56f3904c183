"""The shared perturbation pass equals deletion, insertion and faithfulness correlation one by one."""

from __future__ import annotations

import pytest
import torch

from xailab.metrics.faithfulness import (
    deletion,
    faithfulness_all,
    faithfulness_correlation,
    insertion,
)


@pytest.mark.parametrize(("steps", "batch_size", "output"), [(8, 7, "probability"), (1, 64, "logit"), (5, 1, "logit")])
def test_one_pass_equals_the_three_metrics(tiny_cnn, images, steps: int, batch_size: int, output: str) -> None:
    tiny_cnn, images = tiny_cnn.double(), images.double()  # float64: batching changes no digit that matters
    g = torch.Generator().manual_seed(3)
    maps = {"a": torch.randn(6, 16, 16, generator=g), "b": torch.rand(6, 3, 16, 16, generator=g),
            "c": torch.randn(6, 8, 8, generator=g)}  # coarse maps are resized to the images
    targets = {"a": torch.tensor([0, 1, 2, 3, 4, 0]), "b": 2, "c": "top1"}
    kw = {"output": output}
    res = faithfulness_all(tiny_cnn, images, maps, targets, steps=steps, deletion_fill=0.0,
                           insertion_fill="blur", runs=5, subset=0.2, seed=4, batch_size=batch_size, **kw)
    assert list(res) == ["a", "b", "c"]
    for m, a in maps.items():
        d = deletion(tiny_cnn, images, a, targets[m], steps=steps, fill=0.0, **kw)
        i = insertion(tiny_cnn, images, a, targets[m], steps=steps, fill="blur", **kw)
        fc = faithfulness_correlation(tiny_cnn, images, a, targets[m], runs=5, subset=0.2, fill=0.0, seed=4, **kw)
        torch.testing.assert_close(res[m].deletion.scores, d.scores, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res[m].insertion.scores, i.scores, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(res[m].deletion.fractions, d.fractions)
        torch.testing.assert_close(res[m].correlation, fc, rtol=1e-9, atol=1e-12, equal_nan=True)
        assert res[m].deletion.targets.tolist() == d.targets.tolist() == i.targets.tolist()


def test_one_pass_scores_each_perturbed_image_once(tiny_cnn, images) -> None:
    calls: list[int] = []
    handle = tiny_cnn.register_forward_hook(lambda _m, inp, _o: calls.append(len(inp[0])))
    try:
        maps = {m: torch.randn(6, 16, 16) for m in "abc"}
        faithfulness_all(tiny_cnn, images, maps, dict.fromkeys(maps, torch.ones(6, dtype=torch.long)), steps=10, runs=4, batch_size=1000)
    finally:
        handle.remove()
    # per image: itself, all deleted, insertion's start, 4 subsets; per image and map: 2 x 9 steps
    assert sum(calls) == 6 * (3 + 4) + 3 * 6 * 2 * 9
