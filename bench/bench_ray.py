"""The Ray backend against one process: wall and CPU seconds, Ray's overhead, a projection.

2,000 CIFAR-10 test images (the JPEG tarball of ../shared/data, through ``xailab.data``), the
trained CIFAR ResNet-20 when ../shared/data has it (else the CIFAR CNN of bench/common.py), three
methods (saliency, Grad-CAM, integrated gradients with 8 steps), target top-1, stored into a run
exactly as ``xailab explain`` does. Two runs: one process (torch on all cores) and 2 Ray workers
(one core each) started by this script. Reported: wall seconds of each, CPU seconds (this
process; for Ray also the workers' CPU in their tasks and every Ray process reaped at
shutdown), Ray's start-up (``ray.init`` and actors), its per-shard overhead
((workers x explaining wall - sum of shard seconds) / shards), the per-shard timings and a
projection to N workers from them:

    T(N) = start-up(N) + serial + max(sum(shard s) / N, longest shard) + overhead x shards / N

``serial`` is what the driver does alone (load images, join shards, write tables). The machine is
shared: CPU seconds are the fairer figure when other jobs compete for the two cores.

    python -m bench.bench_ray                  # 2,000 images, shards of 250
    python -m bench.bench_ray --quick          # 200 images, shards of 50
    python -m bench.bench_ray --dissect        # dissection instead: local, local exact-range, Ray
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import SHARED, cifar_cnn
from bench.harness import Row, print_table, save_json

METHODS = ["saliency", "gradcam", "integrated_gradients"]
PARAMS = {"integrated_gradients": {"n_steps": 8}}


def _model_and_images(n: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, str]:
    from xailab.data import load_images

    tar = SHARED / "cifar10-jpg.tar.gz"
    weights = SHARED / "cifar10-resnet" / "resnet20.safetensors"
    if weights.is_file():
        from xailab.models import get_preprocessing, load_model

        model = load_model("resnet20", str(weights)).eval()
        name = "resnet20"
    else:
        model, name = cifar_cnn(), "cifar_cnn"
    prep = get_preprocessing(model) if weights.is_file() else None
    if not tar.is_file():
        sys.exit(f"bench_ray needs {tar}")
    images, labels, _, _ = load_images(f"cifar10:test:{n}", prep, root=str(tar))
    assert labels is not None
    return model, images, labels, name


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _explain(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, out: Path,
             backend: Any) -> float:
    from xailab.jobs.explain_images import explain_images

    t0 = time.perf_counter()
    explain_images(model, images, out=out, methods=METHODS, targets="top1", labels=labels,
                   method_params=PARAMS, batch_size=64, png=False, log=lambda _: None, backend=backend)
    return time.perf_counter() - t0


def project(shard_seconds: list[float], startup: float, serial: float, overhead: float,
            workers: int) -> float:
    """Projected wall seconds on ``workers`` workers (module docstring)."""
    work = max(sum(shard_seconds) / workers, max(shard_seconds))
    return startup + serial + work + overhead * len(shard_seconds) / workers


def project_resized(per_image: dict[str, float], n: int, startup: float, serial: float, overhead: float,
                    workers: int, per_worker: int = 4) -> float:
    """Projected wall seconds when each method is cut into ``per_worker x workers`` shards."""
    size = max(1, math.ceil(n / (per_worker * workers)))
    secs = [per_image[m] * min(size, n - lo) for m in per_image for lo in range(0, n, size)]
    return project(secs, startup, serial, overhead, workers)


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 images, shards of 50")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--shard-size", type=int, default=250)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--local-threads", default="1,2", help="torch threads of the one-process runs (1,2)")
    ap.add_argument("--json", help="write the rows as JSON here")
    ap.add_argument("--dissect", action="store_true", help="time colour dissection of layer1-3 instead")
    args = ap.parse_args(argv)
    n, shard = (200, 50) if args.quick else (args.images, args.shard_size)
    if args.dissect:
        return _dissect(n, shard, args.workers, args.json)

    import xailab.methods  # noqa: F401  (registration outside the timings)

    model, images, labels, name = _model_and_images(n)
    default_threads = torch.get_num_threads()
    case = f"{name} x{n}"
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    rows: list[Row] = []
    try:
        # -- one process (after a warm-up), at each thread count --------------------------------
        _explain(model, images[:8], labels[:8], tmp / "warm", None)
        local: dict[int, tuple[float, float]] = {}
        for threads in [int(t) for t in args.local_threads.split(",")]:
            torch.set_num_threads(threads)
            cpu0 = _cpu()
            wall = _explain(model, images, labels, tmp / f"local{threads}", None)
            local[threads] = (wall, _cpu() - cpu0)
            rows.append(Row(case, "+".join(METHODS), f"local {threads}thr", wall / n,
                            extra={"wall_s": wall, "cpu_s": local[threads][1]}))
        torch.set_num_threads(default_threads)
        best = min(local, key=lambda t: local[t][0])
        local_s = local[best][0]

        # -- Ray ------------------------------------------------------------------------------
        import ray

        from xailab.distributed import RayBackend
        from xailab.runs import Run

        cpu0, child0 = _cpu(), _children_cpu()
        t0 = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        backend = RayBackend(workers=args.workers, shard_size=shard, progress=False, log=lambda _: None)
        t1 = time.perf_counter()
        ray_s = _explain(model, images, labels, tmp / "ray", backend)
        explain_wall = time.perf_counter() - t1
        ray.shutdown()
        ray_total = time.perf_counter() - t0
        driver_cpu = _cpu() - cpu0
        reaped_cpu = _children_cpu() - child0
        run = Run.open(tmp / "ray")
        shards = run.read_table("shards")
        sums = shards.groupby("method")["seconds"].agg(["count", "sum", "mean", "max"])
        # wall of the scheduling loop alone: from the actors' start to the last shard's end
        task_s = float(shards["seconds"].sum())
        startup = init_s + backend.startup_seconds
        serial_local = local_s - float(sum(
            Run.open(tmp / f"local{best}").read_table("explanations").groupby("method")["seconds_per_image"].first() * n))
        loop_wall = _loop_wall(shards)
        overhead = max(0.0, (args.workers * loop_wall - task_s) / len(shards))
        serial_ray = max(0.0, ray_s - backend.startup_seconds - loop_wall)
        rows.append(Row(case, "+".join(METHODS), f"ray x{args.workers}", ray_total / n, extra={
            "wall_s": ray_total, "explain_wall_s": explain_wall, "ray_init_s": init_s,
            "actors_start_s": backend.startup_seconds, "loop_wall_s": loop_wall, "serial_s": serial_ray,
            "shards": len(shards), "shard_task_s": task_s, "overhead_per_shard_s": overhead,
            "driver_cpu_s": driver_cpu, "ray_processes_cpu_s": reaped_cpu,
        }))
        print_table(rows, f"explain {n} CIFAR images x {len(METHODS)} methods: one process vs Ray")
        for threads, (wall, cpu) in local.items():
            print(f"\nlocal {wall:.1f} s wall, {cpu:.1f} s CPU with {threads} torch thread(s)")
        print(f"best local: {best} thread(s); its serial part (not explaining) {serial_local:.1f} s")
        print(f"ray   {ray_total:.1f} s wall = ray.init {init_s:.1f} + actors {backend.startup_seconds:.1f} "
              f"+ shards {loop_wall:.1f} + driver serial {serial_ray:.1f} (+ shutdown); "
              f"ray/best local = {ray_total / local_s:.2f}, without start-up {(ray_total - startup) / local_s:.2f}")
        print(f"      CPU: driver {driver_cpu:.1f} s, shard tasks {task_s:.1f} s wall / "
              f"{float(shards['cpu_seconds'].sum()):.1f} s CPU, "
              f"Ray processes reaped {reaped_cpu:.1f} s")
        print(f"      overhead per shard {overhead:.3f} s over {len(shards)} shards of <= {shard} images")
        print("\nper-shard seconds by method (count, sum, mean, max):")
        print(sums.to_string(float_format=lambda v: f"{v:.2f}"))
        secs = shards["seconds"].tolist()
        print("\nprojection (same per-shard times, one core a worker, start-up as measured):")
        for w in (1, 2, 4, 8, 16, 32, 64):
            t = project(secs, startup, serial_ray, overhead, w)
            print(f"  {w:3d} workers: {t:7.1f} s   speed-up vs local {local_s / t:5.2f}x   "
                  f"{n * len(METHODS) / t:7.1f} image-methods/s")
        per_image = (shards.groupby("method")["seconds"].sum() / n).to_dict()
        print("\nprojection with shards resized to 4 per worker and method (per-image times as measured):")
        for w in (1, 2, 4, 8, 16, 32, 64):
            t = project_resized(per_image, n, startup, serial_ray, overhead, w)
            print(f"  {w:3d} workers: {t:7.1f} s   speed-up vs local {local_s / t:5.2f}x   "
                  f"(shards of {max(1, math.ceil(n / (4 * w)))} images)")
        cpu_image = (shards.groupby("method")["cpu_seconds"].sum() / n).to_dict()
        local_cpu_s = local[best][1]
        print("\nthe same on dedicated cores (each shard takes its CPU seconds; this machine is shared):")
        for w in (1, 2, 4, 8, 16, 32, 64):
            t = project_resized(cpu_image, n, startup, serial_ray, overhead, w)
            print(f"  {w:3d} workers: {t:7.1f} s   speed-up vs local on one dedicated core "
                  f"({local_cpu_s:.0f} s) {local_cpu_s / t:5.2f}x")
        per_img = task_s / (n * len(METHODS))
        cpu_img = float(shards["cpu_seconds"].sum()) / (n * len(METHODS))
        for label, per in (("as measured here", per_img), ("on dedicated cores", cpu_img)):
            print(f"50,000 images x {len(METHODS)} methods, {label} ({per * 1e3:.1f} ms per image-method): "
                  + ", ".join(f"{w} workers ~{50_000 * len(METHODS) * per / w / 60:.1f} min" for w in (2, 8, 32))
                  + " (+ start-up)")
        save_json(rows, args.json)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _dissect(n: int, shard: int, workers: int, json_path: str | None) -> None:
    """Colour dissection of layer1-3 (quantile 0.005, batch 50): one process (default sketch,
    then exact range) against Ray; thresholds compared in bins of the exact range."""
    import ray

    from xailab.concepts.dissection import dissect
    from xailab.concepts.dissection_concepts import ColourConcepts
    from xailab.distributed import RayBackend
    from xailab.distributed.dissection import dissect_on_ray
    from xailab.models import get_preprocessing

    model, images, _, name = _model_and_images(n)
    prep = get_preprocessing(model)
    concepts = ColourConcepts(prep.denormalize if prep is not None else None)
    layers = "layer1,layer2,layer3" if name == "resnet20" else "features.2,features.9"
    torch.set_num_threads(1)
    rows: list[Row] = []
    res: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_ray_dissect_"))
    try:
        for label, kw in (("local", {}), ("local exact-range", {"exact_range": True})):
            cpu0, t0 = _cpu(), time.perf_counter()
            res[label] = dissect(model, images, layers, concepts, batch_size=50, **kw)
            wall = time.perf_counter() - t0
            rows.append(Row(f"{name} x{n}", "dissect colours", label, wall / n,
                            extra={"wall_s": wall, "cpu_s": _cpu() - cpu0}))
        cpu0, child0, t0 = _cpu(), _children_cpu(), time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t0
        backend = RayBackend(workers=workers, shard_size=shard, progress=False, log=lambda _: None)
        res["ray"] = dissect_on_ray(model, images, layers, concepts, backend=backend, run=tmp / "ray",
                                    log=lambda _: None, batch_size=50)
        ray.shutdown()
        wall = time.perf_counter() - t0
        from xailab.runs import Run

        shards = Run.open(tmp / "ray").read_table("shards")
        phases = {str(m): (float(g["seconds"].sum()), _loop_wall(g)) for m, g in shards.groupby("method", sort=False)}
        rows.append(Row(f"{name} x{n}", "dissect colours", f"ray x{workers}", wall / n, extra={
            "wall_s": wall, "ray_init_s": init_s, "driver_cpu_s": _cpu() - cpu0,
            "ray_processes_cpu_s": _children_cpu() - child0, "shard_task_s": sum(t for t, _ in phases.values())}))
        print_table(rows, f"colour dissection of {n} CIFAR images, {layers}: one process vs Ray")
        exact, ray_res = res["local exact-range"], res["ray"]
        same = exact.table.drop(columns=["score", "threshold"]).equals(ray_res.table.drop(columns=["score", "threshold"]))
        print("ray phases (sum of shard seconds / wall from first start to last end): " + ", ".join(
            f"{m} {t:.1f} / {w:.1f} s" for m, (t, w) in phases.items()) + f"; ray.init {init_s:.1f} s")
        print(f"ray = local exact-range: tables {same}, thresholds "
              f"{all(torch.equal(exact.thresholds[k], ray_res.thresholds[k]) for k in exact.thresholds)}")
        for k in exact.thresholds:
            width = (exact.top_values[k].max(1).values.double() - 0).clamp_min(1e-12) / 2048
            diff = (res["local"].thresholds[k].double() - ray_res.thresholds[k].double()).abs() / width
            print(f"  {k}: |default - ray| threshold {float(diff.max()):.2f} bins (max), {float(diff.mean()):.2f} "
                  "(mean), a bin = the unit's max activation / 2048 (post-ReLU: min 0); labelled units "
                  f"{int(res['local'].table.query('layer == @k')['labelled'].sum())} vs "
                  f"{int(ray_res.table.query('layer == @k')['labelled'].sum())}")
        save_json(rows, json_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _loop_wall(shards: Any) -> float:
    """From the first shard's start to the last shard's end (the workers' time stamps)."""
    return float(shards["ended"].max() - shards["started"].min())


if __name__ == "__main__":
    main(sys.argv[1:])
