"""``xailab compare`` on Ray: the dataset-wide faithfulness metrics, shard by shard.

Of what ``compare`` computes, faithfulness is the part that grows with the dataset: per image and
method, deletion and insertion curves (``steps + 1`` model evaluations each) and the
faithfulness correlation (``runs + 1``). It is computed here one task per shard, for all methods
at once, by the same one pass as :func:`xailab.jobs.compare.compare_run`
(:func:`~xailab.metrics.faithfulness.faithfulness_all`: the perturbed images the methods share
are scored once), with the same arguments, into the same
tables (``faithfulness``, ``faithfulness_curves``) and with the same completion record, so
``compare_run`` then finds them done and computes only what is cheap (agreement between maps,
the randomisation test on a few images, the scoreboard). Per-image draws are keyed by the global
image index, as in one process.

    board_inputs = faithfulness_on_ray(run, model, settings, backend=RayBackend(workers=8))
    compare_run(run, model, settings=settings)     # faithfulness found, skipped
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.distributed.shards import Shard, is_complete, read_rows, remove, shard_plan, write_rows
from xailab.runs.store import Run


def global_subsets(lo: int, hi: int, n_pixels: int, runs: int, size: int, seed: int) -> Tensor:
    """``random_subsets`` of images ``lo..hi-1`` of the whole set: image ``i`` draws from its own
    generator seeded ``seed * 1_000_003 + i`` (the rule of :func:`xailab.metrics.faithfulness.random_subsets`)."""
    from xailab.metrics.faithfulness import random_subsets

    return random_subsets(hi - lo, n_pixels, runs, size, seed, first=lo)


def shard_faithfulness(model: nn.Module, images: Tensor, maps: dict[str, Tensor], targets: dict[str, Tensor], lo: int,
                       cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Deletion and insertion AUCs and curves, and the faithfulness correlation, of one shard
    for every method in ``maps``: one :func:`~xailab.metrics.faithfulness.faithfulness_all`
    pass (the perturbed images the methods share are scored once), draws keyed by the global index."""
    from xailab.metrics.faithfulness import faithfulness_all

    p = images.shape[-2] * images.shape[-1]
    subset = cfg["faithfulness_subset"]
    size = int(subset) if isinstance(subset, int) else max(1, round(float(subset) * p))
    subsets = global_subsets(lo, lo + len(images), p, cfg["faithfulness_runs"], size, cfg["seed"]) \
        if 1 <= size <= p and cfg["faithfulness_runs"] >= 2 else None  # else faithfulness_all refuses
    scored = faithfulness_all(
        model, images, maps, {m: t.to(images.device) for m, t in targets.items()}, steps=cfg["steps"],
        deletion_fill=cfg["deletion_fill"], insertion_fill=cfg["insertion_fill"], runs=cfg["faithfulness_runs"],
        subset=subset, seed=cfg["seed"], batch_size=cfg["batch_size"], subsets=subsets,
    )
    return {m: {"deletion_auc": f.deletion.auc.cpu().numpy(), "insertion_auc": f.insertion.auc.cpu().numpy(),
                "faithfulness_corr": f.correlation.cpu().numpy(), "fractions": f.deletion.fractions.cpu().numpy(),
                "deletion_curve": f.deletion.scores.cpu().numpy(), "insertion_curve": f.insertion.scores.cpu().numpy()}
            for m, f in scored.items()}


