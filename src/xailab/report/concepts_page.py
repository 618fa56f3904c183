"""The concepts page: what ``xailab concepts`` stored (ICE concepts of a layer, TCAV scores).

ICE (``concepts ice``): manifest section ``ice``, tables ``ice_importance`` (per concept and
class), ``ice_concepts``, ``ice_fidelity``, ``ice_explanations`` (``concepts explain``) and the
figures under ``files/ice/``. TCAV (``concepts tcav``): table ``tcav``, manifest ``tcav``,
``files/tcav/scores.png``. Figures are copied as the command drew them; the per-class matrices
are drawn as shaded tables, so the page says something even for a run made with ``--no-png``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, heat_table, kv, table
from xailab.report.writer import Site

ICE_FIGURES = [
    ("overview.png", "each row a concept: the images where it is strongest, its map over them"),
    ("patches.png", "each row a concept: the image patches around its strongest position"),
    ("contribution.png", "contribution (concept score x gradient of the class logit) per class"),
    ("presence.png", "share of each class's images in which the concept is present"),
    ("sensitivity.png", "sensitivity (gradient of the class logit along the concept) per class"),
]


def has_ice(r: ReportRun) -> bool:
    return r.has_table("ice_importance")


def has_tcav(r: ReportRun) -> bool:
    return r.has_table("tcav")


def has_concepts(r: ReportRun) -> bool:
    return has_ice(r) or has_tcav(r)


def _matrix(imp: pd.DataFrame, value: str) -> pd.DataFrame:
    name = "class_name" if "class_name" in imp else "class"
    m = imp.pivot_table(index="concept", columns=name, values=value, aggfunc="mean", sort=False)
    m.index = [f"concept {int(c)}" for c in m.index]
    m.columns = [str(c) for c in m.columns]
    return m


def _range(m: pd.DataFrame) -> tuple[float, float]:
    v = m.to_numpy(dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return 0.0, 1.0
    return min(0.0, float(v.min())), max(float(v.max()), 1e-12)


def _copy(site: Site, r: ReportRun, rel: str, caption: str) -> str:
    png = r.file(rel)
    return figure(site.copy(png, f"{r.slug}/{rel}"), caption) if png is not None else ""


def ice_section(site: Site, r: ReportRun) -> str:
    info = r.manifest.get("ice") or {}
    fid = info.get("fidelity") or {}
    parts = [kv([
        ("layer", info.get("layer")), ("concepts", info.get("n_concepts")), ("channels", info.get("channels")),
        ("images", info.get("n_images")), ("fitting passes", info.get("epochs")), ("seed", info.get("seed")),
        ("presence threshold", info.get("presence")),
        ("top-1 agreement with the model", f"{fid['top1_agreement']:.3f}" if "top1_agreement" in fid else None),
        ("mean |logit error|", f"{fid['mean_abs_logit_error']:.3g}" if "mean_abs_logit_error" in fid else None),
        ("reconstruction error", f"{fid['reconstruction_error']:.3f}" if "reconstruction_error" in fid else None),
        ("seconds", f"{info['seconds']:.1f}" if isinstance(info.get("seconds"), int | float) else None),
    ])]
    parts.append("<p class=note>ICE (Zhang et al. 2021, \"Invertible Concept-based Explanations\") factorises the "
                 "layer's activations V ≈ S P by non-negative matrix factorisation: each row of P is a concept "
                 "direction, S its score at every position. Fidelity: the model run with the layer replaced by "
                 "S P.</p>"
                 "<p class=note>Reading the fidelity: <b>top-1 agreement</b> is the share of images on which the "
                 "model still predicts the same class with the layer replaced by its concepts (1 = the concepts "
                 "carry everything the model uses; below about 0.9 the concepts miss part of it). <b>Reconstruction "
                 "error</b> is ‖V − S P‖ / ‖V‖: 0 = exact, 1 = no better than all zeros; 0.3 or less keeps most "
                 "of the activations. A few concepts rarely reach both: prefer the number where agreement "
                 "stops rising in the curve below.</p>")
    imp = r.table("ice_importance")
    if imp is not None:
        for value, title, spec in (("contribution", "Contribution per class", "{:.3g}"),
                                   ("presence", "Presence per class", "{:.0%}")):
            if value in imp:
                m = _matrix(imp, value)
                lo, hi = (0.0, 1.0) if value == "presence" else _range(m)
                parts.append(f"<h4>{esc(title)}</h4>" + heat_table(m, lo=lo, hi=hi, spec=spec))
    con = r.table("ice_concepts")
    if con is not None:
        parts.append("<h4>Concepts</h4>" + table(con, {"threshold": "{:.3g}", "present_fraction": "{:.1%}",
                                                      "mean_score": "{:.3g}", "max_score": "{:.3g}"}))
    figs = [_copy(site, r, f"ice/{f}", cap) for f, cap in ICE_FIGURES]
    if any(figs):
        parts.append("<h4>Figures</h4>" + "".join(figs))
    curve = r.table("ice_fidelity")
    if curve is not None:
        parts.append("<h4>Fidelity against the number of concepts</h4><p class=note>More concepts always "
                     "reconstruct better; look for the knee: the smallest number after which top-1 agreement "
                     "hardly rises (good: close to 1) and the errors hardly fall. With only two points on the "
                     "curve there is no knee to see: ask for more (<code>--curve 2,4,6,8,12</code>).</p>"
                     + _copy(site, r, "ice/fidelity.png", "top-1 agreement, logit error and reconstruction "
                                                          "error; dashed: the number chosen")
                     + table(curve, {c: "{:.3f}" for c in curve.columns if curve[c].dtype.kind == "f" and not c.startswith("n_")}))
    galleries = sorted((r.run.path / "files" / "ice").glob("gallery_*.png"))
    if galleries:
        parts.append("<h4>Galleries</h4><p class=note>Per concept: the images where it is strongest (top) "
                     "and weakest (bottom), its map over them; titles: class and score.</p>")
        for g in galleries:
            if re.fullmatch(r"gallery_\d+\.png", g.name):
                parts.append(_copy(site, r, f"ice/{g.name}", f"concept {int(g.stem.split('_')[1])}"))
    ex = r.table("ice_explanations")
    if ex is not None and {"name", "concept", "contribution"} <= set(ex.columns):
        top = ex.loc[ex.groupby("name", sort=False)["contribution"].idxmax()]
        parts.append("<h4>New images (concepts explain)</h4>"
                     + table(top[[c for c in ("name", "target", "concept", "score", "contribution") if c in top]],
                             {"score": "{:.3g}", "contribution": "{:.3g}"},
                             caption="the concept adding most to each image's predicted class"))
        folder = r.run.path / "files" / "ice" / "explain"
        for png in sorted(folder.glob("*.png"))[:24] if folder.is_dir() else []:
            if not png.name.startswith("."):
                parts.append(_copy(site, r, f"ice/explain/{png.name}", png.stem))
    return "".join(parts)


def tcav_section(site: Site, r: ReportRun) -> str:
    tc = r.table("tcav")
    if tc is None:
        return ""
    info = r.manifest.get("tcav") or {}
    parts = [kv([("layer", info.get("layer")), ("CAVs per concept", info.get("n_runs")),
                 ("seconds", f"{info['seconds']:.1f}" if isinstance(info.get("seconds"), int | float) else None)])]
    parts.append("<p class=note>TCAV (Kim et al. 2018): the share of a class's images whose logit grows along "
                 "the concept's activation vector, over several CAVs each trained against a different random "
                 "set; a pair is significant when its scores differ from those of random-vs-random CAVs "
                 "(two-sided t-test, Bonferroni-corrected).</p>")
    if {"concept", "class_name", "score_mean"} <= set(tc.columns):
        m = tc.pivot_table(index="concept", columns="class_name", values="score_mean", aggfunc="mean", sort=False)
        m.index, m.columns = [str(c) for c in m.index], [str(c) for c in m.columns]
        parts.append("<h4>Mean TCAV score (concept × class)</h4>" + heat_table(m, lo=0.0, hi=1.0))
    parts.append(_copy(site, r, "tcav/scores.png", "TCAV scores (mean ± std) beside random CAVs' scores; "
                                                    "* significant"))
    cols = [c for c in ("concept", "class_name", "n_images", "score_mean", "score_std", "random_mean",
                        "random_std", "p_value", "significant", "cav_accuracy") if c in tc]
    parts.append(table(tc[cols], {c: "{:.3f}" for c in cols if c not in ("concept", "class_name", "n_images",
                                                                       "significant", "p_value")}
                       | {"p_value": "{:.3g}"}))
    return "".join(parts)


def concepts_page(site: Site, runs: list[ReportRun]) -> str:
    parts = []
    for r in runs:
        parts.append(f'<h2 id="{esc(r.slug)}">{esc(r.name)}</h2>')
        if has_ice(r):
            parts.append("<h3>ICE concepts</h3>" + ice_section(site, r))
        if has_tcav(r):
            parts.append(f'<h3 id="{esc(r.slug)}-tcav">TCAV</h3>' + tcav_section(site, r))
    return "".join(parts)
