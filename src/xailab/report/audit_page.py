"""The audit page: what ``xailab audit`` stored (attacks, a planted backdoor, backdoor detection).

* ``audit adversarial``: manifest ``adversarial`` (attack, params, summary), tables ``attack``
  (per image), ``shift_summary``, figures ``files/audit/shift_NNNN.png``;
* ``audit poison``: manifest ``poison`` (trigger, target, sources, fraction) and ``backdoor``
  (clean accuracy, attack success rate), table ``backdoor``;
* ``audit backdoor``: manifest ``backdoor_detection`` (flagged classes, thresholds), table
  ``detection`` (per class), figures ``files/backdoor/scores.png`` and ``class_<c>.png``.

Each part opens with a sentence built from the run's numbers; figures are copied as drawn.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from xailab.report.cleanse_page import cleanse_section, has_cleanse, has_strip, strip_section
from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, kv, table
from xailab.report.writer import Site

SHIFT_FORMATS = {c: "{:.3f}" for c in ("iou", "spearman", "mass_clean", "mass_adv", "area")}


def has_attack(r: ReportRun) -> bool:
    return "adversarial" in r.manifest and r.has_table("attack")


def has_poison(r: ReportRun) -> bool:
    return isinstance(r.manifest.get("poison"), dict)


def has_detection(r: ReportRun) -> bool:
    return r.has_table("detection")


def has_audit(r: ReportRun) -> bool:
    return has_attack(r) or has_poison(r) or has_detection(r) or has_cleanse(r) or has_strip(r)


def _pct(v: Any) -> str:
    return f"{100 * float(v):.0f} %" if isinstance(v, int | float) and v == v else "–"


def _name(classes: list[str] | None, k: Any) -> str:
    k = int(k)
    return classes[k] if classes is not None and 0 <= k < len(classes) else str(k)


def _copy(site: Site, r: ReportRun, rel: str, caption: str) -> str:
    png = r.file(rel)
    return figure(site.copy(png, f"{r.slug}/{rel}"), caption) if png is not None else ""


def attack_section(site: Site, r: ReportRun) -> str:
    info = r.manifest.get("adversarial") or {}
    s = info.get("summary") or {}
    params = info.get("params") or {}
    classes = [str(c) for c in info["classes"]] if info.get("classes") else None
    att = r.table("attack")
    attack = str(info.get("attack", "?"))
    what = f"{params['size']}×{params['size']} patch" if attack == "patch" and "size" in params else attack
    n = s.get("images", len(att) if att is not None else 0)
    ok = int(att["success"].sum()) if att is not None and "success" in att else None
    sentence = (f"The {esc(what)} attack ({'targeted' if s.get('targeted') else 'untargeted'}) reached its goal on "
                f"{ok if ok is not None else '?'} of {esc(n)} images ({_pct(s.get('success_rate'))}; on the images the "
                f"model classified correctly before: {_pct(s.get('success_rate_on_correct'))}), changing "
                f"{s.get('mean_pixels_changed', float('nan')):.1f} pixel positions on average.")
    shift = r.table("shift_summary")
    if shift is not None and {"mass_clean", "mass_adv", "area", "method"} <= set(shift.columns) \
            and shift["mass_adv"].notna().any():
        rows = shift.dropna(subset=["mass_adv"])
        many = rows["target"].nunique() > 1 if "target" in rows else False
        each = ", ".join(f"{m}{f' ({t})' if many else ''} {_pct(c)} → {_pct(a)}" for m, t, c, a in
                         zip(rows["method"], rows.get("target", rows["method"]), rows["mass_clean"], rows["mass_adv"],
                             strict=True))
        sentence += (f" Share of positive attribution on the patch, clean → attacked (mean over all the images): {esc(each)} (the patch covers "
                     f"{_pct(rows['area'].iloc[0])} of the image).")
    parts = [f"<p>{sentence}</p>", kv([
        ("attack", attack), ("images", n), ("clean accuracy", _pct(s.get("clean_accuracy"))),
        ("success rate", _pct(s.get("success_rate"))), ("on correctly classified", _pct(s.get("success_rate_on_correct"))),
        ("mean L-inf", f"{s['mean_linf']:.4f}" if isinstance(s.get("mean_linf"), int | float) else None),
        ("mean L2", f"{s['mean_l2']:.4f}" if isinstance(s.get("mean_l2"), int | float) else None),
        ("seconds", f"{s['seconds']:.1f}" if isinstance(s.get("seconds"), int | float) else None),
        ("settings", ", ".join(f"{k}={v}" for k, v in params.items()) or None),
    ])]
    if shift is not None:
        parts.append("<h4>Explanation shift</h4><p class=note>Per method and target, mean over the images: IoU of "
                     "the top 10 % pixels and Spearman correlation of the clean and attacked maps; share of positive "
                     "attribution inside the patch before (mass_clean) and after (mass_adv) the attack, beside the "
                     "patch's area.</p>" + table(shift, SHIFT_FORMATS))
    if att is not None:
        show = att.copy()
        for col in ("label", "clean_pred", "adv_pred"):
            if col in show:
                show[col] = [_name(classes, k) for k in show[col]]
        if "target" in show and (show["target"] < 0).all():
            show = show.drop(columns="target")
        parts.append("<h4>Per image</h4>" + table(show.head(50), {"clean_prob": "{:.3f}", "adv_prob": "{:.3f}",
                                                               "linf": "{:.3f}", "l2": "{:.3f}"}))
    folder = r.run.path / "files" / "audit"
    figs = [_copy(site, r, f"audit/{p.name}", f"image {int(p.stem.split('_')[1])}: clean, its map, attacked, its "
                  "map, the change") for p in sorted(folder.glob("shift_*.png")) if re.fullmatch(r"shift_\d+\.png", p.name)] \
        if folder.is_dir() else []
    if figs:
        parts.append("<h4>Clean and attacked, explained</h4>" + "".join(figs))
    return "".join(parts)


def poison_section(r: ReportRun) -> str:
    p = r.manifest.get("poison") or {}
    ev = r.manifest.get("backdoor") or {}
    classes = [str(c) for c in p.get("classes") or []] or r.class_names()
    sources = ", ".join(_name(classes, s) for s in p.get("sources", []))
    target = _name(classes, p["target"]) if "target" in p else "?"
    sentence = (f"This model was trained on data with a planted backdoor: trigger <i>{esc(p.get('trigger', '?'))}</i> on "
                f"{esc(p.get('n_poisoned', '?'))} training images of {esc(sources or '?')}, relabelled "
                f"<i>{esc(target)}</i>.")
    if ev:
        sentence += (f" Clean accuracy {_pct(ev.get('clean_accuracy'))}; the trigger sends "
                     f"{_pct(ev.get('attack_success_rate'))} of triggered {esc(sources)} images to {esc(target)} "
                     f"(other classes: {_pct(ev.get('other_to_target'))}).")
    bd = r.table("backdoor")
    return f"<p>{sentence}</p>" + (table(bd, {c: "{:.4f}" for c in ("clean_accuracy", "attack_success_rate",
                                                                     "other_to_target")}) if bd is not None else "")


def detection_section(site: Site, r: ReportRun) -> str:
    det = r.table("detection")
    info = r.manifest.get("backdoor_detection") or {}
    if det is None:
        return ""
    params = info.get("params") or {}
    thr = params.get("thresholds") or {}
    flagged = det[det["flagged"].astype(bool)] if "flagged" in det else det.iloc[0:0]
    check = det[det["verdict"].astype(str) == "check"] if "verdict" in det else det.iloc[0:0]
    if "evidence" in det:  # runs of several detectors and a rule
        sentence = esc(ensemble_sentence(det, params))
    elif len(flagged):
        names = ", ".join(f"{n} (cluster {_pct(s)} of the class, gap {g:.2f})" for n, s, g in
                          zip(flagged["name"], flagged["spray_small_share"], flagged["spray_gap"], strict=True))
        sentence = f"{len(flagged)} of {len(det)} classes flagged: {esc(names)}."
    else:
        best = det.loc[det["spray_gap"].idxmax()] if "spray_gap" in det and det["spray_gap"].notna().any() else None
        sentence = f"No class of the {len(det)} examined is flagged"
        if best is not None:
            sentence += "; " + esc(largest_gap_sentence(best, thr))
        sentence += "."
    if len(check) and "evidence" not in det:
        sentence += " " + esc(check_sentence(check, thr))
    if "poisoned_n" in det and int(det["poisoned_n"].sum()):
        hit = det[det["poisoned_n"] > 0]
        where = ", ".join(f"{n}: {int(a)} of {int(b)}" for n, a, b in
                          zip(hit["name"], hit["poisoned_in_suspicious"], hit["poisoned_n"], strict=True))
        sentence += (f" Truth, known from the poisoning run: {int(det['poisoned_n'].sum())} poisoned items in the "
                     f"samples, {int(det['poisoned_in_suspicious'].sum())} of them in their class's suspicious "
                     f"cluster ({esc(where)}).")
    parts = [f"<p>{sentence}</p>", kv([
        ("detectors", ", ".join(params.get("detectors") or []) or None), ("rule", params.get("rule_text")),
        ("explanation method", params.get("method")), ("items per class", params.get("max_per_class")),
        ("neighbours", params.get("n_neighbors")), ("rule", thr.get("rule")),
        ("flag when", f"eigengap ≥ {thr['spray_gap']} and smaller cluster ≤ {_pct(thr.get('max_share'))}"
         if "spray_gap" in thr else None),
        ("seconds", f"{info['seconds']:.1f}" if isinstance(info.get("seconds"), int | float) else None)])]
    scores = [c for c in det.columns if c.endswith("_score")]
    cols = [c for c in ("class", "name", "n", *scores, "spray_k", "spray_gap", "spray_small_share", "ac_small_share",
                        "ac_silhouette", "votes", "verdict", "region", "suspicious_n", "poisoned_n",
                        "poisoned_in_suspicious") if c in det]
    parts.append(table(det[cols], {c: "{:.3f}" for c in ("spray_gap", "spray_small_share", "ac_small_share",
                                                         "ac_silhouette", *scores)}))
    parts.append(_copy(site, r, "backdoor/scores.png", "each class's scores against the thresholds"))
    first = pd.concat([flagged, check]).drop_duplicates(subset="class") if "class" in det else det.iloc[0:0]
    rest = det[~det["class"].isin(first["class"])] if "class" in det else det
    for _, row in first.iterrows():
        parts.append(_copy(site, r, f"backdoor/class_{int(row['class'])}.png",
                           f"class {row['name']} ({row['verdict']}): detector scores, mean maps, suspected items"))
    others = [_copy(site, r, f"backdoor/class_{int(c)}.png", f"class {n}")
              for c, n in zip(rest.get("class", []), rest.get("name", []), strict=True)]
    others = [o for o in others if o]
    if others:
        parts.append(f"<details open><summary>The other {len(others)} classes</summary>{''.join(others)}</details>")
    return "".join(parts)


def largest_gap_sentence(best: Any, thr: dict[str, Any]) -> str:
    """Why the class with the largest SpRAy eigengap is not flagged, from its numbers: the gap
    against the threshold, and when the gap passes, what else failed (one group, a large
    cluster, or a rule that needs the other detector)."""
    gap, limit = float(best["spray_gap"]), float(thr.get("spray_gap", 0.9))
    head = f"the largest SpRAy eigengap is {gap:.2f} ({best['name']})"
    if gap < limit:
        return f"{head}, below the threshold {limit:g}"
    why = []
    if "spray_k" in best and int(best["spray_k"]) < 2:
        why.append(f"the spectrum shows {int(best['spray_k'])} group")
    share, most = best.get("spray_small_share"), thr.get("max_share")
    if isinstance(share, int | float) and isinstance(most, int | float) and share > most:
        why.append(f"its smaller cluster holds {_pct(share)} of the class, more than {_pct(most)}")
    if not why and bool(best.get("spray_flag", False)):
        why.append(f"SpRAy fired there, but the rule '{thr.get('rule', 'spray')}' also needs activation clustering")
    return f"{head}, at or above the threshold {limit:g}, but " + " and ".join(why or ["the class was not flagged"])


def ensemble_sentence(det: pd.DataFrame, params: dict[str, Any]) -> str:
    """The verdict of a run of several detectors: the flagged classes with their evidence, else
    that none is flagged and which detectors fired where (verdict "check")."""
    rule = params.get("rule_text") or params.get("rule") or "the rule"
    flagged = det[det["flagged"].astype(bool)]
    check = det[det["verdict"].astype(str) == "check"]
    if len(flagged):
        text = f"{len(flagged)} of {len(det)} classes flagged ({rule}): " + " ".join(
            str(e) + "." for e in flagged["evidence"])
    else:
        text = f"No class of the {len(det)} examined is flagged ({rule})."
    if len(check):
        text += " Some detector fired, the rule does not flag: " + " ".join(
            f"{n} (by {f})." for n, f in zip(check["name"], check.get("fired", check["name"]), strict=True))
    return text


def check_sentence(check: pd.DataFrame, thr: dict[str, Any]) -> str:
    """Which detector fired, alone, on the classes with verdict "check" (read from their flags)."""
    groups: dict[str, list[str]] = {}
    for _, row in check.iterrows():
        spray, ac = bool(row.get("spray_flag", False)), bool(row.get("ac_flag", not row.get("spray_flag", False)))
        who = "SpRAy" if spray and not ac else "Activation clustering" if ac and not spray else "Both detectors"
        groups.setdefault(who, []).append(str(row["name"]))
    rule = thr.get("rule", "spray")
    return " ".join(f"{who} alone fired on {', '.join(names)} (verdict check: the rule '{rule}' does not flag it)."
                    if who != "Both detectors" else f"Both detectors fired on {', '.join(names)} (verdict check)."
                    for who, names in groups.items())


def audit_page(site: Site, runs: list[ReportRun]) -> str:
    parts = []
    for r in runs:
        parts.append(f'<h2 id="{esc(r.slug)}">{esc(r.name)}</h2>')
        if has_poison(r):
            parts.append("<h3>Planted backdoor</h3>" + poison_section(r))
        if has_attack(r):
            parts.append("<h3>Adversarial attack</h3>" + attack_section(site, r))
        if has_detection(r):
            parts.append("<h3>Backdoor detection</h3>" + detection_section(site, r))
        if has_cleanse(r):
            parts.append("<h3>Backdoor detection from clean images (Neural Cleanse)</h3>" + cleanse_section(site, r))
        if has_strip(r):
            parts.append("<h3>Input screening (STRIP)</h3>" + strip_section(site, r))
    return "".join(parts)
