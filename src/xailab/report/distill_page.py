"""The distillation page: what ``xailab distill`` stored, per run.

Manifest section ``distill`` (features, classes, the surrogates' and the student's summaries,
files), tables ``distill_surrogates``, ``distill_depth``, ``distill_rules``,
``distill_class_rules``, ``distill_linear``, ``distill_student``, ``distill_maps`` and the
figures under ``files/distill/`` (copied as the command drew them). The rules are shown as text
tables, so the page says what the surrogate does even for a run made with ``--no-png``.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, kv, table
from xailab.report.writer import Site

PCT = "{:.1%}"
TOP_CLASS_RULES = 3
TOP_LINEAR = 8


def has_distill(r: ReportRun) -> bool:
    """True for a run ``xailab distill`` wrote."""
    return r.has_table("distill_surrogates")


def _fig(site: Site, r: ReportRun, rel: str, caption: str) -> str:
    """A figure the manifest names (``files/distill/x.png``, relative to the run), copied into img/."""
    if not rel.startswith("files/distill/") or not rel.endswith(".png"):
        return ""
    png = r.file(rel.removeprefix("files/"))
    return figure(site.copy(png, f"{r.slug}/{rel.removeprefix('files/')}"), caption) if png is not None else ""


def _source(info: dict[str, Any]) -> str:
    src = info.get("features") or {}
    kind = src.get("kind")
    if kind == "ice":
        return f"ICE concept {src.get('score', 'max')} scores of layer {src.get('layer')} ({src.get('n_concepts')} concepts)"
    if kind == "units":
        return f"mean activation of {src.get('units')} labelled units of layer {src.get('layer')}"
    if kind == "pixels":
        return f"colour and texture statistics of a {src.get('grid')}x{src.get('grid')} grid of regions"
    return str(kind)


def _surrogates(site: Site, r: ReportRun, info: dict[str, Any]) -> str:
    s = r.table("distill_surrogates")
    parts = [kv([("features", _source(info)), ("fitting images", info.get("n_fit")),
                  ("held-out images", info.get("n_test")),
                  ("classes", ", ".join(str(info["class_names"][k]) for k in info.get("classes", [])
                                        if k < len(info.get("class_names", []))))])]
    if s is not None:
        parts.append("<p>Fidelity is the share of held-out images on which the surrogate gives the network's class; "
                     "accuracy is against the true labels. Size: the tree's leaves (rules), the linear model's "
                     "features with a non-zero weight.</p>")
        parts.append(table(s, {"fidelity": PCT, "fit_fidelity": PCT, "accuracy": PCT, "teacher_accuracy": PCT}))
    d = r.table("distill_depth")
    files = info.get("files") or {}
    if d is not None:
        parts.append("<h3>Fidelity against the tree's depth</h3>" + _fig(site, r, files.get("depth", ""),
                     "held-out fidelity and accuracy of trees of each maximum depth, leaves annotated"))
        parts.append(table(d[["max_depth", "depth", "size", "fidelity", "accuracy"]],
                           {"fidelity": PCT, "accuracy": PCT}))
    return "".join(parts)


def _rules(site: Site, r: ReportRun, info: dict[str, Any]) -> str:
    files = info.get("files") or {}
    parts = []
    rules = r.table("distill_rules")
    if rules is not None:
        shown = rules.sort_values(["class_name", "covered"], ascending=[True, False])
        parts.append("<h3>The tree's rules</h3>" + _fig(site, r, files.get("tree", ""), "the surrogate tree"))
        parts.append(table(shown[["class_name", "conditions", "support", "covered", "coverage", "precision"]],
                           {"coverage": PCT, "precision": PCT},
                           caption="a rule per leaf; coverage and precision on held-out images"))
    cr = r.table("distill_class_rules")
    if cr is not None:
        parts.append("<h3>Rules per class</h3><p>For each class, the leaves of a one-vs-rest tree that predict it "
                     "with held-out precision of at least 50 %, most covering first; set coverage is the share of "
                     "the class's held-out predictions that some rule covers.</p>")
        top = cr[cr["rank"] < TOP_CLASS_RULES]
        parts.append(table(top[["class_name", "rank", "conditions", "coverage", "precision", "set_coverage",
                                "set_precision"]], {"coverage": PCT, "precision": PCT, "set_coverage": PCT,
                                                     "set_precision": PCT}))
        for key, rel in files.items():
            if key.startswith("rules_"):
                parts.append(_fig(site, r, rel, "held-out coverage and precision of the class's rules"))
    lin = r.table("distill_linear")
    if lin is not None:
        lin = lin.assign(size=lin["weight"].abs()).sort_values("size", ascending=False)
        top_lin = lin.groupby("class_name", sort=False).head(TOP_LINEAR).sort_values(["class", "size"],
                                                                                     ascending=[True, False])
        parts.append("<h3>Sparse linear model: largest weights per class</h3>"
                     + table(top_lin[["class_name", "feature", "weight"]], {"weight": "{:+.3f}"}))
    return "".join(parts)


def _student(site: Site, r: ReportRun, info: dict[str, Any]) -> str:
    st = r.table("distill_student")
    if st is None:
        return ""
    s = info.get("student") or {}
    cols = [c for c in ("model", "parameters", "teacher_parameters", "fidelity", "fit_fidelity", "accuracy",
                        "teacher_accuracy", "epochs", "temperature", "alpha", "cpu_seconds") if c in st]
    parts = ["<h3>Student network</h3><p>A small CNN trained on the network's soft labels (Hinton et al. 2015). "
             "Its weights are a normal model file; every method explains it:</p>",
             f"<pre>{esc(s.get('explain', ''))}</pre>",
             table(st[cols], {"fidelity": PCT, "fit_fidelity": PCT, "accuracy": PCT, "teacher_accuracy": PCT,
                              "cpu_seconds": "{:.1f}"})]
    maps = pd.DataFrame(s.get("maps") or [])
    if len(maps):
        parts.append("<p>Agreement of the student's and the teacher's attribution maps for the teacher's class "
                     "(Spearman rank correlation per held-out image):</p>"
                     + table(maps, {"mean": "{:.3f}", "median": "{:.3f}", "positive": PCT}))
        parts.append(_fig(site, r, (s.get("files") or {}).get("maps", ""), "per-image rank correlation of the maps"))
    return "".join(parts)


def distill_section(site: Site, r: ReportRun) -> str:
    """One run's surrogates, rules and student."""
    info = r.manifest.get("distill") or {}
    return _surrogates(site, r, info) + _rules(site, r, info) + _student(site, r, info)


def distill_page(site: Site, runs: list[ReportRun]) -> str:
    """The whole page: one section per distillation run."""
    return "".join(f'<h2 id="{esc(r.slug)}">{esc(r.name)}</h2>' + distill_section(site, r) for r in runs)
