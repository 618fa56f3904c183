"""Finding a backdoor from a model and its training data, without knowing the trigger.

:func:`detect_backdoor` runs the chosen detectors (:mod:`xailab.audit.detectors`: spectral
signatures, SCAn, activation clustering, SpRAy, ...) on every class, combines their flags by a
rule (:mod:`xailab.audit.ensemble`) into one verdict per class, and for every flagged class
finds the suspected items and the region their explanations rely on. Clean classes get no
suspected items and no region.

    report = detect_backdoor(model, train_set, detectors=("spectral", "scan", "ac", "spray"), rule="majority")
    report.table                   # one row per class: each detector's score and flag, votes, verdict, region
    report.flagged                 # class indices flagged
    report.evidence(7).describe()   # the verdict in words: which detector found what
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.audit.detection import explain_class, map_features, relied_region
from xailab.audit.detectors import (
    AuditData,
    ClassFinding,
    DetectorResult,
    detector_info,
    run_detector,
)
from xailab.audit.ensemble import Rule, parse_rule
from xailab.core.errors import InputError

DEFAULT_DETECTORS = ("spectral", "scan", "ac", "spray")
DEFAULT_RULE = "majority"


@dataclass
class ClassEvidence:
    """What the detectors saw in one class, and the verdict the rule gives it."""

    label: int
    name: str
    indices: np.ndarray                     # items of the dataset analysed
    findings: dict[str, ClassFinding]       # per detector
    flagged: bool
    verdict: str                            # backdoor | flagged | check | clean
    suspicious: np.ndarray                  # [n] bool, the suspected items (none unless flagged)
    votes: np.ndarray                       # [n] how many detectors suspect each item
    region: tuple[int, int, int, int] | None = None   # top, left, bottom, right (inclusive) or None
    region_share: float = float("nan")
    maps: Tensor | None = field(repr=False, default=None)      # [n, H, W] unit-sum maps, when computed
    mean_small: Tensor | None = field(repr=False, default=None)
    mean_rest: Tensor | None = field(repr=False, default=None)

    @property
    def fired(self) -> list[str]:
        return [d for d, f in self.findings.items() if f.flagged]

    def describe(self) -> str:
        """The verdict in words: which detector fired with what score against its threshold (and
        its p-value, for the detectors that have one)."""
        parts = [f"{d} {f.score:.3g} {'>=' if f.flagged else '<'} {f.threshold:.3g}"
                 + (f" (p = {f.p_value:.2g})" if f.p_value == f.p_value else "")
                 for d, f in self.findings.items()]
        head = f"class {self.label} ({self.name}): {self.verdict}"
        if self.flagged:
            head += f", {int(self.suspicious.sum())} of {len(self.indices)} items suspected"
            if self.region is not None:
                t, left, b, r = self.region
                head += f", explanations rely on rows {t}-{b}, columns {left}-{r}"
        return f"{head} [{'; '.join(parts)}]"

    def order(self) -> np.ndarray:
        """Positions of the items, most suspected first (votes, then the detectors' own order)."""
        return np.argsort(-self.votes, kind="stable")


@dataclass
class DetectionReport:
    """Backdoor detection over classes: evidence per class, the detectors' results, the table, the settings."""

    classes: list[ClassEvidence]
    results: dict[str, DetectorResult]
    table: pd.DataFrame
    params: dict[str, Any]
    seconds: float

    @property
    def flagged(self) -> list[int]:
        return [c.label for c in self.classes if c.flagged]

    def evidence(self, label: int) -> ClassEvidence:
        for c in self.classes:
            if c.label == label:
                return c
        raise InputError(f"class {label} was not analysed (analysed: {[c.label for c in self.classes]})")

    def format(self) -> str:
        cols = [c for c in self.table.columns if c.endswith("_score")]
        return self.table[["class", "name", "n", *cols, "votes", "verdict", "region"]].to_string(
            index=False, float_format=lambda v: f"{v:.3f}")


def detect_backdoor(
    model: nn.Module,
    dataset: Any,
    *,
    classes: Sequence[Any] | None = None,
    detectors: Sequence[str] = DEFAULT_DETECTORS,
    rule: str = DEFAULT_RULE,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    method: str = "lrp",
    method_params: dict[str, Any] | None = None,
    max_per_class: int | None = 500,
    layer: str | None = "auto",
    region: bool = True,
    batch_size: int = 128,
    seed: int = 0,
) -> DetectionReport:
    """Run ``detectors`` on every class (or ``classes``) of ``dataset`` and combine them by ``rule``.

    Args:
        model: the suspected model.
        dataset: its training data, items as the model takes them (normalised).
        detectors: registered detector names (:func:`xailab.audit.detectors.available_detectors`).
        rule: how their flags combine (:func:`xailab.audit.ensemble.parse_rule`).
        params: per detector, its keyword arguments (e.g. ``{"ac": {"reduce": "ica"}}``).
        method, method_params: the explanation method of SpRAy and of the flagged classes' regions.
        max_per_class: analyse at most this many items of a class (a seeded random sample).
        layer: whose activations the activation detectors read (``"auto"``: the penultimate dense layer).
        region: explain flagged classes to locate the region their suspected items rely on.
    """
    t0 = time.perf_counter()
    names = tuple(dict.fromkeys(str(d).strip().lower() for d in detectors if str(d).strip()))
    if not names:
        raise InputError("give at least one detector")
    for d in names:
        detector_info(d)
    r = parse_rule(rule, names)
    data = AuditData(model, dataset, classes=classes, max_per_class=max_per_class, layer=layer,
                     batch_size=batch_size, seed=seed)
    extra = {k: dict(v) for k, v in (params or {}).items()}
    extra.setdefault("spray", {}).update({"method": method, "method_params": dict(method_params or {})})
    results = {d: run_detector(d, data, **extra.get(d, {})) for d in names}
    evidence = [_combine(data, c, results, r, method, dict(method_params or {}), region)
                for c in data.labels if any(f.label == c for res in results.values() for f in res.findings)]
    if not evidence:  # every detector skipped every class: too few items, not "no backdoor"
        sizes = ", ".join(f"{data.names[c]} {len(data.indices[c])}" for c in data.labels)
        raise InputError(f"no class has enough items for the detectors {', '.join(names)} (items a class: {sizes}); "
                         "give more training items (a larger --max-per-class or training set)")
    table = pd.DataFrame([_row(e, results, r) for e in evidence])
    used = {"detectors": list(names), "rule": r.spec, "rule_text": r.describe(len(names)), "method": method,
            "method_params": dict(method_params or {}), "max_per_class": max_per_class, "layer": layer, "seed": seed,
            "detector_params": {d: _plain(res.params) for d, res in results.items()},
            "evidence": {d: res.evidence for d, res in results.items()}}
    return DetectionReport(evidence, results, table, used, time.perf_counter() - t0)


def _combine(data: AuditData, c: int, results: dict[str, DetectorResult], rule: Rule, method: str,
             method_params: dict[str, Any], want_region: bool) -> ClassEvidence:
    """One class's verdict from the detectors' findings."""
    found = {d: res.finding(c) for d, res in results.items() if any(f.label == c for f in res.findings)}
    fired = tuple(d for d, f in found.items() if f.flagged)
    flagged = rule.flags(len(fired), len(found), fired)
    verdict = ("backdoor" if len(fired) == len(found) else "flagged") if flagged else ("check" if fired else "clean")
    idx = data.indices[c]
    votes = np.zeros(len(idx), dtype=np.int64)
    for d in fired:
        if len(found[d].suspected) == len(idx):
            votes += np.asarray(found[d].suspected, dtype=np.int64)
    need = max(1, -(-len(fired) // 2))  # at least half of the flagging detectors
    suspicious = (votes >= need) if flagged else np.zeros(len(idx), dtype=bool)
    spray = found.get("spray")
    maps = spray.extra.get("maps") if spray is not None else None
    ev = ClassEvidence(c, data.names[c], idx, found, flagged, verdict, suspicious, votes, maps=maps)
    if flagged and suspicious.any() and (~suspicious).any() and (maps is not None or want_region):
        if maps is None:
            raw = explain_class(data.model, data.inputs(c), c, method, method_params, data.batch_size, data.seed)
            maps = map_features(raw)[0]
        small = torch.from_numpy(suspicious)
        ev.maps, ev.mean_small, ev.mean_rest = maps, maps[small].mean(dim=0), maps[~small].mean(dim=0)
        ev.region, ev.region_share = relied_region(ev.mean_small, ev.mean_rest)
    return ev


def _row(e: ClassEvidence, results: dict[str, DetectorResult], rule: Rule) -> dict[str, Any]:
    row: dict[str, Any] = {"class": e.label, "name": e.name, "n": len(e.indices)}
    for d, f in e.findings.items():
        row[f"{d}_score"], row[f"{d}_flag"] = f.score, f.flagged
    spray, ac = e.findings.get("spray"), e.findings.get("ac")
    if spray is not None:  # the columns of earlier versions, which the report reads
        row.update(spray_k=spray.extra.get("k"), spray_gap=spray.extra.get("gap_score"),
                   spray_small_share=spray.extra.get("small_share"))
    if ac is not None:
        row.update(ac_small_share=ac.extra.get("small_share"), ac_silhouette=ac.extra.get("silhouette"))
    row.update(votes=len(e.fired), voters=len(e.findings), rule=rule.spec, flagged=e.flagged, verdict=e.verdict,
               region="" if e.region is None else "{},{}-{},{}".format(*e.region), region_share=e.region_share,
               suspicious_n=int(e.suspicious.sum()), fired=",".join(e.fired), evidence=e.describe())
    return row


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-friendly copy of a detector's settings."""
    return {k: v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)
            for k, v in params.items()}
