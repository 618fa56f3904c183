"""Audit jobs that write into a run directory (what the ``xailab audit`` actions call).

* :func:`adversarial_images`: attack, explain clean and attacked images, measure the shift; tables
  ``attack`` (per image), ``shift`` (per image, method, target) and ``shift_summary``; arrays
  ``clean``, ``adversarial`` (pixels) and ``patch_mask``; explanations
  ``explanations/<method>.clean`` and ``<method>.adversarial``; PNGs ``files/audit/shift_NNNN.png``;
  manifest section ``adversarial`` (settings and summary).
* :func:`backdoor_dataset`: detection; tables ``detection`` (one row per class: each detector's
  score and flag, votes, verdict, region, the evidence in words) and ``detectors`` (one row per
  detector and class: score, threshold, p-value, flag), arrays ``mean_maps`` (``[classes, 2, H,
  W]``: suspected items, rest; NaN for a class that is not flagged; written when maps were
  computed) and ``clusters_<c>`` (item index, suspected, how many detectors suspect it); PNGs
  ``files/backdoor/scores.png`` and ``files/backdoor/class_<c>.png``; manifest section
  ``backdoor_detection`` (detectors, rule, flagged classes, regions, verdicts, evidence).

    run = adversarial_images(model, pixels, labels, attack="patch", attack_params={"size": 5},
                             methods=["saliency"], out="runs/adv")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.audit.adversarial import run_attack
from xailab.audit.result import AttackResult
from xailab.audit.shift import ShiftResult, explanation_shift
from xailab.audit.verdict import DetectionReport, detect_backdoor
from xailab.runs.store import Run


def adversarial_images(
    model: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    *,
    attack: str,
    attack_params: Mapping[str, Any],
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]],
    targets: Sequence[str] = ("top1",),
    out: str | Any,
    class_names: Sequence[str] | None = None,
    png: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    config: Mapping[str, Any] | None = None,
) -> tuple[Run, AttackResult, ShiftResult | None]:
    """Attack ``images`` (pixels in [0, 1]), explain both versions, write it all to ``out``."""
    from xailab.audit.audit_figures import shift_figure
    from xailab.plotting import save_png

    result = run_attack(attack, model, images, labels, **dict(attack_params))
    run = out if isinstance(out, Run) else Run.create(out, kind="audit", config=dict(config or {}))
    run.write_table("attack", result.table())
    run.write_array("clean", result.clean.float())
    run.write_array("adversarial", result.adversarial.float())
    if result.mask is not None:
        run.write_array("patch_mask", result.mask)
    shift = None
    if methods:
        shift = explanation_shift(model, result, methods, targets=targets, batch_size=batch_size, seed=seed)
        run.write_table("shift", shift.table)
        run.write_table("shift_summary", shift.summary())
        for name in shift.clean:
            shift.clean[name].save(run.path / "explanations" / f"{name}.clean")
            shift.adversarial[name].save(run.path / "explanations" / f"{name}.adversarial")
        order = np.argsort(~result.success.numpy(), kind="stable")  # successful attacks first
        for i in order[: max(0, png)]:
            save_png(shift_figure(result, shift, int(i), class_names), run.file(f"audit/shift_{int(i):04d}.png"))
    summary = result.summary()
    if shift is not None:
        summary["shift"] = shift.summary().to_dict(orient="records")
    run.update_manifest("adversarial", {"attack": attack, "params": result.params, "summary": summary,
                                        "classes": list(class_names) if class_names is not None else None})
    return run, result, shift


def backdoor_dataset(
    model: nn.Module,
    dataset: Any,
    *,
    out: str | Any,
    display: Callable[[Tensor], Tensor] | None = None,
    config: Mapping[str, Any] | None = None,
    png: bool = True,
    truth: Tensor | None = None,
    **detect: Any,
) -> tuple[Run, DetectionReport]:
    """Run :func:`detect_backdoor` on ``dataset`` and write the evidence into ``out``.

    ``display`` turns the dataset's items back into pixels for the figures (default
    ``dataset.denormalize``); ``truth`` (bool ``[len(dataset)]``, e.g. ``PoisonedDataset.poisoned``)
    adds, when known, how many truly poisoned items each class and its suspicious cluster hold.
    """
    from xailab.audit.audit_figures import cluster_figure, scores_figure
    from xailab.audit.detection import dataset_items
    from xailab.plotting import save_png

    report = detect_backdoor(model, dataset, **detect)
    table = report.table.copy()
    if truth is not None:
        t = torch.as_tensor(truth, dtype=torch.bool)
        counts = {}
        for e in report.classes:
            p = t[torch.as_tensor(e.indices)].numpy()
            counts[e.label] = (int(p.sum()), int((p & e.suspicious).sum()))
        table["poisoned_n"] = [counts.get(int(c), (0, 0))[0] for c in table["class"]]
        table["poisoned_in_suspicious"] = [counts.get(int(c), (0, 0))[1] for c in table["class"]]
    run = out if isinstance(out, Run) else Run.create(out, kind="audit", config=dict(config or {}))
    run.write_table("detection", table)
    run.write_table("detectors", pd.concat([r.table() for r in report.results.values()], ignore_index=True))
    shape = next((e.maps.shape[1:] for e in report.classes if e.maps is not None), None)
    if report.classes and shape is not None:
        nan = torch.full(tuple(shape), float("nan"))
        run.write_array("mean_maps", torch.stack([torch.stack([
            e.mean_small if e.mean_small is not None else nan, e.mean_rest if e.mean_rest is not None else nan])
            for e in report.classes]))
    for e in report.classes:
        run.write_array(f"clusters_{e.label}", np.stack([e.indices, e.suspicious.astype(np.int64), e.votes], axis=1))
    if png:
        to_pixels = display or getattr(dataset, "denormalize", None) or (lambda x: x)
        if report.classes:  # no class had items enough to examine: no scores to draw
            save_png(scores_figure(report), run.file("backdoor/scores.png"))
        for e in report.classes:
            imgs = to_pixels(dataset_items(dataset, e.indices)).clamp(0, 1)
            save_png(cluster_figure(e, imgs, e.name), run.file(f"backdoor/class_{e.label}.png"))
    run.update_manifest("backdoor_detection", {
        "params": report.params, "flagged": report.flagged,
        "flagged_names": [e.name for e in report.classes if e.flagged],
        "regions": {str(e.label): e.region for e in report.classes if e.flagged},
        "verdicts": {str(e.label): e.verdict for e in report.classes},
        "evidence": {str(e.label): e.describe() for e in report.classes},
        "seconds": report.seconds,
    })
    return run, report


def summary_frame(report: DetectionReport) -> pd.DataFrame:
    """The columns of the detection table a person reads first."""
    scores = [c for c in report.table.columns if c.endswith("_score")]
    cols = ["class", "name", "n", *scores, "votes", "verdict", "suspicious_n", "region"]
    return report.table[[c for c in cols if c in report.table]]
