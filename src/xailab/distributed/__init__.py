"""Run xailab jobs over many workers (Ray), each writing its shard of the run store; resumable.

``shards`` (the split of a job into shards, their files and completion markers) imports nothing
but xailab; :class:`RayBackend` lives in ``ray_backend``, the one module that imports Ray, and is
imported here only when asked for, so a local run never imports Ray.

    from xailab.distributed import RayBackend
    explain_to_run(model, images, out="runs/x", methods=["saliency"], targets="top1",
                   backend=RayBackend(address="auto", workers=8, gpus_per_worker=1))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xailab.distributed.shards import Shard, shard_plan

__all__ = ["ClusterError", "RayBackend", "Shard", "shard_plan"]


def __getattr__(name: str) -> Any:
    if name in ("Shard", "shard_plan"):  # lazily: ``--backend`` options need no torch
        from xailab.distributed import shards

        return getattr(shards, name)
    if name in ("RayBackend", "ClusterError"):
        from xailab.distributed import ray_backend

        return getattr(ray_backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
