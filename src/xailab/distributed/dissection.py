"""``xailab dissect`` on Ray: network dissection's passes over shards of the image set, resumable.

Every pass of :func:`~xailab.concepts.dissection.dissect` adds up over images except the
quantile sketch, whose bins come from the first batch it sees. On Ray each shard of images is
processed by actors holding the model once, in three phases whose shard results add exactly:

1. ``dissect.range``: per unit the min and max activation (and the top images by spatial max,
   and for class-level dissection the per-class sums of those maxima); joined: the global range.
2. ``dissect.sketch``: per unit a :class:`~xailab.concepts.dissection.QuantileSketch` over that
   fixed range; the shards' counts add into the sketch of the whole set, hence the thresholds
   ``T_k`` (class-level dissection stops here).
3. ``dissect.iou``: per unit and concept the intersection and union pixel counts at ``T_k``.

The result is, bit for bit, the local ``dissect(..., exact_range=True)`` (class means to float
rounding: their sums regroup), and within one bin width of the default sketch. Each shard's
result is stored as ``RUN/shards/dissect.<phase>/<lo>-<hi>/state.safetensors`` and then its
``.done`` marker (the conventions of :mod:`.shards`); a rerun skips complete shards and whole
phases, and the shards are deleted once the dissection is computed. Specs tie each phase to the
model, the images, the settings and the previous phase's result, so nothing stale is reused.

    res = dissect_on_ray(model, x, "layer2,layer3", ColourConcepts(), backend=RayBackend(workers=8),
                         run=Run.create("runs/d", kind="dissection"))
    dissection_to_run(res, run)
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xailab.concepts.activations import ImageSource, num_images, take
from xailab.concepts.dissection import Dissection, dissect, dissect_classes
from xailab.concepts.dissection_passes import (
    ConceptSource,
    UnitStats,
    first_pass,
    iou_pass,
    resolve_layers,
    sketch_pass,
)
from xailab.concepts.quantile_sketch import QuantileSketch
from xailab.distributed.shards import (
    Shard,
    is_complete,
    marker_path,
    remove,
    shard_dir,
    shard_plan,
    timings,
)
from xailab.runs.store import Run, RunError, atomic_write, atomic_write_text

STAGES = ("dissect.range", "dissect.sketch", "dissect.iou")
STATE = "state.safetensors"


class ShardSource(torch.utils.data.Dataset[Any]):
    """Images ``lo .. hi-1`` of a Dataset image set, read with :func:`take` (no augmentation)."""

    def __init__(self, base: Any, lo: int, hi: int) -> None:
        self.base, self.lo, self.hi = base, lo, hi

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, i: int) -> Any:
        return self.base[self.lo + i]

    def get_batch(self, idx: Tensor, augment: bool = False) -> tuple[Tensor, Tensor | None]:
        return take(self.base, torch.as_tensor(idx, dtype=torch.long) + self.lo)


# -- one shard (on a worker) ------------------------------------------------------------------------
def shard_state(model: nn.Module, stage: str, images: ImageSource, labels: Tensor | None, lo: int,
                cfg: dict[str, Any], concepts: ConceptSource | None = None) -> dict[str, Tensor]:
    """One shard's part of a phase as flat CPU tensors ``{"<layer>/<what>": tensor}``; ``images``
    are the shard's (``lo``: the global index of its first image)."""
    modules = resolve_layers(model, cfg["layers"])
    bs = cfg["batch_size"]
    out: dict[str, Tensor] = {}
    if stage == "dissect.range":
        state = first_pass(model, modules, images, bs, cfg["top_images"], cfg["bins"], labels, cfg["n_classes"],
                            sketch=False, index_base=lo)
        for name, s in state.items():
            out |= {f"{name}/vmin": s.vmin, f"{name}/vmax": s.vmax, f"{name}/top_v": s.top_v,
                    f"{name}/top_i": s.top_i, f"{name}/class_sum": s.class_sum}
    elif stage == "dissect.sketch":
        for name, sk in sketch_pass(model, modules, images, bs, cfg["ranges"], cfg["bins"]).items():
            out |= {f"{name}/counts": sk.counts, f"{name}/max": sk.max, f"{name}/total": torch.tensor(sk.total)}
    elif stage == "dissect.iou":
        if concepts is None:
            raise RunError("the IoU phase needs the concept source")
        inter, area_a, area_c = iou_pass(model, modules, images, concepts, cfg["thresholds"], bs,
                                          cfg["max_elements"], index_base=lo)
        out["area_c"] = area_c
        for name in inter:
            out |= {f"{name}/inter": inter[name], f"{name}/area_a": area_a[name]}
    else:
        raise RunError(f"unknown dissection phase {stage!r}")
    return {k: v.detach().cpu().clone().contiguous() for k, v in out.items()}


