"""Compare the methods of a run: agreement, faithfulness, sanity, time -> one scoreboard.

The job behind ``xailab compare RUN``. It reads what ``xailab explain`` wrote (the images in
``arrays/images``, their names in table ``images``, one saved Explanation per method in
``explanations/<method>/``) and writes into the same run:

* table ``agreement``: one row per image and pair of methods (IoU of the top regions,
  Spearman, Pearson, SSIM), and ``agreement_images``: images ranked from least to most agreement;
* table ``faithfulness``: one row per image and method (deletion AUC, insertion AUC,
  faithfulness correlation), and ``faithfulness_curves``: the mean curves;
* table ``sanity``: the cascading randomisation test, one row per method and step;
* table ``scoreboard``: one row per method (columns below);
* table ``verdict``: the methods ranked by faithfulness with intervals, paired tests, the
  sanity reason and caveats (:mod:`xailab.metrics.verdict`; its rule in the manifest);
* figures under ``files/metrics/`` and a ``compare`` section in the manifest.

Scoreboard columns: ``method, images, seconds, avg_time`` (seconds per image),
``evaluations_per_image, deletion_auc, insertion_auc, faithfulness_corr, sanity_spearman``
(Spearman after full randomisation), ``sanity`` (passed / flagged / n/a), ``agreement_iou`` and
``agreement_spearman`` (mean over the other methods), ``avg_iou`` (mean IoU with the reference
method). Which way is better is data: :data:`~xailab.metrics.columns.COLUMNS` names the
metric behind each column (its :class:`~xailab.metrics.info.MetricInfo`), and ``compare``
writes it into the run's manifest (section ``metrics``) for the report. Each column with
per-image values has a bootstrap interval over images, ``<column>_low`` / ``<column>_high``.

A rerun with the same settings skips the per-method work already written (resume).

    board = compare_run("runs/cifar", model, reference="gradcam", top=0.1)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_device
from xailab.metrics import agreement
from xailab.metrics import metric_figures as figures
from xailab.metrics.columns import COLUMNS, direction_legend
from xailab.metrics.compare_parts import explanation_key, mark_done, parts_done, sanity_part
from xailab.metrics.distribution import histogram, scatter_data
from xailab.metrics.faithfulness import faithfulness_all
from xailab.metrics.maps import nanmean
from xailab.metrics.verdict import FAITHFULNESS, VerdictRule, board_intervals, verdict
from xailab.runs.store import Run, RunError, atomic_write_bytes

DEFAULT_REFERENCE = "gradcam"


@dataclass(frozen=True)
class CompareSettings:
    """What ``compare_run`` computes; a change of any field recomputes the affected parts."""

    top: float = 0.1
    steps: int = 32
    deletion_fill: float = 0.0
    insertion_fill: Literal["blur", "mean"] | float = "blur"
    faithfulness_runs: int = 32
    faithfulness_subset: float = 0.1
    sanity: bool = True
    sanity_images: int = 4
    sanity_steps: int = 6
    sanity_threshold: float = 0.5
    #: a sampling method (more model evaluations per image than this, e.g. LIME, KernelSHAP, RISE)
    #: is sanity-checked on a cheap schedule: its first ``sanity_sampling_images`` images, re-explained
    #: after ``sanity_sampling_steps`` of the randomisation steps (recorded in table ``sanity``)
    sanity_sampling_above: int = 100
    sanity_sampling_images: int = 2
    sanity_sampling_steps: int = 3
    batch_size: int = 64
    target: str | int = 0
    seed: int = 0

    def spec(self, *fields: str) -> str:
        d = asdict(self)
        return hashlib.sha1(json.dumps({f: d[f] for f in fields}, sort_keys=True).encode()).hexdigest()[:16]


def run_methods(run: Run) -> list[str]:
    """Methods with a saved explanation in ``run`` (``explanations/<method>/manifest.json``)."""
    root = run.path / "explanations"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".") and (p / "manifest.json").is_file())


def load_explanations(run: Run, methods: list[str] | None = None) -> dict[str, Explanation]:
    """The saved explanations of ``run`` by method, all of them or ``methods`` (in that order)."""
    have = run_methods(run)
    if not have:
        raise RunError(
            f"run {run.path} has no explanations (nothing in {run.path / 'explanations'}); "
            f"create them with `xailab explain ... --out {run.path}`"
        )
    wanted = methods if methods is not None else have
    missing = [m for m in wanted if m not in have]
    if missing:
        raise RunError(
            f"run {run.path} has no explanations of {', '.join(missing)}; it has: {', '.join(have)}"
        )
    return {m: Explanation.load(run.path / "explanations" / m) for m in wanted}


def column(res: Explanation, target: str | int) -> int:
    if isinstance(target, int):
        if not -len(res.target_names) <= target < len(res.target_names):
            raise InputError(f"{res.method} has {len(res.target_names)} target columns; column {target} does not exist")
        return target
    if target not in res.target_names:
        raise InputError(f"{res.method} was not explained for target {target!r}; its targets: {', '.join(res.target_names)}")
    return res.target_names.index(target)


def _write_png(run: Run, rel: str, data: bytes) -> str:
    atomic_write_bytes(run.file(f"metrics/{rel}"), data)
    return f"files/metrics/{rel}"


def compare_run(
    path: str | os.PathLike[str] | Run,
    model: nn.Module,
    *,
    reference: str | None = None,
    methods: list[str] | None = None,
    settings: CompareSettings | None = None,
    figures_on: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Compute agreement, faithfulness, sanity and the scoreboard of a run (module docstring).

    Args:
        model: the model the run explained (faithfulness and sanity need it).
        reference: the method ``avg_iou`` compares with (default: gradcam when the run has it,
            else the first method; a named method missing from the run is an error).
        methods: a subset of the run's methods (default: all).
    """
    cfg = settings or CompareSettings()
    run = path if isinstance(path, Run) else Run.open(path)
    expl = load_explanations(run, methods)
    images = torch.from_numpy(np.array(run.read_array("images"))).float()
    n = len(images)
    if n == 0:
        raise RunError(f"run {run.path} holds no images")
    names = image_names(run, n)
    for m, res in expl.items():
        if len(res) != n:
            raise InputError(
                f"the explanations of {m} cover {len(res)} images but run {run.path} has {n} images; "
                f"re-run `xailab explain` for {m}"
            )
    ref = _reference(reference, list(expl), log)
    cols = {m: column(res, cfg.target) for m, res in expl.items()}
    maps = {m: res.pixel_maps()[:, cols[m]].float() for m, res in expl.items()}
    device = model_device(model)
    x = images.to(device)
    files: list[str] = []

    # -- agreement ------------------------------------------------------------------------------
    if len(maps) >= 2:
        table = agreement.pairwise(maps, top=cfg.top)
        table.insert(1, "name", [names[i] for i in table["image"]])
        run.write_table("agreement", table)
        run.write_table("agreement_images", agreement.image_ranking(table, "iou", names))
        if figures_on:
            for metric in ("iou", "spearman"):
                title = f"IoU of the top {100 * cfg.top:g} % pixels" if metric == "iou" else "Spearman of |maps|"
                files.append(_write_png(run, f"agreement_{metric}.png",
                                        figures.matrix_png(agreement.agreement_matrix(table, metric), title=title,
                                                           vmin=0.0 if metric == "iou" else -1.0)))
            for m in maps:
                if m != ref:
                    sx, sy = scatter_data(maps[ref], maps[m], max_points=4000, seed=cfg.seed)
                    files.append(_write_png(run, f"scatter_{ref}_{m}.png",
                                            figures.scatter_png(sx, sy, xlabel=ref, ylabel=m)))
    else:
        table = pd.DataFrame(columns=["image", "method_a", "method_b", "iou", "spearman", "pearson", "ssim"])
        log("agreement: only one method in the run, nothing to compare")
    if figures_on:
        hists = {m: histogram(a, low=0.2) for m, a in maps.items()}
        files.append(_write_png(run, "histograms.png",
                                figures.histograms_png(hists, title="|attribution| / max, values >= 0.2")))

    # -- faithfulness ---------------------------------------------------------------------------
    fspec = cfg.spec("steps", "deletion_fill", "insertion_fill", "faithfulness_runs", "faithfulness_subset",
                     "batch_size", "target", "seed")
    done = parts_done(run)
    todo: dict[str, str] = {}
    for m in expl:
        mspec = f"{fspec}:{explanation_key(run, m)}"
        if run.has_part("faithfulness", m) and done.get(f"faithfulness/{m}") == mspec:
            log(f"{m}: faithfulness already in the run, skipped")
        else:
            todo[m] = mspec
    scored = faithfulness_all(  # one pass: shared perturbed images scored once for every method
        model, x, {m: maps[m] for m in todo}, {m: expl[m].targets[:, cols[m]].to(device) for m in todo},
        steps=cfg.steps, deletion_fill=cfg.deletion_fill, insertion_fill=cfg.insertion_fill,
        runs=cfg.faithfulness_runs, subset=cfg.faithfulness_subset, seed=cfg.seed, batch_size=cfg.batch_size,
    ) if todo else {}
    for m, mspec in todo.items():
        d, i, fc = scored[m].deletion, scored[m].insertion, scored[m].correlation
        run.write_table("faithfulness", pd.DataFrame({
            "image": np.arange(n), "name": names, "method": m, "target": d.targets.numpy(),
            "deletion_auc": d.auc.numpy(), "insertion_auc": i.auc.numpy(), "faithfulness_corr": fc.numpy(),
        }), part=m)
        run.write_table("faithfulness_curves", pd.DataFrame({
            "method": m, "kind": ["deletion"] * len(d.fractions) + ["insertion"] * len(i.fractions),
            "fraction": np.concatenate([d.fractions.numpy(), i.fractions.numpy()]),
            "score": np.concatenate([d.mean_curve.numpy(), i.mean_curve.numpy()]),
        }), part=m)
        mark_done(run, f"faithfulness/{m}", mspec)
        log(f"{m}: deletion AUC {float(d.auc.mean()):.4f}, insertion AUC {float(i.auc.mean()):.4f}, "
            f"faithfulness correlation {float(nanmean(fc.numpy())):.3f}")
    faith = run.read_table("faithfulness")
    faith = faith[faith["method"].isin(list(expl))]
    curves = run.read_table("faithfulness_curves")
    if figures_on:
        for kind, ylabel in (("deletion", "score (lower AUC is better)"), ("insertion", "score (higher AUC is better)")):
            sel = curves[(curves["kind"] == kind) & curves["method"].isin(list(expl))]
            data = {m: (g["fraction"].to_numpy(), g["score"].to_numpy()) for m, g in sel.groupby("method", sort=False)}
            files.append(_write_png(run, f"{kind}.png", figures.curves_png(data, title=f"{kind} (mean over {n} images)",
                                                                           ylabel=ylabel)))

    # -- sanity ---------------------------------------------------------------------------------
    sanity_rows: dict[str, dict[str, Any]] = {}
    if cfg.sanity:
        sanity_rows = sanity_part(run, model, x, expl, cols, cfg, log)
        if figures_on and run.table_parts("sanity"):
            sanity = run.read_table("sanity")
            tables = {m: g for m, g in sanity.groupby("method", sort=False) if m in expl}
            if tables:
                files.append(_write_png(run, "sanity.png", figures.cascade_png(
                    tables, threshold=cfg.sanity_threshold, title="cascading randomisation")))

    # -- scoreboard -----------------------------------------------------------------------------
    board = board_intervals(_board(expl, table, faith, sanity_rows, ref, n), faith, table,
                            reference=ref, seed=cfg.seed)
    run.write_table("scoreboard", board)
    sanity_table = run.read_table("sanity") if cfg.sanity and run.table_parts("sanity") else None
    ranked = verdict(faith, board, sanity_table, table, VerdictRule(seed=cfg.seed))
    run.write_table("verdict", ranked)
    log(f"verdict: {ranked.attrs['recommendation']}")
    run.update_manifest("metrics", {**{c: COLUMNS[c].to_dict() for c in board.columns if c in COLUMNS},
                                    "faithfulness": FAITHFULNESS.to_dict()})
    run.update_manifest("compare", {
        "reference": ref, "methods": list(expl), "settings": asdict(cfg), "files": files,
        "tables": ["agreement", "agreement_images", "faithfulness", "faithfulness_curves", "sanity", "scoreboard",
                   "verdict"],
        "verdict": {"recommendation": ranked.attrs["recommendation"], "rule": ranked.attrs["rule"]},
    })
    return board


