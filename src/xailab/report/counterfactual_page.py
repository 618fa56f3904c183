"""The Counterfactuals page: what ``xailab counterfactual`` stored.

Per run: a sentence per kind built from the run's numbers (how many images flipped, how far),
the summary per kind (validity, median proximity, regions or concepts, plausibility, model
evaluations, time), the figures ``files/counterfactuals/<image>_<kind>.png`` (image |
counterfactual | difference, and for prototypes the nearest image of the predicted class),
grouped per image so the kinds of one image sit side by side, the concept edits, and the
per-image table with each search's status ("not found within N steps" is an answer, not an error).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, table
from xailab.report.writer import Site

SUMMARY = {"validity": "{:.0%}", "median_l2": "{:.3f}", "median_l1": "{:.2f}", "median_changed_pixels": "{:.0f}",
           "median_regions": "{:.1f}", "median_concepts": "{:.1f}", "median_plausibility": "{:.2f}",
           "median_evaluations": "{:.0f}", "seconds": "{:.1f}"}
ROWS = ["name", "kind", "original_name", "target_name", "counterfactual_name", "valid", "status", "l2",
        "changed_pixels", "regions", "concepts", "edits", "plausibility", "evaluations"]
WHAT = {"pixel": "optimised in pixel space", "region": "superpixels replaced",
        "prototype": "nearest training image of the target class", "concept": "concepts removed or added"}


def has_counterfactuals(r: ReportRun) -> bool:
    """Whether ``r`` is a counterfactual run with its table."""
    return "counterfactual" in r.manifest and r.has_table("counterfactuals")


def _sentence(s: dict[str, Any], target: str) -> str:
    kind = str(s.get("kind"))
    text = (f"<b>{esc(kind)}</b> ({esc(WHAT.get(kind, ''))}): {esc(s.get('valid'))} of {esc(s.get('n'))} images "
            f"reached target <i>{esc(target)}</i>")
    extra = []
    for key, label in (("median_l2", "median L2 {:.2f}"), ("median_changed_pixels", "median {:.0f} pixels changed"),
                       ("median_regions", "median {:.1f} superpixels"), ("median_concepts", "median {:.1f} concepts"),
                       ("median_plausibility", "plausibility {:.2f} (1 = as typical as the class's own images)")):
        v = s.get(key)
        if isinstance(v, int | float) and v == v:
            extra.append(label.format(v))
    return text + (": " + ", ".join(esc(e) for e in extra) if extra else "") + "."


def run_section(site: Site, r: ReportRun) -> str:
    """One run's part of the page."""
    info = r.manifest.get("counterfactual") or {}
    summary = [dict(s) for s in info.get("summary") or []]
    target = str(info.get("target", "?"))
    parts = [f'<h2 id="{esc(r.slug)}">{esc(r.name)}</h2>',
             "<ul>" + "".join(f"<li>{_sentence(s, target)}</li>" for s in summary) + "</ul>"]
    if summary:
        df = pd.DataFrame(summary)
        cols = ["kind", "n", "valid"] + [c for c in SUMMARY if c in df.columns]
        parts.append("<h3>Summary</h3><p class=note>Medians over the valid counterfactuals. L1, L2 and changed "
                     "pixels are in pixels in [0, 1] (a pixel counts when it moved by more than one grey level); "
                     "plausibility is the distance in the model's feature space to the nearest training images "
                     "of the new class over that class's own typical distance.</p>" + table(df[cols], SUMMARY))
    figs = _figures(site, r)
    if figs:
        parts.append("<h3>Image | counterfactual | difference</h3>" + figs)
    cf = r.table("counterfactuals")
    if cf is not None:
        if "edits" in cf and cf["edits"].astype(str).str.len().gt(0).any():
            conc = cf[cf["kind"] == "concept"]
            parts.append("<h3>Concept edits</h3><p class=note>-cN: concept N removed from the layer, +cN: added at "
                         "the target class's mean strength.</p>" +
                         table(conc[[c for c in ("name", "original_name", "counterfactual_name", "edits", "status")
                                     if c in conc]]))
        cols = [c for c in ROWS if c in cf.columns]
        parts.append("<h3>Per image</h3>" + table(cf[cols].head(200), {"l2": "{:.3f}", "plausibility": "{:.2f}"}))
    return "".join(parts)


def _figures(site: Site, r: ReportRun) -> str:
    folder = r.run.path / "files" / "counterfactuals"
    if not folder.is_dir():
        return ""
    out = []
    for p in sorted(folder.glob("*.png")):
        m = re.fullmatch(r"(\d+)_(\w+)\.png", p.name)
        if m:
            src = site.copy(p, f"{r.slug}/counterfactuals/{p.name}")
            out.append(figure(src, f"image {int(m.group(1))}, {m.group(2)}"))
    return "".join(out)


def counterfactual_page(site: Site, runs: list[ReportRun]) -> str:
    """The page's body over every counterfactual run."""
    intro = ("<p>A counterfactual is the smallest change to an image that changes the model's decision "
             "(Wachter et al. 2017): where the attribution maps say where the model looks, these say what "
             "would flip it. An image the search could not flip within its budget is listed as "
             "&ldquo;not found&rdquo;.</p>")
    return intro + "".join(run_section(site, r) for r in runs)
