"""The audit page's parts for the detectors that need no training data.

* ``audit backdoor --images``: manifest ``cleanse`` (flagged classes, settings, ``scope``: what
  clean data can and cannot show), table ``cleanse`` (per class), figures
  ``files/cleanse/norms.png`` and ``files/cleanse/trigger_<k>.png``;
* ``audit strip``: manifest ``strip`` (threshold, rates, settings), table ``strip`` (per input),
  figure ``files/strip/entropy.png``.

Each part opens with a sentence built from the run's numbers, and the Neural Cleanse part always
says what its evidence can and cannot show.
"""

from __future__ import annotations

from typing import Any

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, kv, table
from xailab.report.writer import Site


def has_cleanse(r: ReportRun) -> bool:
    return isinstance(r.manifest.get("cleanse"), dict) and r.has_table("cleanse")


def has_strip(r: ReportRun) -> bool:
    return isinstance(r.manifest.get("strip"), dict) and r.has_table("strip")


def _copy(site: Site, r: ReportRun, rel: str, caption: str) -> str:
    png = r.file(rel)
    return figure(site.copy(png, f"{r.slug}/{rel}"), caption) if png is not None else ""


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(float(v)) if isinstance(v, int | float) and v == v else "–"


def cleanse_section(site: Site, r: ReportRun) -> str:
    info = r.manifest.get("cleanse") or {}
    t = r.table("cleanse")
    if t is None:
        return ""
    params, scope = info.get("params") or {}, info.get("scope") or {}
    null = params.get("reference_test") == "null"  # each class against its spread in >= 3 clean models
    thr = params.get("critical") if null else params.get("threshold", 2.0)
    stat = "t against the clean references" if null else "robust z"
    flagged = t[t["flagged"].astype(bool)]
    if len(flagged):
        each = "; ".join(
            f"{row['name']} (mask L1 {_num(row['l1'], '{:.1f}')} against the median {_num(t['l1'].median(), '{:.1f}')}, "
            + (f"clean reference {_num(row['reference_l1'], '{:.1f}')}, " if _has(row, 'reference_l1') else "")
            + f"{stat} {_num(row['z'] if _has(row, 'z') else row['anomaly'])}"
            + (f", p = {_num(row['p_value'], '{:.2g}')}" if _has(row, 'p_value') else "")
            + (f", Bonferroni p = {_num(row['p_adjusted'], '{:.2g}')}" if _has(row, 'p_adjusted') else "")
            + f"; trigger in {row.get('mask_box') or '?'}, the explanation of "
            f"triggered images in {row.get('explanation_box') or '?'}, box IoU {_num(row.get('box_iou'))})"
            for _, row in flagged.iterrows())
        sentence = f"Neural Cleanse flags {len(flagged)} of {len(t)} classes: {esc(each)}."
    else:
        below = t[t["below_median"].astype(bool)] if "below_median" in t else t
        col = "z" if "z" in t and t["z"].notna().any() else "anomaly"
        top = max(float(below[col].max()), 0.0) if len(below) else 0.0
        sentence = (f"Neural Cleanse flags no class: the largest {stat} of a small mask is {top:.2f}, below "
                    f"the threshold {thr:.3g}. <b>This is not an all-clear</b> (see below).")
    parts = [f"<p>{sentence}</p>"]
    if scope:
        parts.append(f"<p class=note><b>What clean data can show:</b> {esc(scope.get('can', ''))}. "
                     f"<b>What it cannot:</b> {esc(scope.get('cannot', ''))}."
                     + ("" if scope.get("training_data") else " No training data was examined in this run.") + "</p>")
    for n in info.get("notes") or []:
        parts.append(f"<p class=note>{esc(n)}</p>")
    parts.append(kv([("clean images", params.get("n_images")), ("steps per class", params.get("steps")),
                     ("threshold of the " + stat, _num(thr, "{:.3g}")), ("explanation method", params.get("method")),
                     ("seconds", _num(info.get("seconds"), "{:.1f}"))]))
    cols = [c for c in ("class", "name", "l1", "anomaly", "success", "reached", "flagged", "mask_box",
                        "explanation_box", "box_iou", "share_triggered", "share_clean", "spray_box_iou") if c in t]
    parts.append(table(t[cols], {c: "{:.3f}" for c in ("l1", "anomaly", "success", "box_iou", "share_triggered",
                                                       "share_clean", "spray_box_iou")}))
    parts.append(_copy(site, r, "cleanse/norms.png", "the mask size of every class and the anomaly index of the "
                                                     "small ones against the threshold"))
    for _, row in flagged.iterrows():
        parts.append(_copy(site, r, f"cleanse/trigger_{int(row['class'])}.png",
                           f"class {row['name']}: the reconstructed trigger beside the explanation of triggered "
                           "images (green: the mask's region, orange: the map's)"))
    return "".join(parts)


def strip_section(site: Site, r: ReportRun) -> str:
    info = r.manifest.get("strip") or {}
    rates, params = info.get("rates") or {}, info.get("params") or {}
    sentence = (f"STRIP rejects inputs whose predictions stay sure when {esc(params.get('overlays', '?'))} clean "
                f"images are superimposed: threshold {_num(rates.get('threshold'), '{:.4f}')} bits, set to reject "
                f"{_num(100 * float(rates.get('frr_target', float('nan'))), '{:.0f}')} % of clean calibration inputs; "
                f"it rejected {_num(100 * float(rates.get('frr', float('nan'))), '{:.1f}')} % of the "
                f"{esc(rates.get('n_screened', '?'))} screened inputs")
    if "far" in rates:
        sentence += (f", and let {_num(100 * float(rates['far']), '{:.1f}')} % of them through with the trigger "
                     f"{esc(info.get('trigger', ''))} stamped on (false acceptance rate)")
    parts = [f"<p>{sentence}.</p>"] + [f"<p class=note>{esc(n)}</p>" for n in info.get("notes") or []]
    parts.append(kv([(k, v) for k, v in params.items()]))
    parts.append(_copy(site, r, "strip/entropy.png", "entropy of clean calibration, screened and triggered inputs"))
    return "".join(parts)


def _has(row: Any, col: str) -> bool:
    """Whether the table row has a value in ``col`` (runs written before the column existed have none)."""
    v = row.get(col)
    return v is not None and v == v
