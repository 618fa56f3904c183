"""Progress and start-up of the command line: bars that move, light commands that stay light."""

from __future__ import annotations

import pytest

import xailab


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_sampling_methods_count_progress_in_samples(tiny_cnn, images, method: str) -> None:
    explainer = xailab.create(method, tiny_cnn, num_samples=40, batch_size=16)
    res = explainer.explain(images[:3], target=["top1", "top2"], progress=True)
    bar = explainer.progress_bar
    assert bar.unit == "sample"
    assert bar.n == bar.total == res.evaluations - 3  # every perturbed sample; the first pass is not one


def test_other_methods_count_progress_in_images(tiny_cnn, images) -> None:
    explainer = xailab.create("saliency", tiny_cnn)
    explainer.explain(images[:3], progress=True)
    assert explainer.progress_bar.unit == "img" and explainer.progress_bar.n == 3