def write_state(run_path: Path, stage: str, shard: Shard, state: dict[str, Tensor], spec: str,
                meta: dict[str, Any]) -> None:
    """Store a shard's tensors, then its marker (the marker last: it is the commit)."""
    from safetensors.torch import save_file

    marker_path(run_path, stage, shard).unlink(missing_ok=True)
    atomic_write(shard_dir(run_path, stage, shard) / STATE, lambda p: save_file(state, str(p)))
    record = {"method": stage, "lo": shard.lo, "hi": shard.hi, "spec": spec,
              "host": meta.get("host", socket.gethostname()), "pid": meta.get("pid", os.getpid()), **meta}
    atomic_write_text(marker_path(run_path, stage, shard), json.dumps(record, indent=1, default=str))


def read_state(run_path: Path, stage: str, shard: Shard) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(str(shard_dir(run_path, stage, shard) / STATE))


# -- the driver -------------------------------------------------------------------------------------
def digest(*parts: Any) -> str:
    """A short hash of tensors, modules (their parameters and buffers) and JSON-able values."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, nn.Module):
            p = [t for _, t in sorted({**dict(p.named_parameters()), **dict(p.named_buffers())}.items())]
        items = p if isinstance(p, (list, tuple)) else [p]
        for t in items:
            if isinstance(t, Tensor):
                h.update(str((t.dtype, tuple(t.shape))).encode())
                h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
            else:
                h.update(json.dumps(t, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _images_key(images: ImageSource) -> str:
    n = num_images(images)
    if isinstance(images, Tensor):  # a strided sample of images: cheap, and tells sets apart
        return digest(n, images[:: max(1, n // 64)])
    return digest(n, type(images).__name__, str(getattr(images, "root", "")))


class RayPasses:
    """The passes of :func:`dissect` / :func:`dissect_classes` over shards on a RayBackend
    (``passes=RayPasses(backend, run)``); the phases are in the module docstring."""

    name = "ray"

    def __init__(self, backend: Any, run: Run, log: Callable[[str], None] = print) -> None:
        self.backend, self.run, self.log = backend, run, log
        self._key = ""  # the model, images and layers (set by first_pass, which runs first)

    def first_pass(self, model: nn.Module, modules: list[tuple[str, nn.Module]], images: ImageSource,
                   batch_size: int, top_images: int, bins: int, labels: Tensor | None = None,
                   n_classes: int = 0) -> dict[str, UnitStats]:
        layers = [n for n, _ in modules]
        self._key = digest(model, _images_key(images), layers, batch_size)
        cfg = {"layers": layers, "batch_size": batch_size, "top_images": top_images, "bins": bins,
               "n_classes": n_classes}
        spec = digest(self._key, cfg, labels if labels is not None else "no labels")
        state: dict[str, UnitStats] = {}
        for _, part in self._phase("dissect.range", model, images, labels, cfg, spec):
            for name in layers:
                p = UnitStats(part[f"{name}/vmin"].shape[0], top_images, bins, n_classes, torch.device("cpu"), sketch=False)
                p.vmin, p.vmax, p.top_v, p.top_i, p.class_sum = (
                    part[f"{name}/{k}"] for k in ("vmin", "vmax", "top_v", "top_i", "class_sum"))
                if name in state:
                    state[name].merge(p)
                else:
                    state[name] = p
        ranges = {name: (s.vmin, s.vmax) for name, s in state.items()}
        cfg = {"layers": layers, "batch_size": batch_size, "bins": bins, "ranges": ranges}
        spec = digest(self._key, bins, [t for r in ranges.values() for t in r])
        for _, part in self._phase("dissect.sketch", model, images, None, cfg, spec):
            for name, (lo, hi) in ranges.items():
                sk = QuantileSketch.spanning(lo, hi, bins)
                sk.counts, sk.max, sk.total = part[f"{name}/counts"], part[f"{name}/max"], int(part[f"{name}/total"])
                state[name].sketch = state[name].sketch + sk  # exact: the same bins
        return state

    def iou_pass(self, model: nn.Module, modules: list[tuple[str, nn.Module]], images: ImageSource,
                 concepts: ConceptSource, thresholds: dict[str, Tensor], batch_size: int,
                 max_elements: int) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        layers = [n for n, _ in modules]
        thr = {k: v.detach().cpu() for k, v in thresholds.items()}
        cfg = {"layers": layers, "batch_size": batch_size, "thresholds": thr, "max_elements": max_elements}
        spec = digest(self._key, type(concepts).__name__, list(concepts.names), max_elements, list(thr.values()))
        inter: dict[str, Tensor] = {}
        area_a: dict[str, Tensor] = {}
        area_c = torch.zeros(0)
        for k, (_, part) in enumerate(self._phase("dissect.iou", model, images, None, cfg, spec, concepts)):
            area_c = part["area_c"] if k == 0 else area_c + part["area_c"]
            for name in layers:
                i, a = part[f"{name}/inter"], part[f"{name}/area_a"]
                inter[name], area_a[name] = (i, a) if k == 0 else (inter[name] + i, area_a[name] + a)
        return inter, area_a, area_c

    def _phase(self, stage: str, model: nn.Module, images: ImageSource, labels: Tensor | None,
               cfg: dict[str, Any], spec: str, concepts: ConceptSource | None = None) -> Any:
        """Run the shards of ``stage`` not yet complete, then yield ``(shard, state)`` in order."""
        run, backend = self.run, self.backend
        plan = shard_plan(num_images(images), backend.shard_size)
        tasks = [(stage, s) for s in plan if not is_complete(run.path, stage, s, spec)]
        if len(tasks) < len(plan):
            self.log(f"{stage}: {len(plan) - len(tasks)} of {len(plan)} shards already complete, skipped")
        tensor = isinstance(images, Tensor)

        def put(ray: Any) -> dict[str, Any]:
            data = {s.key: ray.put((images[s.lo:s.hi].detach().cpu() if isinstance(images, Tensor) else None,
                                    labels[s.lo:s.hi].cpu() if labels is not None else None)) for _, s in tasks}
            data["_source"] = None if tensor else ray.put(images)
            data["_concepts"] = None if concepts is None else ray.put(concepts)
            return data

        def submit(actor: Any, data: dict[str, Any], m: str, s: Shard) -> Any:
            return actor.dissect.remote(m, s.lo, s.hi, data[s.key], data["_source"], data["_concepts"], cfg, spec)

        def done(out: dict[str, Any], m: str, s: Shard) -> None:
            if out["state"] is not None:  # the worker does not see the run: the driver writes it
                write_state(run.path, m, s, out["state"], spec, out["meta"])

        if tasks:
            backend.drive(model, run, tasks, put, submit, done, what=stage, n_shards=len(plan))
        missing = [s.key for s in plan if not is_complete(run.path, stage, s, spec)]
        if missing:
            raise RunError(f"{stage}: {len(missing)} of {len(plan)} shards are not complete (first: {missing[0]}); "
                           "run the same command again to finish them")
        run.write_table("shards", timings(run.path, stage, plan), part=stage)
        for s in plan:  # one shard in memory at a time
            yield s, read_state(run.path, stage, s)


def _on_ray(backend: Any, run: Run | str | Path, log: Callable[[str], None],
            job: Callable[[RayPasses], Dissection]) -> Dissection:
    from xailab.distributed.cluster import connect, import_ray

    run = run if isinstance(run, Run) else Run.create(run, kind="dissection")
    ray = import_ray()
    owned = connect(ray, backend.address, backend.workers, backend.cpus_per_worker)
    keep = backend.keep_workers
    backend.keep_workers = True  # one pool of actors serves the three phases
    backend.computed = []
    try:
        res = job(RayPasses(backend, run, log))
    finally:
        backend.keep_workers = keep
        if owned or not keep:
            backend.close()
        if owned:
            ray.shutdown()
    for stage in STAGES:
        remove(run.path, stage)
    return res


def dissect_on_ray(model: nn.Module, images: ImageSource, layers: str | list[str], concepts: ConceptSource, *,
                   backend: Any, run: Run | str | Path, log: Callable[[str], None] = print,
                   **kwargs: Any) -> Dissection:
    """:func:`~xailab.concepts.dissection.dissect` with its passes on Ray (same keyword arguments);
    shard results live in ``run`` until the result is computed (rerun = resume)."""
    return _on_ray(backend, run, log, lambda p: dissect(model, images, layers, concepts, passes=p, **kwargs))


def dissect_classes_on_ray(model: nn.Module, images: ImageSource, layers: str | list[str], *, backend: Any,
                           run: Run | str | Path, log: Callable[[str], None] = print,
                           **kwargs: Any) -> Dissection:
    """:func:`~xailab.concepts.dissection.dissect_classes` with its passes on Ray (see :func:`dissect_on_ray`)."""
    return _on_ray(backend, run, log, lambda p: dissect_classes(model, images, layers, passes=p, **kwargs))
