"""The compare job: a run's methods scored for agreement, faithfulness, sanity and time.

:func:`compare_run` reads what ``xailab explain`` wrote (the images in ``arrays/images``, their
names in table ``images``, one saved Explanation per method) and writes into the same run the
tables and figures listed in :mod:`xailab.metrics.scoreboard`, which also holds the metric
settings (:class:`~xailab.metrics.scoreboard.CompareSettings`). :func:`compare_to_run` is the
same from a :class:`CompareSpec`, with the model the run records (``xailab compare RUN``).

    board = compare_run("runs/cifar", model, reference="gradcam", settings=CompareSettings(top=0.1))
    run = compare_to_run(CompareSpec(), "runs/cifar")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_device
from xailab.core.registry import METHODS, RegistryError
from xailab.jobs.common import check_made_by, job_lock, provenance
from xailab.jobs.model import load, spec_from_config
from xailab.metrics import agreement
from xailab.metrics import metric_figures as figures
from xailab.metrics.columns import COLUMNS
from xailab.metrics.compare_extra import EXTRA_METRICS, check_extra, checks_part, extra_part
from xailab.metrics.compare_parts import explanation_key, mark_done, parts_done, sanity_part
from xailab.metrics.distribution import histogram, scatter_data
from xailab.metrics.faithfulness import faithfulness_all
from xailab.metrics.maps import nanmean
from xailab.metrics.scoreboard import CompareSettings, column, image_names, load_explanations
from xailab.metrics.verdict import FAITHFULNESS, VerdictRule, board_intervals, verdict
from xailab.runs.store import Run, RunError, atomic_write_bytes

DEFAULT_REFERENCE = "gradcam"


@dataclass(frozen=True)
class CompareSpec:
    """What ``xailab compare RUN`` is asked to do.

    Args:
        model: overrides of the run's recorded model (``name``, ``weights``, ``pretrained``,
            ``num_classes``, ``random_weights``, ``mean``, ``std``, ``input_range``, ``device``);
            the run's own model when empty.
        methods: a subset of the run's methods (default all); aliases resolved.
        backend: with a Ray backend, faithfulness (the per-image part) runs there first.
    """

    model: dict[str, Any] = field(default_factory=dict)
    settings: CompareSettings = field(default_factory=CompareSettings)
    methods: tuple[str, ...] | None = None
    reference: str | None = None
    figures: bool = True
    backend: Any = None


def compare_to_run(spec: CompareSpec, out: str | os.PathLike[str], *, log: Callable[[str], None] = print) -> Run:
    """Score the methods of explain run ``out`` with the model it records (or ``spec.model``)."""
    if not 0 < spec.settings.top <= 1:
        raise InputError(f"--top is a percentage of pixels in (0, 100], got {100 * spec.settings.top:g}")
    check_extra(spec.settings.extra_metrics)
    run = Run.open(out)
    config = run.manifest.get("config", {})
    mspec = spec_from_config(config, **spec.model)
    if not mspec.name:
        raise RunError(f"run {run.path} does not record its model; pass --model (and --weights)")
    loaded = load(mspec, log=log)
    sha = check_made_by(run, loaded.model, "compare")
    methods = [canonical(m) for m in spec.methods] if spec.methods else None
    reference = canonical(spec.reference) if spec.reference else None
    with job_lock(run.path, log):
        _forget_other_model(run, sha, log)
        run.update_manifest("compare_provenance", provenance(
            {**loaded.provenance(), "sha256": sha}, params=asdict(spec.settings)))
        if spec.backend is not None:
            from xailab.distributed.faithfulness import faithfulness_on_ray

            faithfulness_on_ray(run, loaded.model, spec.settings, backend=spec.backend, methods=methods)
        compare_run(run, loaded.model, reference=reference, methods=methods, settings=spec.settings,
                    figures_on=spec.figures, log=log)
    return run


def _forget_other_model(run: Run, sha: str, log: Callable[[str], None]) -> None:
    """Scores an earlier compare made with another model are recomputed, never reused."""
    before = ((run.manifest.get("compare_provenance") or {}).get("model") or {}).get("sha256")
    if before is not None and before != sha and run.manifest.get("compare_parts"):
        log("compare: the model differs from the one of the last compare; its scores are recomputed")
        run.update_manifest("compare_parts", {})


def canonical(name: str) -> str:
    """The registered name of a method (aliases such as ``ig`` resolved), else ``name`` as given."""
    try:
        return METHODS.canonical(name.strip())
    except RegistryError:
        return name.strip()


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
    """Compute agreement, faithfulness, sanity and the scoreboard of a run; returns the scoreboard.

    Args:
        model: the model the run explained (faithfulness and sanity need it).
        reference: the method ``avg_iou`` compares with (default: gradcam when the run has it,
            else the first method; a named method missing from the run is an error).
        methods: a subset of the run's methods (default: all).
    """
    cfg = settings or CompareSettings()
    run = path if isinstance(path, Run) else Run.open(path)
    expl = load_explanations(run, methods)
    x = torch.from_numpy(np.array(run.read_array("images"))).float().to(model_device(model))
    names = _check_lengths(run, expl, len(x))
    ref = _reference(reference, list(expl), log)
    cols = {m: column(res, cfg.target) for m, res in expl.items()}
    maps = {m: res.pixel_maps()[:, cols[m]].float() for m, res in expl.items()}
    files: list[str] = []
    table = _agreement(run, maps, names, ref, cfg, figures_on, files, log)
    faith = _faithfulness(run, model, x, expl, maps, cols, names, cfg, log)
    drops: dict[tuple[int, ...], Any] = {}  # infidelity's model evaluations, shared with the checks
    extra = extra_part(run, model, x, expl, maps, cols, names, cfg, log, drops=drops)
    if extra is not None:
        keep = ["image", "method"] + [c for c in EXTRA_METRICS.values() if c in extra]
        faith = faith.merge(extra[keep], on=["image", "method"], how="left")
    checks_part(run, model, x, expl, maps, cols, ref, cfg, log, faith=faith, drops=drops)
    if figures_on:
        _faithfulness_figures(run, list(expl), len(x), files)
    sanity_rows = sanity_part(run, model, x, expl, cols, cfg, log) if cfg.sanity else {}
    if figures_on and cfg.sanity and run.table_parts("sanity"):
        tables = {m: g for m, g in run.read_table("sanity").groupby("method", sort=False) if m in expl}
        if tables:
            files.append(_write_png(run, "sanity.png", figures.cascade_png(
                tables, threshold=cfg.sanity_threshold, title="cascading randomisation")))
    board = board_intervals(_board(expl, table, faith, sanity_rows, ref, len(x)), faith, table,
                            reference=ref, seed=cfg.seed)
    run.write_table("scoreboard", board)
    _write_verdict(run, board, faith, table, files, ref, cfg, list(expl), log)
    return board


def _write_verdict(run: Run, board: pd.DataFrame, faith: pd.DataFrame, table: pd.DataFrame, files: list[str],
                   ref: str, cfg: CompareSettings, methods: list[str], log: Callable[[str], None]) -> None:
    """Table ``verdict`` (methods ranked with intervals and tests) and the manifest sections."""
    sanity_table = run.read_table("sanity") if cfg.sanity and run.table_parts("sanity") else None
    ranked = verdict(faith, board, sanity_table, table, VerdictRule(seed=cfg.seed))
    run.write_table("verdict", ranked)
    log(f"verdict: {ranked.attrs['recommendation']}")
    run.update_manifest("metrics", {**{c: COLUMNS[c].to_dict() for c in board.columns if c in COLUMNS},
                                    "faithfulness": FAITHFULNESS.to_dict()})
    run.update_manifest("compare", {
        "reference": ref, "methods": methods, "settings": asdict(cfg), "files": files,
        "tables": ["agreement", "agreement_images", "faithfulness", "faithfulness_curves", "sanity", "scoreboard",
                   "verdict"] + (["faithfulness_extra"] if cfg.extra_metrics else [])
                  + (["metric_checks"] if cfg.metric_checks else []),
        "verdict": {"recommendation": ranked.attrs["recommendation"], "rule": ranked.attrs["rule"]},
    })


def _check_lengths(run: Run, expl: dict[str, Explanation], n: int) -> list[str]:
    """Refuse explanations that do not cover the run's ``n`` images; returns the images' names."""
    if n == 0:
        raise RunError(f"run {run.path} holds no images")
    for m, res in expl.items():
        if len(res) != n:
            raise InputError(
                f"the explanations of {m} cover {len(res)} images but run {run.path} has {n} images; "
                f"re-run `xailab explain` for {m}"
            )
    return image_names(run, n)


def _agreement(run: Run, maps: dict[str, Tensor], names: list[str], ref: str, cfg: CompareSettings,
               figures_on: bool, files: list[str], log: Callable[[str], None]) -> pd.DataFrame:
    """Table ``agreement`` (and ``agreement_images``), its figures and the histograms."""
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
    return table


def _faithfulness(run: Run, model: nn.Module, x: Tensor, expl: dict[str, Explanation], maps: dict[str, Tensor],
                  cols: dict[str, int], names: list[str], cfg: CompareSettings,
                  log: Callable[[str], None]) -> pd.DataFrame:
    """Tables ``faithfulness`` and ``faithfulness_curves`` (methods already scored are skipped)."""
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
        model, x, {m: maps[m] for m in todo}, {m: expl[m].targets[:, cols[m]].to(x.device) for m in todo},
        steps=cfg.steps, deletion_fill=cfg.deletion_fill, insertion_fill=cfg.insertion_fill,
        runs=cfg.faithfulness_runs, subset=cfg.faithfulness_subset, seed=cfg.seed, batch_size=cfg.batch_size,
    ) if todo else {}
    for m, mspec in todo.items():
        d, i, fc = scored[m].deletion, scored[m].insertion, scored[m].correlation
        run.write_table("faithfulness", pd.DataFrame({
            "image": np.arange(len(x)), "name": names, "method": m, "target": d.targets.numpy(),
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
    return faith[faith["method"].isin(list(expl))]


def _faithfulness_figures(run: Run, methods: list[str], n: int, files: list[str]) -> None:
    curves = run.read_table("faithfulness_curves")
    for kind, ylabel in (("deletion", "score (lower AUC is better)"), ("insertion", "score (higher AUC is better)")):
        better = COLUMNS[f"{kind}_auc"].direction
        sel = curves[(curves["kind"] == kind) & curves["method"].isin(methods)]
        data = {m: (g["fraction"].to_numpy(), g["score"].to_numpy()) for m, g in sel.groupby("method", sort=False)}
        files.append(_write_png(run, f"{kind}.png", figures.curves_png(data, title=f"{kind} (mean over {n} images)",
                                                                       ylabel=ylabel, better=better)))


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
            **{c: float(nanmean(f[c])) for c in EXTRA_METRICS.values() if c in f},
            "sanity_spearman": sanity.get(m, {}).get("sanity_spearman", float("nan")),
            "sanity": sanity.get(m, {}).get("sanity", "n/a"),
            "agreement_iou": float(pairs["iou"].mean()) if len(pairs) else float("nan"),
            "agreement_spearman": float(pairs["spearman"].mean()) if len(pairs) else float("nan"),
            "avg_iou": 1.0 if m == ref else (float(with_ref["iou"].mean()) if len(with_ref) else float("nan")),
        })
    return pd.DataFrame(rows)


def _write_png(run: Run, rel: str, data: bytes) -> str:
    atomic_write_bytes(run.file(f"metrics/{rel}"), data)
    return f"files/metrics/{rel}"

