"""The Ray backend: same maps as one process, killed workers, resume, and no Ray when local.

One local Ray instance (2 CPUs, no dashboard) serves the whole module. Models are plain
``nn.Sequential`` of torch layers (or classes defined inside a test), so Ray's workers can
unpickle them without importing this test package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from xailab.core.explanation import Explanation
from xailab.distributed.shards import Shard, marker_path, shard_dir, shard_plan
from xailab.jobs.explain_images import explain_images
from xailab.runs import Run

METHODS = ["saliency", "integrated_gradients", "smoothgrad", "gradcam", "rise"]
TARGETS = ["true", "top1"]
N = 14


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5),
    ).eval()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(N, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    return x, torch.arange(N) % 5


def _explain(model: nn.Module, out: Path, backend: Any = None, methods: list[str] = METHODS) -> Run:
    x, y = _data()
    return explain_images(model, x, out=out, methods=methods, targets=TARGETS, labels=y, quick=True,
                          png=False, batch_size=8, log=lambda _: None, backend=backend)


def _backend(**kw: Any) -> Any:
    from xailab.distributed import RayBackend

    kw.setdefault("workers", 2)
    kw.setdefault("shard_size", 4)
    return RayBackend(progress=False, log=lambda _: None, **kw)


@pytest.fixture(scope="module")
def pool_(ray_session: Any) -> Iterator[Any]:
    """One backend whose 2 workers are kept between tests (starting them is most of the time)."""
    backend = _backend(keep_workers=True)
    yield backend
    backend.close()


@pytest.fixture
def pool(pool_: Any) -> Iterator[Any]:
    yield pool_
    pool_.max_retries = 2


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("local") / "run"
    _explain(_model(), out)
    return out


def _same_run(a: Path, b: Path, methods: list[str] = METHODS) -> None:
    """Maps bitwise equal except SmoothGrad (float tolerance: its noise sums regroup at shard edges)."""
    for m in methods:
        ra, rb = Explanation.load(a / "explanations" / m), Explanation.load(b / "explanations" / m)
        assert torch.equal(ra.targets, rb.targets) and torch.equal(ra.logits, rb.logits), m
        if m == "smoothgrad":
            scale = float(ra.maps.abs().max())
            torch.testing.assert_close(rb.maps, ra.maps, rtol=1e-5, atol=1e-6 * scale)
        else:
            assert torch.equal(ra.maps, rb.maps), m
    ta, tb = Run.open(a).read_table("explanations"), Run.open(b).read_table("explanations")
    keep = ["image", "name", "method", "target", "class", "probability"]
    key = ["method", "image", "target"]
    ta = ta[ta["method"].isin(methods)]
    left = ta[keep].sort_values(key).reset_index(drop=True)
    right = tb[keep].sort_values(key).reset_index(drop=True)
    assert len(right) == N * len(TARGETS) * len(methods)  # nothing twice
    assert left.equals(right)


def test_shard_plan_covers_every_image_once() -> None:
    plan = shard_plan(10, 4)
    assert plan == [Shard(0, 4), Shard(4, 8), Shard(8, 10)]
    assert [i for s in plan for i in range(s.lo, s.hi)] == list(range(10))
    assert shard_plan(0, 4) == []
    from xailab.core.errors import InputError

    with pytest.raises(InputError, match="shard size"):
        shard_plan(10, 0)


def test_two_workers_give_the_single_process_maps(pool: Any, local_run: Path, tmp_path: Path) -> None:
    backend = pool
    run = _explain(_model(), tmp_path / "ray", backend)
    _same_run(local_run, run.path)
    assert len(backend.computed) == len(METHODS) * 4  # 4 shards of <= 4 images, each once
    assert not (run.path / "shards").exists()  # joined into explanations/, shards removed
    dist = run.manifest["distributed"]["explain"]
    assert dist["workers"] == 2 and dist["shards"] == 4 and dist["shared_filesystem"] is True
    timings = run.read_table("shards")
    assert len(timings) == 4 * len(METHODS) and (timings["seconds"] > 0).all()
    assert set(timings["pid"]) and len(set(timings["worker"])) <= 2


def test_the_driver_writes_when_workers_do_not_see_the_run(pool: Any, local_run: Path, tmp_path: Path) -> None:
    pool.driver_writes = True  # what happens on a cluster without a shared filesystem
    try:
        run = _explain(_model(), tmp_path / "ray", pool, methods=["saliency", "rise"])
    finally:
        pool.driver_writes = False
    assert run.manifest["distributed"]["explain"]["shared_filesystem"] is False
    _same_run(local_run, run.path, ["saliency", "rise"])


def _killer(flag: Path, sentinel: float) -> nn.Module:
    """The test model, but the first forward pass that sees the sentinel image ends its process."""

    class Killer(nn.Module):  # defined here: pickled by value, so Ray's workers need no import
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.flag = str(flag)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if (x[:, 0, 0, 0] == sentinel).any() and not os.path.exists(self.flag):
                open(self.flag, "w").close()
                os._exit(1)  # a killed worker: no exception, no cleanup
            return self.inner(x)

    return Killer(_model()).eval()


SENTINEL = 0.123456


def _sentinel_data() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _data()
    x[9, 0, 0, 0] = SENTINEL  # image 9: shard [8, 12)
    return x, y


def _explain_s(model: nn.Module, out: Path, backend: Any = None) -> Run:
    x, y = _sentinel_data()
    return explain_images(model, x, out=out, methods=["saliency", "rise"], targets=TARGETS, labels=y,
                          quick=True, png=False, batch_size=8, log=lambda _: None, backend=backend)


def test_a_killed_worker_is_replaced_and_its_shard_redone(pool: Any, tmp_path: Path) -> None:
    flag = tmp_path / "killed"
    flag.touch()  # the local reference must not die
    ref = _explain_s(_killer(flag, SENTINEL), tmp_path / "local")
    flag.unlink()
    backend = pool
    backend.max_retries = 1
    run = _explain_s(_killer(flag, SENTINEL), tmp_path / "ray", backend)
    assert flag.exists()  # a worker did die
    _same_run(ref.path, run.path, ["saliency", "rise"])
    keys = [k for _, k in backend.computed]
    assert sorted(backend.computed) == sorted(set(backend.computed))  # every shard stored once
    assert len(keys) == 2 * 4


def test_a_job_whose_worker_dies_resumes_complete_and_identical(pool: Any, tmp_path: Path) -> None:
    from xailab.distributed import ClusterError

    flag = tmp_path / "killed"
    flag.touch()
    ref = _explain_s(_killer(flag, SENTINEL), tmp_path / "local")
    flag.unlink()
    out = tmp_path / "ray"
    with pytest.raises(ClusterError, match=r"died 1 times.*run the same command again"):
        pool.max_retries = 0
        _explain_s(_killer(flag, SENTINEL), out, pool)
    dead = Shard(8, 12)
    # the shard being explained when its worker died has no marker (the other method's may have)
    assert not all(marker_path(out, m, dead).exists() for m in ("saliency", "rise"))
    complete = {(m, p.name[:-5]) for m in ("saliency", "rise") for p in (out / "shards" / m).glob("*.done")}
    # what a worker killed between its maps and its marker leaves: maps nobody may read. Written
    # only where the shard has no marker: the other method's worker may have finished this shard
    # after the kill (the flag then lets it pass), and a finished shard is not what this simulates
    unfinished = next(m for m in ("rise", "saliency") if not marker_path(out, m, dead).exists())
    shard_dir(out, unfinished, dead).mkdir(parents=True, exist_ok=True)
    (shard_dir(out, unfinished, dead) / "manifest.json").write_text("{half")
    backend = pool  # its workers were stopped when the job gave up: two fresh ones
    backend.max_retries = 2
    run = _explain_s(_killer(flag, SENTINEL), out, backend)
    assert not set(backend.computed) & complete  # finished shards were skipped
    assert set(backend.computed) | complete == {(m, s.key) for m in ("saliency", "rise") for s in shard_plan(N, 4)}
    _same_run(ref.path, run.path, ["saliency", "rise"])


def test_rerun_skips_complete_shards_and_redoes_incomplete_ones(pool: Any, local_run: Path,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "ray"
    x, y = _data()
    run = Run.create(out, kind="explain")
    from xailab.jobs.explain_images import method_kwargs, method_spec

    methods = {m: method_kwargs(m, {}, None, True) for m in ("saliency", "rise")}
    specs = {m: method_spec(kw, 8, 0) for m, kw in methods.items()}
    first = pool
    first(_model(), x, run=run, methods=methods, specs=specs, targets=TARGETS, labels=y, batch_size=8, seed=0)
    assert len(first.computed) == 8
    kept = list(pool._pool)
    # undo two shards: one lost its marker, one has a marker of another spec (other parameters)
    marker_path(out, "saliency", Shard(4, 8)).unlink()
    stale = marker_path(out, "rise", Shard(12, 14))
    stale.write_text(json.dumps({**json.loads(stale.read_text()), "spec": "other"}))
    second = pool
    res = second(_model(), x, run=run, methods=methods, specs=specs, targets=TARGETS, labels=y,
                 batch_size=8, seed=0)
    assert pool._pool == kept  # keep_workers: the same two actors served both calls
    assert sorted(second.computed) == [("rise", "00000012-00000014"), ("saliency", "00000004-00000008")]
    for m in methods:
        assert torch.equal(res[m].maps, Explanation.load(local_run / "explanations" / m).maps)


def test_shard_faithfulness_is_one_faithfulness_all_pass_per_shard() -> None:
    """Shards of 4 images, all methods in one pass each, give the one-process pass's numbers
    (the correlation's draws keyed by the global index); no Ray needed."""
    from xailab.distributed.faithfulness import shard_faithfulness
    from xailab.metrics.faithfulness import faithfulness_all

    model, (x, _) = _model(), _data()
    g = torch.Generator().manual_seed(3)
    maps = {"a": torch.rand(N, 12, 12, generator=g), "b": torch.rand(N, 12, 12, generator=g)}
    tgts = {"a": torch.arange(N) % 5, "b": (torch.arange(N) + 1) % 5}
    cfg = {"steps": 4, "deletion_fill": 0.0, "insertion_fill": "blur", "faithfulness_runs": 4,
           "faithfulness_subset": 0.1, "seed": 2, "batch_size": 16}
    whole = faithfulness_all(model, x, maps, tgts, steps=4, runs=4, subset=0.1, seed=2, batch_size=16)
    shards = [shard_faithfulness(model, x[lo:lo + 4], {m: v[lo:lo + 4] for m, v in maps.items()},
                                 {m: v[lo:lo + 4] for m, v in tgts.items()}, lo, cfg) for lo in range(0, N, 4)]
    for m in maps:
        for key, got in (("deletion_auc", whole[m].deletion.auc), ("insertion_auc", whole[m].insertion.auc),
                         ("faithfulness_corr", whole[m].correlation), ("deletion_curve", whole[m].deletion.scores)):
            joined = torch.from_numpy(np.concatenate([sh[m][key] for sh in shards]))
            torch.testing.assert_close(joined, got, rtol=1e-6, atol=1e-7, equal_nan=True, msg=f"{m} {key}")


def test_faithfulness_on_two_workers_matches_compare_in_one_process(pool: Any, local_run: Path,
                                                                     tmp_path: Path) -> None:
    import shutil

    from xailab.distributed.faithfulness import faithfulness_on_ray, global_subsets
    from xailab.jobs.compare import compare_run
    from xailab.metrics.faithfulness import random_subsets
    from xailab.metrics.scoreboard import CompareSettings

    assert torch.equal(global_subsets(5, 9, 64, 3, 7, seed=2), random_subsets(9, 64, 3, 7, seed=2)[5:9])
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(local_run, a)
    shutil.copytree(local_run, b)
    cfg = CompareSettings(steps=4, faithfulness_runs=4, sanity=False, batch_size=16)
    methods = ["saliency", "gradcam"]
    compare_run(a, _model(), methods=methods, settings=cfg, figures_on=False, log=lambda _: None)
    backend = pool
    assert faithfulness_on_ray(Run.open(b), _model(), cfg, backend=backend, methods=methods,
                               log=lambda _: None) == methods
    # one task a shard for both methods (one faithfulness_all pass), not one a (method, shard)
    assert sorted(backend.computed) == [("saliency,gradcam", s) for s in (
        "00000000-00000004", "00000004-00000008", "00000008-00000012", "00000012-00000014")]
    logs: list[str] = []
    compare_run(b, _model(), methods=methods, settings=cfg, figures_on=False, log=logs.append)
    assert sum("faithfulness already in the run, skipped" in line for line in logs) == 2
    for table in ("faithfulness", "faithfulness_curves", "scoreboard"):
        ta, tb = Run.open(a).read_table(table), Run.open(b).read_table(table)
        assert list(ta.columns) == list(tb.columns) and len(ta) == len(tb), table
        num = ta.select_dtypes("number").columns
        assert (ta.drop(columns=num) == tb.drop(columns=num)).all().all(), table
        torch.testing.assert_close(torch.tensor(tb[num].to_numpy(float)), torch.tensor(ta[num].to_numpy(float)),
                                   rtol=1e-5, atol=1e-6, equal_nan=True)
    assert not (b / "shards").exists()


def test_bad_address_is_a_clear_error(tmp_path: Path) -> None:
    from xailab.distributed import ClusterError

    with pytest.raises(ClusterError, match=r"no Ray cluster answers at 127\.0\.0\.1:1 .*ray start --head"):
        _explain(_model(), tmp_path / "a", _backend(address="127.0.0.1:1"), methods=["saliency"])
    with pytest.raises(ClusterError, match="expects host:port"):
        _explain(_model(), tmp_path / "b", _backend(address="headnode"), methods=["saliency"])


def test_ray_flags_need_the_ray_backend(capsys: pytest.CaptureFixture[str]) -> None:
    from xailab.cli import build_parser
    from xailab.core.errors import InputError
    from xailab.distributed.options import backend_from_args

    base = ["explain", "--model", "m", "--images", "i", "--methods", "saliency", "--out", "o"]
    args = build_parser().parse_args([*base, "--workers", "2"])
    with pytest.raises(InputError, match="--workers needs --backend ray"):
        backend_from_args(args)
    args = build_parser().parse_args([*base, "--backend", "ray", "--workers", "3", "--shard-size", "64"])
    backend = backend_from_args(args)
    assert (backend.workers, backend.shard_size) == (3, 64)
    from xailab.cli import main

    assert main(["evaluate", "--model", "cifar_cnn", "--data", "cifar10", "--backend", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--backend ray applies to an explain run" in err


def test_a_local_explain_never_imports_ray(tmp_path: Path) -> None:
    code = f"""
import sys, torch
from torch import nn
from xailab.cli import build_parser
from xailab.distributed.options import backend_from_args
import xailab.distributed, xailab.distributed.shards
from xailab.jobs.explain_images import explain_images
args = build_parser().parse_args(["explain", "--model", "m", "--images", "i", "--methods", "saliency", "--out", "o"])
assert backend_from_args(args) is None
m = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(3))
x = torch.rand(2, 3, 8, 8); m(x)
explain_images(m, x, out={str(tmp_path / "run")!r}, methods=["saliency"], targets="top1", png=False)
print("ray" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_named_settings_of_one_method_run_on_ray(pool: Any, tmp_path: Path) -> None:
    """``NAME=METHOD`` entries reach the workers as their method and are stored under NAME."""
    methods = ["rise_a=rise", "rise_b=rise", "saliency"]
    params = {"rise_a": {"n_masks": 8}, "rise_b": {"n_masks": 16}}
    x, y = _data()
    local = explain_images(_model(), x, out=tmp_path / "local", methods=methods, method_params=params,
                           targets=TARGETS, labels=y, png=False, batch_size=8, log=lambda _: None)
    ray_run = explain_images(_model(), x, out=tmp_path / "ray", methods=methods, method_params=params,
                             targets=TARGETS, labels=y, png=False, batch_size=8, log=lambda _: None, backend=pool)
    for m in ("rise_a", "rise_b", "saliency"):
        a = Explanation.load(local.path / "explanations" / m)
        b = Explanation.load(ray_run.path / "explanations" / m)
        torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)
    assert Explanation.load(ray_run.path / "explanations" / "rise_b").params["n_masks"] == 16


def test_the_cli_runs_explain_and_compare_on_ray(pool_: Any, tmp_path: Path) -> None:
    """``xailab explain --backend ray`` = the local command's run; ``evaluate RUN --backend ray``
    (= compare) computes faithfulness on Ray. Runs last: it frees the kept workers' CPUs."""
    from PIL import Image

    from xailab.cli import main

    pool_.close()  # the command starts its own workers on the module's Ray (2 CPUs)
    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(3)
    for i in range(6):
        px = (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(px).save(folder / f"im{i}.png")
    base = ["explain", "--model", "cifar_cnn", "--random-weights", "--images", str(folder), "--methods", "saliency,gradcam",
            "--targets", "top1,least", "--no-png", "--batch-size", "8"]
    torch.manual_seed(0)  # the same random weights in both commands
    assert main([*base, "--out", str(tmp_path / "local")]) == 0
    torch.manual_seed(0)
    assert main([*base, "--out", str(tmp_path / "ray"), "--backend", "ray", "--workers", "2",
                 "--shard-size", "4"]) == 0
    for m in ("saliency", "gradcam"):
        a = Explanation.load(tmp_path / "local" / "explanations" / m)
        b = Explanation.load(tmp_path / "ray" / "explanations" / m)
        assert torch.equal(a.maps, b.maps) and torch.equal(a.targets, b.targets), m
    assert main(["evaluate", "--run", str(tmp_path / "ray"), "--backend", "ray", "--workers", "1",
                 "--shard-size", "4", "--device", "cpu"]) == 0
    run = Run.open(tmp_path / "ray")
    faith = run.read_table("faithfulness")
    assert sorted(faith.groupby("method").size().items()) == [("gradcam", 6), ("saliency", 6)]
    assert set(run.manifest["distributed"]) == {"explain", "faithfulness"}
    assert not (tmp_path / "ray" / "shards").exists()


@pytest.mark.parametrize("name", ["smoothgrad", "rise", "gradient_shap"])
def test_a_shard_with_its_index_base_draws_what_the_whole_call_draws(name: str) -> None:
    """No Ray needed: explaining images 3..5 as their own call with ``set_index_base(3)`` gives
    the rows 3..5 of one call over all images (what makes shards identical to one process)."""
    import xailab

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(16, 3)).double().eval()
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64)
    whole = xailab.create(name, model, seed=5, batch_size=64, **xailab.create(name, model).quick_params).explain(x)
    shard = xailab.create(name, model, seed=5, batch_size=64, **xailab.create(name, model).quick_params)
    shard.set_index_base(3)
    part = shard.explain(x[3:])
    torch.testing.assert_close(part.maps, whole.maps[3:], rtol=1e-6, atol=1e-9)
    unshifted = xailab.create(name, model, seed=5, batch_size=64, **xailab.create(name, model).quick_params)
    assert not torch.allclose(unshifted.explain(x[3:]).maps, whole.maps[3:])

