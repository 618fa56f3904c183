"""Agreement between maps: top regions and IoU, correlations, SSIM, tables, histograms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xailab.core.errors import InputError
from xailab.metrics import agreement as A
from xailab.metrics.distribution import histogram, scatter_data, summary
from xailab.metrics.maps import pixel_maps, rankdata
from xailab.metrics.ssim import ssim, structural_similarity


def _grid(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)[None]


def test_top_region_keeps_exactly_k_pixels_ties_by_index() -> None:
    a = torch.ones(2, 4, 4, dtype=torch.float64)
    a[0, 0, 0], a[0, 3, 3] = 5.0, 4.0
    m = A.top_region(a, top=2 / 16)
    assert m.sum(dim=(1, 2)).tolist() == [2, 2]
    assert m[0, 0, 0] and m[0, 3, 3]
    assert m[1, 0, 0] and m[1, 0, 1]  # all tied: the first pixels in reading order


def test_iou_by_hand() -> None:
    a = _grid([[4, 3, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    b = _grid([[0, 3, 4, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    # top 2 of a = {(0,0),(0,1)}, of b = {(0,1),(0,2)}: 1 shared of 3
    assert A.iou(a, b, top=2 / 16).item() == pytest.approx(1 / 3)
    assert A.iou(a, a, top=2 / 16).item() == 1.0
    # threshold on max-normalised maps: a >= 0.5 -> {(0,0),(0,1)}; b >= 0.9 -> {(0,2)}
    assert A.iou(a, b, threshold=0.9).item() == 0.0
    assert A.iou(a, b, threshold=0.7).item() == pytest.approx(1 / 3)


def test_iou_sign_handling_is_explicit() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 8, 8, generator=g, dtype=torch.float64)
    assert torch.equal(A.iou(a, -a, mode="abs"), torch.ones(3, dtype=torch.float64))
    # the top 10 % of a and of -a are its largest and smallest values: disjoint
    assert torch.equal(A.iou(a, -a, mode="signed"), torch.zeros(3, dtype=torch.float64))
    pos = A.top_region(a, top=0.9, mode="positive")  # never a pixel <= 0, so fewer than 90 %
    assert (a[pos] > 0).all() and torch.equal(pos, a > 0)


def test_iou_with_a_given_mask_and_another_resolution() -> None:
    cam = torch.zeros(1, 4, 4)
    cam[0, 0, 0] = 1.0  # a coarse map: its top cell upsampled covers the top-left 4x4 block
    g = torch.Generator().manual_seed(1)
    fine = torch.rand(1, 16, 16, generator=g) * 0.1
    fine[0, :4, :4] += 1.0
    assert A.iou(cam, fine, top=1 / 16).item() == 1.0
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, :2, :2] = True  # a given mask at half resolution: the same 4x4 block
    assert A.iou(mask, fine, top=1 / 16).item() == 1.0
    assert A.iou(mask, fine, top=2 / 16).item() == 0.5


def test_iou_of_two_empty_regions_is_nan() -> None:
    z = torch.zeros(1, 4, 4)
    assert torch.isnan(A.iou(z, z, threshold=0.5)).all()


def test_rankdata_averages_ties() -> None:
    x = torch.tensor([[3.0, 1.0, 3.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    assert rankdata(x).tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5]]


def test_correlations_by_hand() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]]).view(1, 2, 2)
    b = torch.tensor([[1.0, 4.0, 9.0, 16.0]]).view(1, 2, 2)
    assert A.spearman(a, b).item() == pytest.approx(1.0)
    assert A.kendall(a, b).item() == pytest.approx(1.0)
    assert A.pearson(a, b).item() < 1.0
    assert A.spearman(a, -b, mode="signed").item() == pytest.approx(-1.0)
    assert torch.isnan(A.pearson(a, torch.ones(1, 2, 2)))  # a flat map has no correlation


def test_ssim_properties() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.rand(3, 12, 12, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ssim(a, a), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, 5 * a), torch.ones(3, dtype=torch.float64))  # units do not matter
    noisy = a + 0.5 * torch.rand(3, 12, 12, generator=g, dtype=torch.float64)
    assert (ssim(a, noisy) < 1).all()
    with pytest.raises(InputError, match="smaller than the SSIM window"):
        structural_similarity(a[:, :5, :5], a[:, :5, :5], 1.0)


def test_pairwise_matrix_and_ranking() -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.rand(4, 8, 8, generator=g)
    other = base.clone()
    other[2] = torch.rand(8, 8, generator=g)  # image 2: the methods disagree
    maps = {"a": base, "b": base.clone(), "c": other}
    table = A.pairwise(maps, top=0.25)
    assert len(table) == 3 * 4
    assert set(table.columns) >= {"image", "method_a", "method_b", "iou", "spearman", "pearson", "ssim"}
    mat = A.agreement_matrix(table, "iou")
    assert list(mat.index) == ["a", "b", "c"] and mat.loc["a", "b"] == 1.0 and mat.loc["b", "a"] == 1.0
    assert mat.loc["a", "c"] < 1.0 and (np.diag(mat) == 1).all()
    rank = A.image_ranking(table, "iou", names=["w", "x", "y", "z"])
    assert rank.loc[0, "image"] == 2 and rank.loc[0, "name"] == "y"
    assert rank.loc[0, "least_b"] == "c"
    assert (rank.loc[1:, "mean"] == 1.0).all()


def test_pairwise_refuses_bad_input() -> None:
    with pytest.raises(InputError, match="at least two methods"):
        A.pairwise({"a": torch.rand(2, 4, 4)})
    with pytest.raises(InputError, match="different numbers of images"):
        A.pairwise({"a": torch.rand(2, 4, 4), "b": torch.rand(3, 4, 4)})
    with pytest.raises(InputError, match="unknown agreement metric"):
        A.pairwise({"a": torch.rand(2, 4, 4), "b": torch.rand(2, 4, 4)}, metrics=["jaccard"])
    with pytest.raises(InputError, match=r"\[N, H, W\] or \[N, C, H, W\]"):
        pixel_maps(torch.rand(2, 3, 4, 4, 4))
    with pytest.raises(InputError, match="must lie in"):
        A.iou(torch.rand(1, 4, 4), torch.rand(1, 4, 4), top=0.0)


def test_histogram_counts_by_hand() -> None:
    a = torch.tensor([0.1, 0.3, 0.5, 1.0]).view(1, 2, 2)
    h = histogram(a, bins=4, low=0.2)
    assert h.kept == 0.75
    np.testing.assert_allclose(h.edges, [0.2, 0.4, 0.6, 0.8, 1.0])
    assert h.counts.tolist() == [1, 1, 0, 1]
    assert h.density.sum() * 0.2 == pytest.approx(1.0)
    s = histogram(torch.tensor([-1.0, -0.5, 0.1, 0.8]).view(1, 2, 2), bins=2, low=0.2, mode="signed")
    assert s.counts.sum() == 3 and s.edges[0] == -1.0 and s.edges[-1] == 1.0


def test_scatter_data_pairs_the_same_pixels() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.rand(3, 8, 8, generator=g)
    x, y = scatter_data(a, 2 * a, max_points=50, seed=1)
    assert len(x) == 50
    np.testing.assert_allclose(x, y, rtol=1e-6)  # both normalised by their max
    x2, _ = scatter_data(a, 2 * a, max_points=50, seed=1)
    np.testing.assert_array_equal(x, x2)


def test_summary_of_a_concentrated_map() -> None:
    a = torch.zeros(1, 10, 10)
    a[0, 0, :10] = 1.0  # all mass in 10 % of the pixels
    s = summary(a)
    assert s["top10_mass"] == pytest.approx(1.0)
    assert s["gini"] == pytest.approx(0.9)
    assert s["negative_share"] == 0.0


def test_pairwise_equals_the_single_metrics_whatever_the_chunk() -> None:
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(5, 12, 12, generator=g), torch.rand(5, 3, 12, 12, generator=g)
    cam = torch.rand(5, 4, 4, generator=g)  # another resolution: compared at 12 x 12
    maps = {"a": a, "b": b, "cam": cam}
    table = A.pairwise(maps, metrics=list(A.METRICS), top=0.2, chunk=2)
    whole = A.pairwise(maps, metrics=list(A.METRICS), top=0.2)
    np.testing.assert_allclose(table[list(A.METRICS)].to_numpy(), whole[list(A.METRICS)].to_numpy(), rtol=1e-12)
    for ka, kb in [("a", "b"), ("a", "cam"), ("b", "cam")]:
        rows = table[(table.method_a == ka) & (table.method_b == kb)]
        for metric in A.METRICS:
            single = A.score(metric, maps[ka], maps[kb], top=0.2).numpy()
            np.testing.assert_allclose(rows[metric].to_numpy(), single, rtol=1e-10, err_msg=f"{metric} {ka} {kb}")
    masks = {"lime": A.top_region(a, top=0.2), "b": b}
    t = A.pairwise(masks, top=0.2)
    assert np.isnan(t["spearman"]).all() and (t["iou"] >= 0).all()
