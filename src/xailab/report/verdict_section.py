"""The verdict at the top of the comparison page, and tables of scores with their intervals.

Reads what ``xailab compare`` wrote: table ``verdict`` (methods ranked, intervals, ties, sanity
reason, caveats), the rule and the recommendation in the manifest's ``compare.verdict``, and
which way each score is better from the metrics' own data (manifest section ``metrics``); the
best value of every column with a better side is highlighted and its header carries ↑ or ↓. Nothing here is computed again: a run compared before the verdict existed shows
its scoreboard only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, fmt, table

INTERVAL_COLUMNS = {
    "faithfulness": "faithfulness = insertion − deletion",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
}
ARROWS = {"higher": " ↑", "lower": " ↓"}


def directions(r: ReportRun) -> dict[str, str]:
    """Column -> ``"higher"`` / ``"lower"`` / ``"neither"``, as the run's metrics declare."""
    declared = r.manifest.get("metrics") or {}
    return {str(k): str(v.get("direction")) for k, v in declared.items() if isinstance(v, dict)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _best(df: pd.DataFrame, col: str, directions: Mapping[str, str]) -> float | None:
    way = directions.get(col)
    if way not in ("lower", "higher") or col not in df:
        return None
    vals = [float(v) for v in df[col] if _finite(v)]
    if len(vals) < 2:
        return None
    return min(vals) if way == "lower" else max(vals)


def _cell(rec: Mapping[str, Any], col: str, spec: str, best: float | None) -> str:
    """A number, its interval on a second, smaller line (so that wide tables wrap), highlighted
    when it is the column's best."""
    v: Any = rec.get(col)
    if not _finite(v):
        return f"<td>{esc(fmt(v))}</td>"
    text = esc(fmt(float(v), spec))
    lo: Any = rec.get(f"{col}_low")
    hi: Any = rec.get(f"{col}_high")
    if _finite(lo) and _finite(hi):
        text += f'<span class="ci">[{esc(fmt(float(lo), spec))}, {esc(fmt(float(hi), spec))}]</span>'
    cls = "num" + (" best" if best is not None and float(v) == best else "")
    return f'<td class="{cls}">{text}</td>'


def interval_table(df: pd.DataFrame, columns: Mapping[str, str], formats: Mapping[str, str],
                   directions: Mapping[str, str], *, caption: str = "", titles: Mapping[str, str] | None = None) -> str:
    """``df`` with ``columns`` (name -> header) shown as ``mean [low, high]`` when the table has
    ``<col>_low`` / ``<col>_high``, the best value of each column (by ``directions``) highlighted;
    ``titles`` are the tooltips of short headers (their full wording)."""
    bests = {c: _best(df, c, directions) for c in columns}
    titles = titles or {}
    head = "".join(f"<th{_tip(titles.get(c))}>{esc(h + ARROWS.get(directions.get(c, ''), ''))}</th>"
                   for c, h in columns.items())
    rows = []
    for rec in df.to_dict("records"):
        cells = []
        for col in columns:
            if col in formats:
                cells.append(_cell(rec, col, formats[col], bests[col]))
            else:  # text (a method's name) may wrap after an underscore, leaving the numbers room
                cells.append(f"<td>{esc(fmt(rec.get(col))).replace('_', '_<wbr>')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def _tip(title: str | None) -> str:
    return f' title="{esc(title)}"' if title else ""


def _notes(ranked: pd.DataFrame) -> str:
    """Per method, what did not fit in the table: the sanity reason, ties and caveats; a caveat
    every method shares is said once."""
    caveats = [[c for c in str(v).split("; ") if c] for v in ranked.get("caveats", [""] * len(ranked))]
    common = set.intersection(*(set(c) for c in caveats)) if caveats else set()
    methods = list(ranked["method"])
    items = []
    for rec, own in zip(ranked.to_dict("records"), caveats, strict=True):
        bits = []
        if rec.get("sanity") != "passed":
            bits.append(f"sanity {rec.get('sanity')}: {rec.get('sanity_reason')}")
        ties = [t for t in str(rec.get("tied_with") or "").split(", ") if t]
        if ties and len(ties) < len(methods) - 1:
            bits.append(f"tied with {', '.join(ties)}")
        bits += [c for c in own if c not in common]
        if bits:
            items.append(f"<li><b>{esc(rec['method'])}</b>: {esc('; '.join(bits))}</li>")
    head = f"<p class=note>Every method: {esc('; '.join(sorted(common)))}.</p>" if common else ""
    return head + (f'<ul class="notes">{"".join(items)}</ul>' if items else "")


def verdict_section(r: ReportRun) -> str:
    """The recommendation, the ranked methods with intervals, notes per method and the rule;
    ``""`` without a verdict."""
    ranked = r.table("verdict")
    info = (r.manifest.get("compare") or {}).get("verdict") or {}
    if ranked is None or not len(ranked):
        return ""
    n = int(ranked["images"].max()) if "images" in ranked else None
    level = next((x.get("value") for x in info.get("rule", []) if x.get("name") == "level"), 0.95)
    all_tie = "rank" in ranked and ranked["rank"].nunique() == 1 and len(ranked) > 1
    shown = ranked.assign(sanity_short=[f"{v} (see below)" if v != "passed" else v for v in ranked["sanity"]])
    columns = {"position": "#", "method": "method", "rank": "rank (ties share)", **INTERVAL_COLUMNS,
               "sanity_short": "sanity check", "agreement_iou": "mean IoU with others", "avg_time": "s / image"}
    formats = {"faithfulness": "{:.3f}", "deletion_auc": "{:.3f}", "insertion_auc": "{:.3f}",
               "agreement_iou": "{:.2f}", "avg_time": "{:.3g}"}
    parts = [
        "<h3>Verdict: which method to trust here</h3>",
        f'<p class="recommend"><b>Recommendation:</b> {esc(info.get("recommendation", ""))}</p>',
        f"<p class=note>Means over {esc(n)} images with {float(level):.0%} bootstrap intervals (second line); a "
        "method's rank is one plus the number of methods significantly better (paired sign-flip tests over the "
        "same images, Holm-corrected), so methods that cannot be told apart share a rank. Highlighted: the best "
        "value of each column; ↑ / ↓: which way is better.</p>",
    ]
    if all_tie:
        parts.append(f"<p class=note><b>All {len(ranked)} methods tie</b> on faithfulness with these {esc(n)} "
                     "images: the order below is by the mean only. More images narrow the intervals.</p>")
    parts += [interval_table(shown, columns, formats, directions(r)), _notes(ranked)]
    rule = pd.DataFrame(info.get("rule") or [])
    if len(rule):
        parts.append("<h4>The rule behind the verdict</h4><p class=note>Data, not prose: rerun "
                     "<code>xailab.metrics.verdict.verdict</code> with another <code>VerdictRule</code> to "
                     "weigh differently.</p>" + table(rule))
    return "".join(parts)


#: column -> (short header, full wording shown as its tooltip): fourteen columns with intervals
#: fit a 1300-pixel window
SCOREBOARD_COLUMNS = {
    "method": ("method", ""), "avg_time": ("s / img", "seconds per image"),
    "avg_iou": ("IoU ref.", "IoU of the top region with the reference method"),
    "deletion_auc": ("deletion", "deletion AUC"), "insertion_auc": ("insertion", "insertion AUC"),
    "faithfulness_corr": ("faith. corr.", "faithfulness correlation"), "road_auc": ("ROAD", "ROAD AUC"),
    "infidelity": ("infidelity", "infidelity (each map rescaled by its best-fitting factor)"),
    "irof": ("IROF", "IROF: area over the curve of removing superpixels"),
    "sanity": ("sanity", "randomisation test: passed or flagged"),
    "sanity_spearman": ("ρ random", "Spearman of the maps after randomising the model's weights"),
    "agreement_iou": ("IoU others", "mean IoU with the other methods"),
    "agreement_spearman": ("ρ others", "mean Spearman with the other methods"),
    "evaluations_per_image": ("evals / img", "model evaluations per image"),
}


def scoreboard_table(r: ReportRun, board: pd.DataFrame) -> str:
    """The scoreboard with intervals beside every score that has per-image values."""
    columns = {c: h for c, (h, _) in SCOREBOARD_COLUMNS.items() if c in board}
    titles = {c: t for c, (_, t) in SCOREBOARD_COLUMNS.items() if c in board and t}
    formats = {c: ("{:.3g}" if c in ("avg_time",) else "{:.0f}" if c == "evaluations_per_image" else "{:.3f}")
               for c in columns if c not in ("method", "sanity")}
    return interval_table(board, columns, formats, directions(r), titles=titles)


CHECK_COLUMNS = {
    "metric": "metric", "direction": "better", "noise_spearman": "noise: Spearman clean vs noisy",
    "noise_change": "noise: mean change / spread", "shuffle_effect": "shuffled maps: effect",
    "shuffle_p": "shuffled maps: p", "model_effect": "randomised model: effect", "model_p": "randomised model: p",
    "verdict": "verdict",
}


def metric_checks_section(r: ReportRun) -> str:
    """Table ``metric_checks``: which scores deserve weight; ``""`` when the run has none."""
    checks = r.table("metric_checks")
    if checks is None or not len(checks):
        return ""
    method = esc(checks["method"].iloc[0]) if "method" in checks else "the reference"
    n = esc(checks["images"].iloc[0]) if "images" in checks else "?"
    columns = {c: h for c, h in CHECK_COLUMNS.items() if c in checks}
    formats = {c: "{:.3g}" for c in columns if c not in ("metric", "direction", "verdict")}
    shown = checks.assign(direction=[f"{d} is better" for d in checks["direction"]]) if "direction" in checks else checks
    return ("<h3>Checks of the metrics themselves</h3><p class=note>After MetaQuantus (Hedström et al. 2023), on "
            f"the maps of {method} for {n} images. A metric deserves weight when it is <b>resilient</b> (Gaussian "
            "noise of 0.1 map standard deviations keeps the images' order: Spearman &ge; 0.5) and <b>reactive</b> "
            "(maps whose pixels are shuffled, and maps of a model with randomised weights, score worse: effect "
            "&gt; 0, paired sign-flip p &lt; 0.05). Effect: mean change towards worse in units of the spread of "
            "the changes.</p>" + interval_table(shown, columns, formats, {}))
