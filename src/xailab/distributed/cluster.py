"""Joining or starting a Ray cluster, for the distributed jobs (Ray is imported only when asked for)."""

from __future__ import annotations

import os
import socket
from typing import Any

from xailab.core.errors import XailabError


class ClusterError(XailabError):
    """Ray is missing, the cluster cannot be reached, or its workers keep dying."""


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


def process_alive(pid: int) -> bool:
    """Whether a process of this machine is still running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
