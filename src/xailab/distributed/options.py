"""The command-line flags every distributable command shares, and the backend they select.

    xailab explain ... --backend ray --address auto --workers 8 --gpus-per-worker 1

Without ``--backend ray`` nothing here imports Ray.
"""

from __future__ import annotations

import argparse
from typing import Any


def add_backend_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (see docs/scale.md)")
    g.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this process (default); ray: shards over Ray workers, resumable")
    g.add_argument("--address", help="Ray cluster to join (host:6379, ray://host:10001, or auto); "
                   "default: start Ray on this machine")
    g.add_argument("--workers", type=int, help="Ray workers (default: CPUs / --cpus-per-worker, or GPUs)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each Ray worker reserves (default 0)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) each Ray worker reserves")
    g.add_argument("--shard-size", type=int, default=256, help="images per shard: the unit of work and resume (256)")


def backend_from_args(args: argparse.Namespace) -> Any:
    """None for ``--backend local`` (flags that need Ray are refused), else a RayBackend."""
    from xailab.core.errors import InputError

    if getattr(args, "backend", "local") != "ray":
        given = [f for f, v in (("--address", args.address), ("--workers", args.workers)) if v is not None]
        if given or args.gpus_per_worker:
            raise InputError(f"{', '.join(given) or '--gpus-per-worker'} needs --backend ray")
        return None
    from xailab.distributed.ray_backend import RayBackend

    return RayBackend(args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, shard_size=args.shard_size)
