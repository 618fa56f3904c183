"""The Learning page: when did the model learn what it relies on? (what ``xailab learning`` stored).

Per train run that holds explanations per checkpoint: whether the maps move before, with or
after the predictions flip (one number per method beside its chance level), how fast they
settle (median settling epoch per class), the drift curves and class-mean maps per epoch (the
figures the job drew, copied), the share of relevance in the given regions per epoch, the
cost (CPU seconds and bytes per epoch), and the strips of the most interesting instances
(learned then forgotten, flipped late, settled late).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, heat_table, table
from xailab.report.writer import Site


def has_learning(r: ReportRun) -> bool:
    return r.has_table("learning_steps") and bool((r.manifest.get("learning") or {}).get("methods"))


def summary_table(methods: dict[str, Any]) -> pd.DataFrame:
    """One row per method: the flip numbers, settling, cost."""
    rows = []
    for m, s in methods.items():
        rows.append({"method": m, "epochs": f"{s['epochs'][0]}-{s['epochs'][-1]}", "instances": s["instances"],
                     "flips": int(s["flips"]), "map moved at or before the flip": s["lead"], "chance": s["chance"],
                     "before": s["before"], "with": s["with"], "after": s["after"],
                     "change at flips": s["change_at_flips"], "change elsewhere": s["change_elsewhere"],
                     "median settling epoch": s["median_settle_epoch"],
                     "CPU s / epoch": s.get("cpu_s_per_epoch"),
                     "KB / 1,000 instances x epoch": (s.get("bytes_per_1000_instance_epochs") or float("nan")) / 1000})
    return pd.DataFrame(rows)


def _answer(methods: dict[str, Any]) -> str:
    parts = []
    for m, s in methods.items():
        if not s["flips"]:
            parts.append(f"{esc(m)}: no prediction flipped in these epochs.")
            continue
        verdict = "before or with" if s["lead"] > s["chance"] + 0.05 else \
            "after" if s["lead"] < s["chance"] - 0.05 else "no earlier than chance"
        parts.append(f"<b>{esc(m)}</b>: in {s['lead']:.0%} of {int(s['flips'])} flips the largest map change "
                     f"within ±{int(s['window'])} epochs came at or before the flip (chance {s['chance']:.0%}): the map "
                     f"moves {verdict} the prediction. Maps change {s['change_at_flips']:.2f} (1 - rank corr.) "
                     f"at flip steps against {s['change_elsewhere']:.2f} elsewhere; half the maps settled "
                     f"(rank corr. with the last epoch stays &ge; {s['settle']}) by epoch {s['median_settle_epoch']:.0f}.")
    return "<p class=recommend>" + "<br>".join(parts) + "</p>"


def _settling(r: ReportRun) -> str:
    per = r.table("learning_instances")
    if per is None:
        return ""
    names = (r.manifest.get("learning") or {}).get("classes") or []
    per = per.assign(cls=[names[k] if 0 <= k < len(names) else str(k) for k in per["label"]])
    g = per.groupby(["cls", "method"])["settle_epoch"].median().unstack("method").reset_index()
    g = g.rename(columns={"cls": "class"})
    f = per.groupby("cls").agg(flips=("flips", "sum"), forgotten=("forgotten", "sum")) // max(per["method"].nunique(), 1)
    g = g.merge(f.reset_index().rename(columns={"cls": "class"}), on="class")
    return "<h3>Median settling epoch per class</h3>" + table(g, {c: "{:.0f}" for c in g.columns if c != "class"})


def _mass(r: ReportRun, regions: list[str]) -> str:
    if not regions:
        return ""
    steps = r.table("learning_steps")
    if steps is None:
        return ""
    cols = [f"mass {x}" for x in regions if f"mass {x}" in steps]
    t = steps.groupby(["method", "epoch"])[cols].mean()
    rows = {f"{m}, {c.removeprefix('mass ')}": t.loc[m, c] for m in t.index.get_level_values(0).unique() for c in cols}
    mat = pd.DataFrame(rows).T
    mat.columns = [f"e{e}" for e in mat.columns]
    return ("<h3>Share of |relevance| in the regions, per epoch (mean over instances)</h3>"
            + heat_table(mat, lo=0.0, hi=float(mat.max().max()) or 1.0, spec="{:.3f}"))


def _spray(r: ReportRun) -> str:
    sp = r.table("learning_spray")
    if sp is None:
        return ""
    names = (r.manifest.get("learning") or {}).get("classes") or []
    out = ["<h3>SpRAy eigengap per class and epoch</h3><p class=note>1 - l2/l3 of the spectral clustering of "
           "the class's maps (Lapuschkin et al. 2019): near 1, the class's maps fall into two separate groups "
           "(a shortcut or a backdoor used for part of the class); the epoch it rises is when that was learned.</p>"]
    for m, g in sp.groupby("method", sort=False):
        mat = g.pivot(index="label", columns="epoch", values="gap_score")
        mat.index = [names[k] if 0 <= k < len(names) else str(k) for k in mat.index]
        mat.columns = [f"e{c}" for c in mat.columns]
        out.append(f"<p>{esc(m)}</p>" + heat_table(mat, lo=0.0, hi=1.0))
    return "".join(out)


def _concepts(r: ReportRun) -> str:
    t = r.table("learning_concepts")
    if t is None:
        return ""
    last = t[t["epoch"] == t["epoch"].max()]
    top = last.loc[last.groupby("concept")["presence"].idxmax(), ["concept", "class", "class_name"]]
    rows = {}
    for c, j, name in zip(top["concept"], top["class"], top["class_name"], strict=True):
        rows[f"concept {c} ({name})"] = t[(t["concept"] == c) & (t["class"] == j)].set_index("epoch")["presence"]
    mat = pd.DataFrame(rows).T.sort_index(axis=1)
    mat.columns = [f"e{e}" for e in mat.columns]
    return ("<h3>ICE concepts over the epochs</h3><p class=note>A basis fitted on the last epoch's model; each "
            "concept with the class it is most present in at the end, and its presence in that class's images "
            "at every epoch.</p>" + heat_table(mat.astype(float), lo=0.0, hi=1.0))


def _figures(site: Site, r: ReportRun, methods: list[str]) -> str:
    out = []
    for m in methods:
        for name, caption in ((f"curves-{m}.png", f"{m}: drift per class (mean rank correlation)"),
                              (f"classes-{m}.png", f"{m}: class-mean map per epoch (rows: classes)")):
            src = r.file(f"learning/{name}")
            if src is not None:
                out.append(figure(site.copy(src, f"{r.slug}/learning/{name}"), caption))
    return "".join(out)


def _strips(site: Site, r: ReportRun, strips: list[dict[str, Any]]) -> str:
    out = []
    root = r.run.path.resolve()
    for s in strips:
        src = (r.run.path / str(s.get("file", ""))).resolve()
        if not src.is_file() or root not in src.parents or src.suffix != ".png":
            continue
        inst = int(s["instance"])
        out.append(f'<div id="i{inst}">'
                   + figure(site.copy(src, f"{r.slug}/learning/strip-{inst}.png"), f"instance {inst}: {s.get('why', '')}")
                   + "</div>")
    if not out:
        return ""
    return ("<h3>Instances: learned then forgotten, flipped late, settled late</h3><p class=note>Each row a method; "
            "columns the epochs, each map on its own scale; under each epoch the predicted class and its "
            "probability (green: right, red: wrong).</p>" + "".join(out))


def learning_section(site: Site, r: ReportRun) -> str:
    info = r.manifest.get("learning") or {}
    methods = info.get("methods") or {}
    body = [_answer(methods), table(summary_table(methods), {
        "map moved at or before the flip": "{:.0%}", "chance": "{:.0%}", "before": "{:.0%}", "with": "{:.0%}",
        "after": "{:.0%}", "change at flips": "{:.3f}", "change elsewhere": "{:.3f}", "CPU s / epoch": "{:.2f}",
        "KB / 1,000 instances x epoch": "{:.1f}", "median settling epoch": "{:.0f}"}),
        f"<p class=note>Explained class: {esc(info.get('target', 'true'))}. Drift: Spearman rank correlation of "
        "|map| and IoU of the top-10 % regions, against the epoch before and the last epoch.</p>",
        _figures(site, r, list(methods)), _settling(r), _mass(r, list(info.get("regions") or [])), _spray(r),
        _concepts(r),
        _strips(site, r, list(info.get("strips") or []))]
    return "".join(body)


def learning_page(site: Site, runs: list[ReportRun]) -> str:
    return "".join(f'<h2 id="{esc(r.slug)}">{esc(r.name)}</h2>' + learning_section(site, r) for r in runs)