def faithfulness_on_ray(run: Run, model: nn.Module, settings: Any, *, backend: Any,
                        methods: list[str] | None = None, log: Callable[[str], None] = print) -> list[str]:
    """Compute the faithfulness tables of ``compare_run`` on Ray; returns the methods computed.

    Methods whose tables are already in the run for these settings and maps are skipped (as
    ``compare_run`` skips them); within a method, complete shards are skipped on a rerun.
    """
    from dataclasses import asdict

    from xailab.metrics import compare_parts as parts
    from xailab.metrics import scoreboard as sb

    expl = sb.load_explanations(run, methods)
    images = torch.from_numpy(np.array(run.read_array("images"))).float()
    n = len(images)
    names = sb.image_names(run, n)
    cfg = asdict(settings)
    fspec = settings.spec("steps", "deletion_fill", "insertion_fill", "faithfulness_runs", "faithfulness_subset",
                          "batch_size", "target", "seed")
    done = parts.parts_done(run)
    todo: dict[str, str] = {}
    for m in expl:
        mspec = f"{fspec}:{parts.explanation_key(run, m)}"
        if not (run.has_part("faithfulness", m) and done.get(f"faithfulness/{m}") == mspec):
            todo[m] = mspec
    if not todo:
        return []
    plan = shard_plan(n, backend.shard_size)
    cols = {m: sb.column(expl[m], settings.target) for m in todo}
    maps = {m: expl[m].pixel_maps()[:, cols[m]].float() for m in todo}
    tgts = {m: expl[m].targets[:, cols[m]] for m in todo}
    stage = {m: f"faithfulness.{m}" for m in todo}
    tasks = []  # one task a shard, for the methods not complete in it (comma-joined)
    for s in plan:
        pending = [m for m in todo if not is_complete(run.path, stage[m], s, todo[m])]
        if pending:
            tasks.append((",".join(pending), s))
    backend.computed = []
    skipped = len(todo) * len(plan) - sum(len(label.split(",")) for label, _ in tasks)
    if skipped:
        log(f"faithfulness: {skipped} (method, shard) pairs already complete, skipped")

    def put(ray: Any) -> dict[str, Any]:
        return {f"{label}/{s.key}": ray.put((images[s.lo:s.hi], {m: maps[m][s.lo:s.hi] for m in label.split(",")},
                                             {m: tgts[m][s.lo:s.hi] for m in label.split(",")}))
                for label, s in tasks}

    def submit(actor: Any, data: dict[str, Any], label: str, s: Shard) -> Any:
        return actor.faithfulness.remote(s.lo, data[f"{label}/{s.key}"], cfg)

    def store(out: dict[str, Any], label: str, s: Shard) -> None:
        for m in label.split(","):
            o = out["methods"][m]
            rows = pd.DataFrame({
                "image": np.arange(s.lo, s.hi), "deletion_auc": o["deletion_auc"],
                "insertion_auc": o["insertion_auc"], "faithfulness_corr": o["faithfulness_corr"],
                "deletion_curve": list(o["deletion_curve"]), "insertion_curve": list(o["insertion_curve"]),
            })
            write_rows(run.path, stage[m], s, rows, todo[m], {**out["meta"], "fractions": o["fractions"].tolist()})

    if tasks:
        backend.drive(model, run, tasks, put, submit, store, what="faithfulness", n_shards=len(plan))
    for m, mspec in todo.items():
        _join(run, m, stage[m], plan, mspec, names, tgts[m].numpy(), log)
    return list(todo)


def _join(run: Run, m: str, stage: str, plan: list[Shard], mspec: str, names: Any, t: np.ndarray,
          log: Callable[[str], None]) -> None:
    """Write method ``m``'s complete shards as the run's faithfulness tables, then drop the shards."""
    from xailab.metrics import compare_parts as parts

    rows = read_rows(run.path, stage, plan, mspec)
    run.write_table("faithfulness", pd.DataFrame({
        "image": np.arange(len(t)), "name": names, "method": m, "target": t,
        "deletion_auc": rows["deletion_auc"].to_numpy(), "insertion_auc": rows["insertion_auc"].to_numpy(),
        "faithfulness_corr": rows["faithfulness_corr"].to_numpy(),
    }), part=m)
    dcurve = np.stack(rows["deletion_curve"].to_list()).mean(axis=0)
    icurve = np.stack(rows["insertion_curve"].to_list()).mean(axis=0)
    fractions = np.linspace(0.0, 1.0, len(dcurve))
    run.write_table("faithfulness_curves", pd.DataFrame({
        "method": m, "kind": ["deletion"] * len(dcurve) + ["insertion"] * len(icurve),
        "fraction": np.concatenate([_fractions(run, stage, plan, fractions)] * 2),
        "score": np.concatenate([dcurve, icurve]),
    }), part=m)
    parts.mark_done(run, f"faithfulness/{m}", mspec)
    remove(run.path, stage)
    log(f"{m}: deletion AUC {float(rows['deletion_auc'].mean()):.4f}, insertion AUC "
        f"{float(rows['insertion_auc'].mean()):.4f} (on ray)")


def _fractions(run: Run, name: str, plan: list[Shard], default: np.ndarray) -> np.ndarray:
    from xailab.distributed.shards import read_marker

    marker = read_marker(run.path, name, plan[0]) or {}
    return np.asarray(marker.get("fractions", default), dtype=float)
