"""The comparison section of an explain run: what ``xailab compare`` wrote, shown.

Tables ``scoreboard``, ``agreement``, ``faithfulness``, ``sanity`` and the figures under
``files/metrics/``; absent tables leave their part out, a run never compared gives ``""``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, heat_table, kv, table
from xailab.report.verdict_section import metric_checks_section, scoreboard_table, verdict_section
from xailab.report.writer import Site

FIGURES = [
    ("agreement_iou.png", "mean IoU of the top regions, every pair of methods"),
    ("agreement_spearman.png", "mean Spearman rank correlation, every pair of methods"),
    ("deletion.png", "deletion curves: score as the most important pixels are removed (lower area is better)"),
    ("insertion.png", "insertion curves: score as the most important pixels are restored (higher area is better)"),
    ("histograms.png", "histograms of the attribution values"),
]


def has_comparison(r: ReportRun) -> bool:
    tables = set(r.run.tables())
    return bool(tables & {"scoreboard", "agreement", "faithfulness", "sanity"}) or (
        (r.run.path / "files" / "metrics").is_dir())


def agreement_matrix(agreement: pd.DataFrame, column: str = "iou") -> pd.DataFrame:
    """Methods x methods mean of ``column`` (both orders filled; the diagonal is 1)."""
    a = agreement[["method_a", "method_b", column]]
    both = pd.concat([a, a.rename(columns={"method_a": "method_b", "method_b": "method_a"})])
    m = both.groupby(["method_a", "method_b"])[column].mean().unstack()
    names = sorted(set(m.index) | set(m.columns))
    m = m.reindex(index=names, columns=names)
    for name in names:
        m.loc[name, name] = 1.0
    m.index.name = None
    m.columns.name = None
    return m


def directions(r: ReportRun, columns: list[str]) -> str:
    """Which way is better for each of ``columns``, from the run's ``metrics`` section (what each
    metric declares about itself): `` Lower is better: a (faithfulness); higher is better: b.``,
    or ``""`` for a run compared before the section existed."""
    declared = r.manifest.get("metrics") or {}
    parts = []
    for direction in ("lower", "higher"):
        names = [f"{c} ({declared[c].get('category', '?')})" for c in columns
                 if isinstance(declared.get(c), dict) and declared[c].get("direction") == direction]
        if names:
            parts.append(f"{direction} is better: {', '.join(names)}")
    text = "; ".join(parts)
    return f" {text[:1].upper()}{text[1:]}." if parts else ""


def _figures(site: Site, r: ReportRun, agreement_shown: bool) -> list[str]:
    """The compare job's figures (those shown as tables already left out), then its scatter plots."""
    parts, figs = [], []
    folder = r.run.path / "files" / "metrics"
    known = {f for f, _ in FIGURES}
    for fname, caption in FIGURES:
        if fname.startswith("agreement_") and agreement_shown:
            continue  # shown above as a table
        png = folder / fname
        if png.is_file():
            figs.append(figure(site.copy(png, f"{r.slug}/metrics/{fname}"), caption))
    scatters = []
    if folder.is_dir():
        for png in sorted(folder.glob("*.png")):
            if png.name not in known and not png.name.startswith("."):
                label = png.stem.replace("scatter_", "").replace("_", " ")
                scatters.append(figure(site.copy(png, f"{r.slug}/metrics/{png.name}"), label))
    if figs:
        parts.append("<h3>Figures</h3>" + "".join(figs))
    if scatters:
        parts.append("<h3>Scatter plots</h3><p class=note>Pixel attributions of two methods against each "
                     "other.</p>" + "".join(scatters))
    return parts


def comparison_section(site: Site, r: ReportRun) -> str:
    if not has_comparison(r):
        return ""
    parts: list[str] = []
    settings = (r.manifest.get("compare") or {}).get("settings") or {}
    ref = (r.manifest.get("compare") or {}).get("reference")
    if settings or ref:
        parts.append(kv([("reference method (avg_iou)", ref),
                         ("top region", f"{settings['top']:.0%} of pixels" if "top" in settings else None),
                         ("deletion/insertion steps", settings.get("steps")),
                         ("target column scored", settings.get("target")),
                         ("sanity test", "run" if settings.get("sanity") else ("skipped" if settings else None))]))
    parts.append(verdict_section(r))
    board = r.table("scoreboard")
    if board is not None:
        parts.append("<h3>Scoreboard</h3><p class=note>Hover a header for its full name. IoU ref.: IoU of the "
                     "top region with the reference method; sanity: whether the maps change when the model's weights "
                     "are randomised (ρ random: their Spearman correlation afterwards); "
                     "[low, high]: bootstrap interval over images (time is measured once per run: no interval); "
                     f"highlighted: the best value of a column.{esc(directions(r, list(board.columns)))}</p>"
                     + scoreboard_table(r, board))
    parts.append(metric_checks_section(r))
    agreement = r.table("agreement")
    if agreement is not None and {"method_a", "method_b"} <= set(agreement.columns):
        for col, what in (("iou", "IoU of the top regions"), ("spearman", "Spearman rank correlation")):
            if col in agreement:
                m = agreement_matrix(agreement, col)
                lo = 0.0 if col == "iou" else min(0.0, float(np.nanmin(m.to_numpy())))
                parts.append(f"<h3>Agreement: {esc(what)}</h3><p class=note>Mean over the images.</p>"
                             + heat_table(m, lo=lo, hi=1.0))
        ranked = r.table("agreement_images")
        if ranked is not None:
            parts.append("<h3>Images by agreement</h3><p class=note>Least agreement first.</p>"
                         + table(ranked.head(20)))
    faith = r.table("faithfulness")
    if faith is not None and "method" in faith:
        cols = [c for c in ("deletion_auc", "insertion_auc", "faithfulness_corr") if c in faith]
        summary = faith.groupby("method")[cols].agg(["mean", "std"])
        summary.columns = [f"{a} {b}" for a, b in summary.columns]
        parts.append("<h3>Faithfulness</h3>" + table(summary.reset_index(), {c: "{:.3f}" for c in summary.columns}))
    sanity = r.table("sanity")
    if sanity is not None:
        parts.append("<h3>Sanity (model randomisation)</h3>" + table(sanity))
    parts += _figures(site, r, agreement is not None)
    return "".join(parts)