def image_names(run: Run, n: int) -> list[str]:
    try:
        t = run.read_table("images")
    except RunError:
        return [f"{i:05d}" for i in range(n)]
    if "name" not in t.columns or len(t) != n:
        return [f"{i:05d}" for i in range(n)]
    return [str(v) for v in t.sort_values("index")["name"]] if "index" in t.columns else [str(v) for v in t["name"]]


def _reference(reference: str | None, methods: list[str], log: Callable[[str], None]) -> str:
    if reference is not None:
        if reference not in methods:
            raise RunError(f"reference method {reference!r} is not in the run; it has: {', '.join(methods)}")
        return reference
    if DEFAULT_REFERENCE in methods:
        return DEFAULT_REFERENCE
    log(f"reference: the run has no {DEFAULT_REFERENCE}; comparing with {methods[0]}")
    return methods[0]


def _board(
    expl: dict[str, Explanation], table: pd.DataFrame, faith: pd.DataFrame,
    sanity: dict[str, dict[str, Any]], ref: str, n: int,
) -> pd.DataFrame:
    rows = []
    for m, res in expl.items():
        f = faith[faith["method"] == m]
        pairs = table[(table["method_a"] == m) | (table["method_b"] == m)] if len(table) else table
        with_ref = pairs[(pairs["method_a"] == ref) | (pairs["method_b"] == ref)] if len(pairs) else pairs
        rows.append({
            "method": m,
            "images": n,
            "seconds": res.seconds,
            "avg_time": res.seconds / n,
            "evaluations_per_image": res.evaluations / n,
            "deletion_auc": float(f["deletion_auc"].mean()),
            "insertion_auc": float(f["insertion_auc"].mean()),
            "faithfulness_corr": float(nanmean(f["faithfulness_corr"])),
            "sanity_spearman": sanity.get(m, {}).get("sanity_spearman", float("nan")),
            "sanity": sanity.get(m, {}).get("sanity", "n/a"),
            "agreement_iou": float(pairs["iou"].mean()) if len(pairs) else float("nan"),
            "agreement_spearman": float(pairs["spearman"].mean()) if len(pairs) else float("nan"),
            "avg_iou": 1.0 if m == ref else (float(with_ref["iou"].mean()) if len(with_ref) else float("nan")),
        })
    return pd.DataFrame(rows)


def format_board(board: pd.DataFrame, reference: str) -> str:
    """The scoreboard as aligned text (what ``xailab compare`` prints)."""
    shown = board[[c for c in board.columns if not c.endswith(("_low", "_high"))]].copy()
    for c in shown.columns:
        if shown[c].dtype.kind == "f":
            shown[c] = shown[c].map(lambda v: "-" if not np.isfinite(v) else f"{v:.4g}")
    legend = f"avg_iou: IoU of the top region with {reference}; avg_time: seconds per image; " + \
        direction_legend({c: COLUMNS[c] for c in board.columns if c in COLUMNS})
    return shown.to_string(index=False) + "\n" + legend

