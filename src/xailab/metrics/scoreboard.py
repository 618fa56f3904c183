"""The scoreboard's parts: settings, a run's explanations, image names, the printed board.

What :func:`xailab.jobs.compare.compare_run` (the job behind ``xailab compare RUN``) uses. That
job reads what ``xailab explain`` wrote (the images in
``arrays/images``, their names in table ``images``, one saved Explanation per method in
``explanations/<method>/``) and writes into the same run:

* table ``agreement``: one row per image and pair of methods (IoU of the top regions,
  Spearman, Pearson, SSIM), and ``agreement_images``: images ranked from least to most agreement;
* table ``faithfulness``: one row per image and method (deletion AUC, insertion AUC,
  faithfulness correlation), and ``faithfulness_curves``: the mean curves;
* table ``faithfulness_extra``: ROAD AUC and infidelity per image and method (the metrics of
  ``extra_metrics``), and ``metric_checks``: each per-image metric's resilience to noise and
  reactivity to shuffled maps and a randomised model (:mod:`xailab.metrics.compare_extra`);
* table ``sanity``: the cascading randomisation test, one row per method and step;
* table ``scoreboard``: one row per method (columns below);
* table ``verdict``: the methods ranked by faithfulness with intervals, paired tests, the
  sanity reason and caveats (:mod:`xailab.metrics.verdict`; its rule in the manifest);
* figures under ``files/metrics/`` and a ``compare`` section in the manifest.

Scoreboard columns: ``method, images, seconds, avg_time`` (seconds per image),
``evaluations_per_image, deletion_auc, insertion_auc, faithfulness_corr``, ``road_auc`` and
``infidelity`` (when computed), ``sanity_spearman``
(Spearman after full randomisation), ``sanity`` (passed / flagged / n/a), ``agreement_iou`` and
``agreement_spearman`` (mean over the other methods), ``avg_iou`` (mean IoU with the reference
method). Which way is better is data: :data:`~xailab.metrics.columns.COLUMNS` names the
metric behind each column (its :class:`~xailab.metrics.info.MetricInfo`), and ``compare``
writes it into the run's manifest (section ``metrics``) for the report. Each column with
per-image values has a bootstrap interval over images, ``<column>_low`` / ``<column>_high``.

A rerun with the same settings skips the per-method work already written (resume).

    from xailab.jobs.compare import compare_run
    board = compare_run("runs/cifar", model, reference="gradcam", settings=CompareSettings(top=0.1))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.metrics.columns import COLUMNS, direction_legend
from xailab.runs.store import Run, RunError

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
    #: per-image metrics beyond deletion / insertion (:data:`~xailab.metrics.compare_extra.EXTRA_METRICS`)
    extra_metrics: tuple[str, ...] = ("road", "infidelity")
    #: ROAD's removal levels (10: 5, 15, ..., 95 %) and the noise added to imputed pixels
    road_steps: int = 10
    road_noise: float = 0.01
    #: side of infidelity's squares; 0: an eighth of the image side (64 perturbations)
    infidelity_patch: int = 0
    #: checks of the metrics themselves (:mod:`xailab.metrics.meta`) on the reference's first images
    metric_checks: bool = True
    check_images: int = 16
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


def image_names(run: Run, n: int) -> list[str]:
    try:
        t = run.read_table("images")
    except RunError:
        return [f"{i:05d}" for i in range(n)]
    if "name" not in t.columns or len(t) != n:
        return [f"{i:05d}" for i in range(n)]
    return [str(v) for v in t.sort_values("index")["name"]] if "index" in t.columns else [str(v) for v in t["name"]]


def format_board(board: pd.DataFrame, reference: str) -> str:
    """The scoreboard as aligned text (what ``xailab compare`` prints)."""
    shown = board[[c for c in board.columns if not c.endswith(("_low", "_high"))]].copy()
    for c in shown.columns:
        if shown[c].dtype.kind == "f":
            shown[c] = shown[c].map(lambda v: "-" if not np.isfinite(v) else f"{v:.4g}")
    legend = f"avg_iou: IoU of the top region with {reference}; avg_time: seconds per image; " + \
        direction_legend({c: COLUMNS[c] for c in board.columns if c in COLUMNS})
    return shown.to_string(index=False) + "\n" + legend

