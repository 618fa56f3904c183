"""Explain a run's images on a Ray cluster: actors that hold the model once, one shard at a time.

The only module of xailab that imports :mod:`ray` (and only when a job asks for it). A job is
the list of (method, shard) pairs not yet complete in the run (see :mod:`.shards`). The driver
starts ``workers`` actors, each holding the model once (on its GPU when it has one), puts each
shard's images into Ray's object store once, and keeps every actor busy with two tasks (the
next is queued while one runs). A worker explains its shard with the method's own batching and
writes the shard into the run itself when it sees the run directory (a shared filesystem);
otherwise it returns the maps and the driver writes them. One progress bar counts images over
all methods. When every shard of a method is complete the driver joins them into the run's
ordinary layout.

Faults: an actor that dies (a killed process, a lost node) has its shards redone on a fresh
actor, each at most ``max_retries`` times; an error raised by a method stops the job with that
error. Whatever shards finished are kept, so a rerun of the same command resumes.

    backend = RayBackend(workers=2, shard_size=256)
    explain_to_run(model, images, out="runs/x", methods=["saliency"], targets="top1", backend=backend)
"""

from __future__ import annotations

import copy
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import XailabError
from xailab.core.explanation import Explanation
from xailab.core.registry import METHODS
from xailab.core.targets import TargetSpec
from xailab.distributed.shards import (
    Shard,
    is_complete,
    merge,
    remove_saved,
    shard_plan,
    timings,
    write_shard,
)
from xailab.runs.store import Run, atomic_write_text

#: tasks kept queued on each actor (one running, one waiting: no idle gap between shards)
DEPTH = 2


class ClusterError(XailabError):
    """Ray is missing, the cluster cannot be reached, or its workers keep dying."""


class ShardWorker:
    """A Ray actor: holds the model of the current job once, runs one (method, shard) per call."""

    def __init__(self, threads: int, index: int) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = torch.device("cuda" if torch.cuda.is_available() and _has_gpu() else "cpu")
        self.index = index
        self.model: nn.Module = nn.Identity()
        self.run_path = Path(".")
        self.shared = False

    def setup(self, model_box: list[Any], run_path: str, probe: str | None) -> dict[str, Any]:
        """Take the job's model (``[ObjectRef]``: boxed, fetched once here) and its run directory
        (written here if the ``probe`` file the driver wrote there is visible)."""
        import ray

        self.model = ray.get(model_box[0]).to(self.device)
        self.run_path = Path(run_path)
        self.shared = probe is not None and (self.run_path / probe).is_file()
        return {"host": socket.gethostname(), "pid": os.getpid(), "shared": self.shared, "device": str(self.device)}

    def explain(self, method: str, kwargs: dict[str, Any], lo: int, hi: int, data: tuple[Tensor, Tensor | None],
                targets: TargetSpec, batch_size: int, seed: int, spec: str, label: str | None = None) -> dict[str, Any]:
        """Explain images ``lo:hi`` with ``method``; shards are stored under ``label`` (the
        method's name in the run, e.g. ``ig_black`` for integrated_gradients with a black baseline)."""
        images, labels = data
        explainer = METHODS.create(method, self.model, batch_size=batch_size, seed=seed, **kwargs)
        explainer.set_index_base(lo)  # draws keyed by dataset index: shards = one call
        started = time.time()
        cpu0 = time.process_time()
        res = explainer.explain(images.to(self.device), target=targets, labels=labels)
        meta = {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.index, "started": started,
                "ended": time.time(), "cpu_seconds": time.process_time() - cpu0}
        if self.shared:
            write_shard(self.run_path, label or method, Shard(lo, hi), res, spec, meta)
            return {"meta": meta, "result": None}
        return {"meta": meta, "result": res}

    def faithfulness(self, lo: int, data: tuple[Tensor, Tensor, Tensor], settings: dict[str, Any]) -> dict[str, Any]:
        from xailab.distributed.faithfulness import shard_faithfulness

        images, maps, targets = data
        started, cpu0 = time.time(), time.process_time()
        out = shard_faithfulness(self.model, images.to(self.device), maps, targets, lo, settings)
        out["meta"] = {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.index, "started": started,
                       "ended": time.time(), "cpu_seconds": time.process_time() - cpu0,
                       "seconds": time.time() - started}
        return out

    def dissect(self, stage: str, lo: int, hi: int, data: tuple[Tensor | None, Tensor | None], source: Any,
                concepts: Any, cfg: dict[str, Any], spec: str) -> dict[str, Any]:
        """One shard of a dissection phase (:mod:`xailab.distributed.dissection`): a tensor
        shard in ``data``, or images ``lo..hi-1`` of the Dataset ``source``."""
        from xailab.distributed.dissection import ShardSource, shard_state, write_state

        images, labels = data
        started, cpu0 = time.time(), time.process_time()
        part = images if images is not None else ShardSource(source, lo, hi)
        state = shard_state(self.model, stage, part, labels, lo, cfg, concepts)
        meta = {"host": socket.gethostname(), "pid": os.getpid(), "worker": self.index, "started": started,
                "ended": time.time(), "cpu_seconds": time.process_time() - cpu0, "seconds": time.time() - started}
        if self.shared:
            write_state(self.run_path, stage, Shard(lo, hi), state, spec, meta)
            return {"meta": meta, "state": None}
        return {"meta": meta, "state": state}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _has_gpu() -> bool:
    import ray

    return bool(ray.get_gpu_ids())


