"""The Ray actor of the distributed jobs: holds a job's model once, runs one shard per call."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.registry import METHODS
from xailab.core.targets import TargetSpec
from xailab.distributed.shards import Shard, write_shard


class ShardWorker:
    """A Ray actor: holds the model of the current job once, runs one shard per call."""

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

    def faithfulness(self, lo: int, data: tuple[Tensor, dict[str, Tensor], dict[str, Tensor]],
                     settings: dict[str, Any]) -> dict[str, Any]:
        """Faithfulness of every method of ``data`` (images, maps and targets per method) on one shard."""
        from xailab.distributed.faithfulness import shard_faithfulness

        images, maps, targets = data
        started, cpu0 = time.time(), time.process_time()
        out: dict[str, Any] = {"methods": shard_faithfulness(self.model, images.to(self.device), maps, targets, lo,
                                                             settings)}
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


def _has_gpu() -> bool:
    import ray

    return bool(ray.get_gpu_ids())
