"""The dissection page: what ``xailab dissect`` stored, per run and layer.

Table ``dissection`` (a row per unit: layer, unit, label, category, score, labelled, runner_up,
threshold), manifest section ``dissection`` (kind, params, concepts, files) and the figures the
command drew (``files/dissection/labels_per_layer.png``, ``gallery_<layer>.png``), copied; the
CSV is copied beside the page so it can be downloaded.
"""

from __future__ import annotations

import shutil

import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, kv, table
from xailab.report.writer import Site

TOP_UNITS = 10


def has_dissection(r: ReportRun) -> bool:
    return r.has_table("dissection")


def layer_summary(d: pd.DataFrame) -> pd.DataFrame:
    """Per layer: units, labelled, share, distinct labels, the five most frequent labels."""
    rows = []
    for layer, g in d.groupby("layer", sort=False):
        lab = g[g["labelled"].astype(bool)]
        counts = lab["label"].value_counts()
        rows.append({"layer": layer, "units": len(g), "labelled": len(lab), "share": len(lab) / max(len(g), 1),
                     "distinct labels": int(counts.size),
                     "most frequent": ", ".join(f"{k} ({v})" for k, v in counts.head(5).items())})
    return pd.DataFrame(rows)


def shown_labels(units: pd.DataFrame) -> pd.DataFrame:
    """``units`` with the label of a unit below the threshold shown as ``no clear concept (best
    guess: LABEL)``: a name is given only where the score earns it."""
    out = units.copy()
    if "labelled" in out and "label" in out:
        out["label"] = [str(lab) if bool(ok) else f"no clear concept (best guess: {lab})"
                        for lab, ok in zip(out["label"], out["labelled"], strict=True)]
    return out


def threshold_note(kind: str, threshold: object) -> str:
    """What the labelling threshold means, and a warning when it labels every unit."""
    what = "class selectivity" if kind == "classes" else "IoU"
    if not isinstance(threshold, int | float):
        return ""
    text = (f"A unit is named only when its {what} reaches {threshold:g}; below that it shows "
            "<i>no clear concept</i> with its best guess, whose images need not look like the label.")
    if kind == "classes":
        text += (" Class selectivity (Morcos et al. 2018) is (μ<sub>class</sub> − μ<sub>others</sub>) / "
                 "(μ<sub>class</sub> + μ<sub>others</sub>): 0 = the unit responds to every class alike, 1 = only "
                 "to its class; 0.3 ≈ its class draws twice the response of the others.")
        if float(threshold) <= 0:
            text += " <b>This run used threshold 0: every unit got a class, however unselective.</b>"
    else:
        text += " Bau et al. 2017 call a unit a detector from IoU 0.04."
    return f"<p class=note>{text}</p>"


def _files(r: ReportRun) -> dict[str, str]:
    files = (r.manifest.get("dissection") or {}).get("files") or {}
    return {str(k): str(v) for k, v in files.items() if isinstance(v, str)}


def _copy_rel(site: Site, r: ReportRun, rel: str, caption: str) -> str:
    """A figure of ``RUN/<rel>`` (a path the manifest gives, relative to the run) copied into img/."""
    src = (r.run.path / rel).resolve()
    root = r.run.path.resolve()
    if not src.is_file() or root not in src.parents or src.suffix != ".png":
        return ""
    return figure(site.copy(src, f"{r.slug}/dissection/{src.name}"), caption)


def dissection_section(site: Site, r: ReportRun) -> str:
    d = r.table("dissection")
    if d is None:
        return ""
    info = r.manifest.get("dissection") or {}
    params = info.get("params") or {}
    kind = info.get("kind", "concepts")
    score = "class selectivity index" if kind == "classes" else "IoU of the unit's top-activation mask with the concept"
    concepts = info.get("concepts")
    parts = [kv([
        ("labels", "classes (the class whose images activate the unit most)" if kind == "classes"
         else "concepts (Bau et al. 2017)"),
        ("score", params.get("score") or score),
        ("layers", ", ".join(map(str, dict.fromkeys(d["layer"])))),
        ("top-activation quantile", params.get("quantile")),
        ("labelled from", params.get("threshold")),
        ("concepts", len(concepts) if isinstance(concepts, list) else None),
        ("images", params.get("n_images") or params.get("images")),
        ("seconds", f"{info['seconds']:.1f}" if isinstance(info.get("seconds"), int | float) else None),
    ])]
    parts.append(threshold_note(kind, params.get("threshold")))
    parts.append("<h3>Per layer</h3>" + table(layer_summary(d), {"share": "{:.0%}"}))
    files = _files(r)
    csv = r.run.path / files.get("csv", "files/dissection/dissection.csv")
    if csv.is_file():
        dest = site.root / "data" / r.slug / "dissection.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv, dest)
        parts.append(f'<p><a href="data/{esc(r.slug)}/dissection.csv">The whole table (CSV)</a>, a row per unit.</p>')
    if "histogram" in files:
        parts.append(_copy_rel(site, r, files["histogram"], "labelled units per label, one panel per layer"))
    for layer, g in d.groupby("layer", sort=False):
        parts.append(f"<h3>{esc(layer)}</h3>")
        if f"gallery_{layer}" in files:
            parts.append(_copy_rel(site, r, files[f"gallery_{layer}"],
                                   "top units: their strongest images, the area where the unit fires outlined"))
        top = shown_labels(g.sort_values(["labelled", "score"], ascending=[False, False]).head(TOP_UNITS))
        cols = [c for c in ("unit", "label", "category", "score", "runner_up") if c in top]
        parts.append(table(top[cols], {"score": "{:.3f}"}, caption=f"the {len(top)} units of highest score"))
    return "".join(parts)


def dissection_page(site: Site, runs: list[ReportRun]) -> str:
    return "".join(f'<h2 id="{esc(r.slug)}">{esc(r.name)}</h2>' + dissection_section(site, r) for r in runs)