class RayBackend:
    """Compute ``explain_to_run``'s methods on Ray (see the module docstring).

    Args:
        address: a running cluster (``ray://host:10001``, ``host:6379`` or ``"auto"``); None starts
            a private Ray instance on this machine (when none is running in this process).
        workers: actors to start (default: the cluster's CPUs / ``cpus_per_worker``, or its GPUs /
            ``gpus_per_worker``), never more than there are shards to do.
        gpus_per_worker, cpus_per_worker: what each actor reserves; torch threads = ``cpus_per_worker``.
        shard_size: images per shard (the unit of work, resume and retry).
        max_retries: times a shard is redone after its worker died, before the job gives up.
        driver_writes: workers return their results and the driver writes them, even where the
            workers see the run directory (by default they write it themselves when they do).
        keep_workers: keep the actors between calls (when Ray was started outside the backend),
            so that e.g. ``explain`` then ``compare`` in one session start them once; ``close()``
            stops them. They hold their CPUs/GPUs meanwhile.
    """

    def __init__(self, address: str | None = None, *, workers: int | None = None, gpus_per_worker: float = 0.0,
                 cpus_per_worker: float = 1.0, shard_size: int = 256, max_retries: int = 2,
                 driver_writes: bool = False, keep_workers: bool = False, progress: bool = True,
                 log: Any = print) -> None:
        if workers is not None and workers < 1:
            raise ClusterError(f"workers must be >= 1, got {workers}")
        if shard_size < 1:
            raise ClusterError(f"shard size must be >= 1, got {shard_size}")
        self.address = address
        self.workers = workers
        self.gpus_per_worker = float(gpus_per_worker)
        self.cpus_per_worker = float(cpus_per_worker)
        self.shard_size = int(shard_size)
        self.max_retries = int(max_retries)
        self.progress = progress
        self.log = log
        #: (method, shard key) pairs computed by the last call (the others were complete already)
        self.computed: list[tuple[str, str]] = []
        #: seconds spent starting Ray and the actors (or readying kept ones) in the last call
        self.startup_seconds = 0.0
        self.keep_workers = keep_workers
        self.driver_writes = driver_writes
        self._pool: list[Any] = []
        self._pool_job: Any = None
        self._setup: dict[Any, Any] = {}  # actor -> its last setup call (host and pid)
        self._serial = 0

    # -- the Backend protocol of xailab.explain ---------------------------------------------------
    def __call__(self, model: nn.Module, images: Tensor, *, run: Run, methods: dict[str, dict[str, Any]],
                 specs: dict[str, str], targets: TargetSpec, labels: Tensor | None, batch_size: int,
                 seed: int, kinds: dict[str, str] | None = None) -> dict[str, Explanation]:
        remove_saved(run.path)
        self._kinds = dict(kinds or {})
        plan = shard_plan(len(images), self.shard_size)
        tasks = [(m, s) for m in methods for s in plan if not is_complete(run.path, m, s, specs[m])]
        skipped = len(methods) * len(plan) - len(tasks)
        self.computed = []
        if skipped:
            self.log(f"{skipped} of {len(methods) * len(plan)} shards already complete, skipped")
        if tasks:
            self._run(model, images, labels, run, methods, specs, tasks, plan, targets, batch_size, seed)
        out = {}
        for m in methods:
            out[m] = merge(run.path, m, plan, specs[m])
            run.write_table("shards", timings(run.path, m, plan), part=m)
        return out

    def finish(self, run: Run) -> None:
        """Remove the shards of the methods now saved whole in the run (each map is kept once)."""
        remove_saved(run.path)

    # -- the driver -------------------------------------------------------------------------------
    def _run(self, model: nn.Module, images: Tensor, labels: Tensor | None, run: Run,
             methods: dict[str, dict[str, Any]], specs: dict[str, str], tasks: list[tuple[str, Shard]],
             plan: list[Shard], targets: TargetSpec, batch_size: int, seed: int) -> None:
        def put(ray: Any) -> dict[str, Any]:
            return {s.key: ray.put((images[s.lo:s.hi].detach().cpu(),
                                    labels[s.lo:s.hi].cpu() if labels is not None else None))
                    for s in {s for _, s in tasks}}

        def submit(actor: Any, data: dict[str, Any], m: str, s: Shard) -> Any:
            return actor.explain.remote(self._kinds.get(m, m), methods[m], s.lo, s.hi, data[s.key], targets,
                                        batch_size, seed, specs[m], m)

        def done(out: dict[str, Any], m: str, s: Shard) -> None:
            if out["result"] is not None:  # the worker does not see the run: the driver writes it
                write_shard(run.path, m, s, out["result"], specs[m], out["meta"])

        self.drive(model, run, tasks, put, submit, done, what="explain", n_shards=len(plan))

    def drive(self, model: nn.Module, run: Run, tasks: list[tuple[str, Shard]],
              put: Callable[[Any], dict[str, Any]], submit: Callable[[Any, dict[str, Any], str, Shard], Any],
              done: Callable[[dict[str, Any], str, Shard], None], *, what: str, n_shards: int) -> None:
        """Run ``tasks`` (method, shard) on actors holding ``model``: the loop every command shares.

        ``put(ray)`` puts the shards' inputs into the object store once (keyed by shard key);
        ``submit(actor, inputs, method, shard)`` starts one task and returns its reference;
        ``done(result, method, shard)`` stores what a finished task returned.
        """
        ray = import_ray()
        from ray.exceptions import RayActorError, RayTaskError
        from tqdm.auto import tqdm

        t0 = time.perf_counter()
        owned = connect(ray, self.address, self.workers, self.cpus_per_worker)
        ok = False
        try:
            n_workers = min(len(tasks), self.workers or self._default_workers(ray))
            probe = None if self.driver_writes else f".probe-{uuid.uuid4().hex}"
            if probe is not None:
                atomic_write_text(run.path / probe, "xailab")
            cpu_model = model if all(p.device.type == "cpu" for p in model.parameters()) else copy.deepcopy(model).cpu()
            model_box = [ray.put(cpu_model)]
            data = put(ray)
            Actor = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)(ShardWorker)
            threads = max(1, int(self.cpus_per_worker))
            job = ray.get_runtime_context().get_job_id()
            if self._pool_job != job:  # workers kept from a call in another Ray session are gone
                self._pool, self._pool_job, self._setup = [], job, {}
            actors = self._pool

            def start() -> Any:
                a = Actor.remote(threads, self._serial)
                self._serial += 1
                self._setup[a] = a.setup.remote(model_box, str(run.path), probe)  # runs before later tasks
                return a

            while len(actors) < n_workers:
                actors.append(start())
            for a in actors:
                self._setup[a] = a.setup.remote(model_box, str(run.path), probe)
            info = ray.get([self._setup[a] for a in actors])
            if probe is not None:
                (run.path / probe).unlink(missing_ok=True)
            self.startup_seconds = time.perf_counter() - t0
            shared = all(i["shared"] for i in info)
            self.log(f"ray: {len(actors)} workers on {len({i['host'] for i in info})} host(s) "
                     f"({', '.join(sorted({i['device'] for i in info}))}), {len(tasks)} shards of <= "
                     f"{self.shard_size} images, ready in {self.startup_seconds:.1f} s; "
                     f"{'workers write the run' if shared else 'the driver writes the run (no shared filesystem)'}")
            sections = dict(run.manifest.get("distributed", {}))
            sections[what] = {
                "backend": "ray", "ray": ray.__version__, "address": self.address, "workers": len(actors),
                "hosts": sorted({i["host"] for i in info}), "shard_size": self.shard_size,
                "shards": n_shards, "gpus_per_worker": self.gpus_per_worker,
                "cpus_per_worker": self.cpus_per_worker, "shared_filesystem": shared,
            }
            run.update_manifest("distributed", sections)

            queue = deque(tasks)
            inflight: dict[Any, tuple[Any, tuple[str, Shard]]] = {}
            load: Counter[Any] = Counter()
            deaths: Counter[tuple[str, str]] = Counter()

            def top_up() -> None:
                for a in actors:
                    while queue and load[a] < DEPTH:
                        m, s = queue.popleft()
                        inflight[submit(a, data, m, s)] = (a, (m, s))
                        load[a] += 1

            bar = tqdm(total=sum(len(s) for _, s in tasks), desc=f"{what} (ray)", unit="img",
                       disable=not self.progress)
            try:
                top_up()
                while inflight:
                    (ref,), _ = ray.wait(list(inflight), num_returns=1)
                    actor, (m, s) = inflight.pop(ref)
                    load[actor] -= 1
                    try:
                        out = ray.get(ref)
                    except RayActorError as e:
                        deaths[(m, s.key)] += 1
                        if deaths[(m, s.key)] > self.max_retries:
                            raise ClusterError(
                                f"the worker running {what} of {m} on images {s.lo}-{s.hi - 1} died "
                                f"{deaths[(m, s.key)]} times ({type(e).__name__}); finished shards are kept: "
                                "fix the cause (memory? a lost node?) and run the same command again") from None
                        queue.appendleft((m, s))
                        if actor in actors:  # replace it once, whatever number of its tasks fail
                            actors.remove(actor)
                            ray.kill(actor, no_restart=True)
                            actors.append(start())
                        top_up()
                        continue
                    except RayTaskError as e:
                        raise e.as_instanceof_cause() from None
                    done(out, m, s)
                    self.computed.append((m, s.key))
                    bar.update(len(s))
                    top_up()
                ok = True
            finally:
                bar.close()
                if not (ok and self.keep_workers and not owned):
                    self._kill_pool(ray)
                # wait until the killed actors' tasks have ended: no write lands after we return
                ray.wait(list(inflight), num_returns=len(inflight), timeout=60)
        finally:
            if owned:
                self._pool = []
                ray.shutdown()

    def _kill_pool(self, ray: Any) -> None:
        """Kill the workers and, for those on this machine, wait until their processes are gone
        (Ray reports an actor dead before its process has exited: no write may land later)."""
        here = socket.gethostname()
        pids = []
        for a in self._pool:
            ref = self._setup.pop(a, None)
            ready = ray.wait([ref], timeout=0)[0] if ref is not None else []
            try:
                info = ray.get(ready[0]) if ready else None
            except Exception:  # a worker that died before it was set up
                info = None
            if info and info["host"] == here:
                pids.append(int(info["pid"]))
            ray.kill(a, no_restart=True)
        self._pool = []
        deadline = time.monotonic() + 30
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

    def close(self) -> None:
        """Stop the workers kept by ``keep_workers=True`` (Ray itself keeps running)."""
        if self._pool:
            self._kill_pool(import_ray())

    def _default_workers(self, ray: Any) -> int:
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(res.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(res.get("CPU", 1) // max(self.cpus_per_worker, 1e-9)))


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ClusterError("--backend ray needs Ray: pip install 'xailab[distributed]' (ray==2.60.0)") from None
    return ray


def connect(ray: Any, address: str | None, workers: int | None, cpus_per_worker: float) -> bool:
    """Join the cluster at ``address`` (or start a local one); True if this call started Ray."""
    if address and address != "auto":
        check_address(address)
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            cpus = os.cpu_count() or 1
            if workers is not None:
                cpus = max(cpus, int(workers * max(cpus_per_worker, 1)))
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ClusterError(f"cannot start or join Ray at {address or 'this machine'}: {e}") from None
    return True


def check_address(address: str) -> None:
    """Fail fast, with the fix, when nothing listens at ``host:port`` (Ray itself retries for minutes)."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(f"--address expects host:port (e.g. 10.0.0.5:6379 or ray://10.0.0.5:10001) "
                           f"or 'auto', got {address!r}")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except OSError as e:
        raise ClusterError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                           "`ray start --head --port=6379` on the head machine and pass its address") from None

