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
import functools
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from xailab.core.explanation import Explanation
from xailab.core.targets import TargetSpec
from xailab.distributed.cluster import (
    ClusterError,
    check_address,
    connect,
    import_ray,
    process_alive,
)
from xailab.distributed.shards import (
    Shard,
    is_complete,
    merge,
    remove_saved,
    shard_plan,
    timings,
    write_shard,
)
from xailab.distributed.worker import ShardWorker
from xailab.runs.store import Run, atomic_write_text

__all__ = ["DEPTH", "ClusterError", "RayBackend", "ShardWorker", "check_address", "connect", "import_ray"]

#: tasks kept queued on each actor (one running, one waiting: no idle gap between shards)
DEPTH = 2


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
        t0 = time.perf_counter()
        owned = connect(ray, self.address, self.workers, self.cpus_per_worker)
        try:
            n_workers = min(len(tasks), self.workers or self._default_workers(ray))
            probe = None if self.driver_writes else f".probe-{uuid.uuid4().hex}"
            if probe is not None:
                atomic_write_text(run.path / probe, "xailab")
            cpu_model = model if all(p.device.type == "cpu" for p in model.parameters()) else copy.deepcopy(model).cpu()
            model_box = [ray.put(cpu_model)]
            data = put(ray)
            Actor = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker)(ShardWorker)
            start = functools.partial(self._start_actor, Actor, model_box, str(run.path), probe)
            actors, info = self._ready_pool(ray, start, n_workers, model_box, str(run.path), probe)
            if probe is not None:
                (run.path / probe).unlink(missing_ok=True)
            self.startup_seconds = time.perf_counter() - t0
            self._record(ray, run, actors, info, what, n_shards, len(tasks))
            self._dispatch(ray, actors, start, tasks, data, submit, done, what, owned)
        finally:
            if owned:
                self._pool = []
                ray.shutdown()

    def _start_actor(self, Actor: Any, model_box: list[Any], run_path: str, probe: str | None) -> Any:
        """A fresh actor, its setup queued (it runs before the actor's later tasks)."""
        a = Actor.remote(max(1, int(self.cpus_per_worker)), self._serial)
        self._serial += 1
        self._setup[a] = a.setup.remote(model_box, run_path, probe)
        return a

    def _ready_pool(self, ray: Any, start: Callable[[], Any], n_workers: int, model_box: list[Any],
                    run_path: str, probe: str | None) -> tuple[list[Any], list[dict[str, Any]]]:
        """The pool (kept actors of this Ray session, topped up to ``n_workers``), each set up
        for this job; returns the actors and their setup answers (host, pid, shared, device)."""
        job = ray.get_runtime_context().get_job_id()
        if self._pool_job != job:  # workers kept from a call in another Ray session are gone
            self._pool, self._pool_job, self._setup = [], job, {}
        actors = self._pool
        while len(actors) < n_workers:
            actors.append(start())
        for a in actors:
            self._setup[a] = a.setup.remote(model_box, run_path, probe)
        return actors, ray.get([self._setup[a] for a in actors])

    def _record(self, ray: Any, run: Run, actors: list[Any], info: list[dict[str, Any]], what: str,
                n_shards: int, n_tasks: int) -> None:
        """Log the pool and write it into the run's ``distributed`` manifest section."""
        shared = all(i["shared"] for i in info)
        self.log(f"ray: {len(actors)} workers on {len({i['host'] for i in info})} host(s) "
                 f"({', '.join(sorted({i['device'] for i in info}))}), {n_tasks} shards of <= "
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

    def _dispatch(self, ray: Any, actors: list[Any], start: Callable[[], Any], tasks: list[tuple[str, Shard]],
                  data: dict[str, Any], submit: Callable[[Any, dict[str, Any], str, Shard], Any],
                  done: Callable[[dict[str, Any], str, Shard], None], what: str, owned: bool) -> None:
        """Keep every actor ``DEPTH`` tasks deep until all are done; redo the shards of a dead
        actor on a fresh one; stop the pool afterwards unless it is kept."""
        from ray.exceptions import RayActorError, RayTaskError
        from tqdm.auto import tqdm

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

        bar = tqdm(total=sum(len(s) for _, s in tasks), desc=f"{what} (ray)", unit="img", disable=not self.progress)
        ok = False
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
                    self._check_retries(deaths[(m, s.key)], what, m, s, e)
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

    def _check_retries(self, deaths: int, what: str, m: str, s: Shard, e: Exception) -> None:
        if deaths > self.max_retries:
            raise ClusterError(
                f"the worker running {what} of {m} on images {s.lo}-{s.hi - 1} died "
                f"{deaths} times ({type(e).__name__}); finished shards are kept: "
                "fix the cause (memory? a lost node?) and run the same command again") from None

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
            while process_alive(pid) and time.monotonic() < deadline:
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
