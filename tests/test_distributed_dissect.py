"""Network dissection on Ray: mergeable sketches, Ray = local exact-range dissection, resume.

One local Ray instance (2 CPUs, no dashboard) and one pool of 2 kept workers serve the module.
Concept sources used on Ray are defined inside functions (pickled by value: Ray's workers need
not import this test package).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from xailab.concepts.dissection import (
    ConceptMasks,
    Dissection,
    QuantileSketch,
    dissect,
    dissect_classes,
    first_pass,
    resolve_layers,
)
from xailab.core.errors import InputError
from xailab.distributed.shards import marker_path, shard_plan
from xailab.runs import Run

N, SHARD, BATCH = 40, 8, 8  # 5 shards; shards hold whole batches: the same forward passes as one process
LAYERS = "0,2"


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 4),
    ).eval()


def _images() -> torch.Tensor:
    return torch.rand(N, 3, 10, 10, generator=torch.Generator().manual_seed(1))


def _concepts(flag: str | None = None) -> Any:
    """Three concepts set by the image's global index (so a shard must pass its offset): concept
    ``i % 3`` on the left half, ``(i + 1) % 3`` on the bottom rows. With ``flag``: images 24..
    raise until that file exists (a job that fails in its IoU phase)."""
    import os

    class IndexConcepts:
        def __init__(self) -> None:
            self.names = ["a", "b", "c"]
            self.categories = ["object"] * 3

        def masks(self, index: torch.Tensor, images: torch.Tensor) -> ConceptMasks:
            if flag is not None and int(index.max()) >= 24 and not os.path.exists(flag):
                raise RuntimeError("concept source not ready")
            lab = torch.full((len(index), 2, 10, 10), -1, dtype=torch.long)
            lab[:, 0, :, :5] = (index % 3)[:, None, None]
            lab[:, 1, 6:, :] = ((index + 1) % 3)[:, None, None]
            return ConceptMasks(layers=lab)

    return IndexConcepts()


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_session: Any) -> Iterator[Any]:
    from xailab.distributed import RayBackend

    backend = RayBackend(workers=2, shard_size=SHARD, keep_workers=True, progress=False, log=lambda _: None)
    yield backend
    backend.close()


def _same(a: Dissection, b: Dissection, class_rtol: float = 0.0) -> None:
    """Thresholds and scores equal (class means to ``class_rtol``), top activations equal."""
    assert list(a.thresholds) == list(b.thresholds)
    for layer in a.thresholds:
        assert torch.equal(a.thresholds[layer], b.thresholds[layer]), layer
        torch.testing.assert_close(b.scores[layer], a.scores[layer], rtol=class_rtol, atol=0.0)
        assert torch.equal(a.top_values[layer], b.top_values[layer]), layer
        distinct = (a.top_values[layer].diff(dim=1) != 0).all(1)  # ties may list images in another order
        assert torch.equal(a.top_images[layer][distinct], b.top_images[layer][distinct]), layer
    cols = ["layer", "unit", "label", "category", "labelled", "runner_up"]
    assert a.table[cols].equals(b.table[cols])


# -- no Ray ---------------------------------------------------------------------------------------
def test_sketches_over_one_range_merge_into_the_sketch_of_all_values() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, 3000, generator=g, dtype=torch.float64).exp()
    whole = QuantileSketch.spanning(values.min(1).values, values.max(1).values, bins=256)
    whole.update(values)
    parts = []
    for chunk in values.split([700, 1100, 1200], dim=1):
        p = QuantileSketch.spanning(values.min(1).values, values.max(1).values, bins=256)
        p.update(chunk)
        parts.append(p)
    merged = parts[0] + parts[1] + parts[2]
    assert torch.equal(merged.counts, whole.counts) and merged.total == whole.total == 3000
    assert torch.equal(merged.max, whole.max)
    assert torch.equal(merged.upper(0.01), whole.upper(0.01))
    assert parts[0].total == 700  # merging made a new sketch
    exact = values.quantile(0.99, dim=1)
    width = (values.max(1).values - values.min(1).values) / 256
    assert ((whole.upper(0.01) - exact).abs() <= width * 1.001).all()  # one bin of the true range
    own = QuantileSketch(4, bins=256)  # bins from its first batch: another range
    own.update(values[:, :50])
    with pytest.raises(InputError, match="same units, bins and range"):
        _ = own + whole
    assert torch.equal((QuantileSketch(4, bins=256) + whole).counts, whole.counts)  # empty + s = s


def test_exact_range_is_within_a_bin_of_the_default_sketch() -> None:
    model, x = _model(), _images()
    modules = resolve_layers(model, LAYERS)
    default = first_pass(model, modules, x, BATCH, 8, 64)
    exact = first_pass(model, modules, x, BATCH, 8, 64, exact_range=True)
    for name in default:
        d, e = default[name].sketch, exact[name].sketch
        assert d.lo is not None and d.hi is not None and e.lo is not None and e.hi is not None
        bound = (d.hi - d.lo) / d.bins + (e.hi - e.lo) / e.bins
        assert ((d.upper(0.005) - e.upper(0.005)).abs() <= bound * 1.001).all(), name
        assert torch.equal(e.lo, exact[name].vmin) and e.total == d.total  # the range = the data's min..max
        assert torch.equal(default[name].top_v, exact[name].top_v)


# -- on Ray ---------------------------------------------------------------------------------------
def test_ray_dissection_is_the_local_exact_range_dissection(pool: Any, tmp_path: Path) -> None:
    from xailab.distributed.dissection import dissect_classes_on_ray, dissect_on_ray

    model, x = _model(), _images()
    kw: dict[str, Any] = {"batch_size": BATCH, "bins": 64, "quantile": 0.02, "threshold": 0.01}
    local = dissect(model, x, LAYERS, _concepts(), exact_range=True, **kw)
    run = Run.create(tmp_path / "ray", kind="dissection")
    res = dissect_on_ray(model, x, LAYERS, _concepts(), backend=pool, run=run, log=lambda _: None, **kw)
    _same(local, res)
    assert res.params["backend"] == "ray" and res.params["exact_range"] is True
    assert sorted({m for m, _ in pool.computed}) == ["dissect.iou", "dissect.range", "dissect.sketch"]
    assert len(pool.computed) == 3 * len(shard_plan(N, SHARD))
    assert not (run.path / "shards").exists()  # the shards are removed once the result is computed
    assert set(run.table_parts("shards")) == {"dissect.range", "dissect.sketch", "dissect.iou"}

    y = torch.arange(N) % 4
    local_c = dissect_classes(model, x, LAYERS, labels=y, exact_range=True, batch_size=BATCH, bins=64)
    labelled = torch.utils.data.TensorDataset(x, y)  # a Dataset: workers read their shard of it
    pool.driver_writes = True  # as on a cluster without a shared filesystem
    try:
        res_c = dissect_classes_on_ray(model, labelled, LAYERS, backend=pool, run=tmp_path / "classes",
                                       log=lambda _: None, batch_size=BATCH, bins=64)
    finally:
        pool.driver_writes = False
    assert Run.open(tmp_path / "classes").manifest["distributed"]["dissect.range"]["shared_filesystem"] is False
    _same(local_c, res_c, class_rtol=1e-6)  # class means: float sums regrouped over shards
    assert {m for m, _ in pool.computed} == {"dissect.range", "dissect.sketch"}  # no IoU phase


def test_a_rerun_skips_complete_shards_and_phases(pool: Any, tmp_path: Path) -> None:
    from xailab.distributed.dissection import dissect_on_ray

    model, x = _model(), _images()
    flag = tmp_path / "ready"
    run = Run.create(tmp_path / "ray", kind="dissection")
    with pytest.raises(RuntimeError, match="concept source not ready"):
        dissect_on_ray(model, x, LAYERS, _concepts(str(flag)), backend=pool, run=run, log=lambda _: None,
                       batch_size=BATCH, bins=64)
    plan = shard_plan(N, SHARD)
    for stage in ("dissect.range", "dissect.sketch"):
        assert all(marker_path(run.path, stage, s).exists() for s in plan), stage
    done = {s.key for s in plan if marker_path(run.path, "dissect.iou", s).exists()}
    assert plan[2].key in done and plan[3].key not in done  # images 16..23 came before the failure
    flag.touch()
    logs: list[str] = []
    res = dissect_on_ray(model, x, LAYERS, _concepts(str(flag)), backend=pool, run=run, log=logs.append,
                         batch_size=BATCH, bins=64)
    assert {m for m, _ in pool.computed} == {"dissect.iou"}  # phases 1 and 2 were complete
    assert {k for _, k in pool.computed} == {s.key for s in plan} - done
    assert any("dissect.range: 5 of 5 shards already complete" in line for line in logs)
    _same(dissect(model, x, LAYERS, _concepts(), exact_range=True, batch_size=BATCH, bins=64), res)


def test_the_cli_dissects_on_ray_as_the_local_exact_range_command(pool: Any, tmp_path: Path) -> None:
    """``xailab dissect --backend ray`` = ``xailab dissect --exact-range``. Runs last: it frees
    the kept workers' CPUs for the command's own."""
    from PIL import Image

    from xailab.cli import main

    pool.close()
    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(12):
        Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    base = ["dissect", "--model", "cifar_cnn", "--random-weights", "--images", str(folder), "--layers", "features.2,features.9",
            "--no-png", "--batch-size", "4", "--threshold", "0.01"]
    torch.manual_seed(0)
    assert main([*base, "--out", str(tmp_path / "local"), "--exact-range"]) == 0
    torch.manual_seed(0)
    assert main([*base, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2",
                 "--shard-size", "4"]) == 0
    a, b = Run.open(tmp_path / "local"), Run.open(tmp_path / "ray")
    ta, tb = a.read_table("dissection"), b.read_table("dissection")
    assert ta.equals(tb)
    assert set(b.manifest["distributed"]) == {"dissect.range", "dissect.sketch", "dissect.iou"}
    assert b.manifest["dissection"]["params"]["backend"] == "ray"
