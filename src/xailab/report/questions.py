"""The overview's three questions, each answered in a sentence built from the runs' numbers.

1. *Which parts of the image matter: the object or its surroundings?*  From an explain run's
   saved maps: the share of positive attribution inside the object region (the foreground of
   an image on a plain background, else the centre box), against the region's area.
2. *What patterns has the model learned?*  From ``xailab concepts`` runs (ICE concepts, TCAV
   scores) and ``xailab dissect`` runs (labelled units).
3. *What difficulties does it have?*  From ``per_class`` and ``confusion`` tables (weakest
   classes, most confused pairs) and the per-epoch ``predictions`` of a train run (forgotten and
   ambiguous instances).

Each answer sits beside its table or figure and links to the page with the evidence. Where no
run holds the data, the answer says which command would produce it; no sentence claims more
than the numbers under it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.evidence import (
    AMBIGUOUS_STD,
    attribution_on_object,
    confused_pairs,
    instance_dynamics,
    object_regions,
    object_summary,
    object_verdict,
    pick_split,
    weakest_classes,
)
from xailab.report.html import esc, figure, table
from xailab.report.report_figures import object_share_png
from xailab.report.writer import Site


def pct(v: float) -> str:
    return f"{100 * v:.0f} %" if np.isfinite(v) else "–"


def _link(href: str, text: str) -> str:
    return f'<a href="{esc(href)}">{esc(text)}</a>'


def _box(n: int, question: str, answers: list[str]) -> str:
    return (f'<section class="q"><h3>{n}. {esc(question)}</h3>' + "".join(answers) + "</section>")


def _answer(sentence: str, evidence: str = "") -> str:
    """A sentence (already HTML) and, beside it, its table or figure."""
    side = f'<div class="evidence">{evidence}</div>' if evidence else ""
    return f'<div class="answer"><p>{sentence}</p>{side}</div>'


def _target_column(r: ReportRun, method: str) -> tuple[int, str]:
    """Which explained target to measure: the true class when labels are known, else the top-1."""
    names = [str(t) for t in r.explanation_manifest(method).get("target_names", [])]
    images = r.table("images")
    labelled = images is not None and "label" in images and bool((images["label"] >= 0).all())
    for want in (("true", "top1") if labelled else ("top1",)):
        if want in names:
            return names.index(want), want
    return 0, names[0] if names else "target 0"


# -- 1. object or surroundings ------------------------------------------------------------------------
def where_it_looks(site: Site, r: ReportRun) -> str:
    """The answer for one explain run (``""`` when it stored no images)."""
    shown = r.display()
    if shown is None:
        return ""
    regions, kinds = object_regions(np.asarray(shown))
    per: dict[str, pd.DataFrame] = {}
    used = ""
    for m in r.methods():
        maps = r.pixel_maps(m)
        if maps is None or maps.ndim != 4:
            continue
        j, used = _target_column(r, m)
        per[m] = attribution_on_object(maps[:, j], regions[: len(maps)])
    summary = object_summary(per)
    if not len(summary):
        return ""
    verdict = object_verdict(summary)
    n = int(summary["images"].max())
    fg = kinds[:n].count("foreground")
    region = ("the object's pixels (its foreground on a plain background)" if fg == n else
              "the centre box (half the image; the images have no plain background, so this stands in "
              "for an object mask)" if fg == 0 else
              f"the foreground on {fg} images with a plain background, the centre box on {n - fg}")
    mass, area = float(summary["mass_inside"].median()), float(summary["area"].mean())
    lo, hi = summary.loc[summary["ratio"].idxmin()], summary.loc[summary["ratio"].idxmax()]
    what = {
        "object": "the maps point mainly at the <b>object</b>",
        "surroundings": "the maps point mainly at the <b>surroundings</b>",
        "mixed": "the methods <b>disagree</b> (some above, some below the area)",
        "neither": "the maps show <b>no clear preference</b> for object or surroundings",
    }[verdict]
    sentence = (
        f"In run <b>{esc(r.name)}</b> ({n} images, target <i>{esc(used)}</i>), the median method puts {pct(mass)} of its "
        f"positive attribution on {esc(region)}, which covers {pct(area)} of the image: {what}. "
        f"Ratio of share to area from {lo['ratio']:.2f} ({esc(lo['method'])}) to {hi['ratio']:.2f} "
        f"({esc(hi['method'])}); 1 is what a map blind to the object would give. "
        + _link("images.html", "See the maps of every image") + "."
    )
    dest, src = site.img(f"{r.slug}/object-share.png")
    object_share_png(summary, np.asarray(shown[:6]), regions[:6], dest)
    shown_df = summary.rename(columns={"mass_inside": "attribution inside", "area": "area of the region",
                                       "ratio": "ratio", "images_above_area": "images above the area"})
    ev = (figure(src, "share of positive attribution inside the region (orange) beside the region's area (grey); "
                 "right: the region (yellow outline) on the first images")
          + table(shown_df, {"attribution inside": "{:.1%}", "area of the region": "{:.1%}", "ratio": "{:.2f}",
                             "images above the area": "{:.0%}"}))
    return _answer(sentence, ev)


def question_where(site: Site, explain: list[ReportRun]) -> str:
    answers = [a for a in (where_it_looks(site, r) for r in explain) if a]
    if not answers:
        answers = [_answer("No explain run with saved maps was given, so this is not answered here: "
                           "<code>xailab explain --model M --weights W --images DATA --methods saliency,gradcam "
                           "--out RUN</code> makes one.")]
    return _box(1, "Which parts of the image matter for the classification: the object or its surroundings?",
                answers)


# -- 2. learned patterns -------------------------------------------------------------------------------
def _ice_answer(r: ReportRun) -> str:
    imp = r.table("ice_importance")
    info = r.manifest.get("ice") or {}
    if imp is None or not {"class", "concept", "contribution"} <= set(imp.columns):
        return ""
    top = imp.loc[imp.groupby("class")["contribution"].idxmax()].sort_values("class")
    fid = info.get("fidelity") or {}
    agree = fid.get("top1_agreement")
    counts = top["concept"].value_counts()
    shared = [f"concept {int(c)} ({int(k)} classes)" for c, k in counts.items() if k > 1]
    sentence = (
        f"ICE (run <b>{esc(r.name)}</b>) factorised layer <i>{esc(info.get('layer', '?'))}</i> into "
        f"{esc(info.get('n_concepts', '?'))} concepts over {esc(info.get('n_images', '?'))} images"
        + (f"; replacing the layer by its concept reconstruction keeps the model's top-1 class on "
           f"{pct(float(agree))} of them" if isinstance(agree, int | float) else "")
        + f". {len(counts)} distinct concepts are the largest contributor to some class"
        + (f"; shared: {esc(', '.join(shared))}" if shared else "") + ". "
        + _link(f"concepts.html#{r.slug}", "Galleries and figures") + "."
    )
    name = "class_name" if "class_name" in top else "class"
    cols = [name, "concept", "contribution", "presence"]
    ev = table(top[[c for c in cols if c in top]].rename(columns={name: "class"}),
               {"contribution": "{:.3g}", "presence": "{:.0%}"},
               caption="the concept adding most to each class")
    return _answer(sentence, ev)


def _tcav_answer(r: ReportRun) -> str:
    tc = r.table("tcav")
    if tc is None or "significant" not in tc:
        return ""
    sig = tc[tc["significant"].astype(bool)]
    layer = (r.manifest.get("tcav") or {}).get("layer", "?")
    alpha = float(tc["alpha"].iloc[0]) if "alpha" in tc else 0.05
    if len(sig):
        best = sig.loc[(sig["score_mean"] - sig["random_mean"]).abs().idxmax()]
        detail = (f"; the largest: <i>{esc(best['concept'])}</i> for class <i>{esc(best['class_name'])}</i> "
                  f"(score {best['score_mean']:.2f} against {best['random_mean']:.2f} for random directions)")
    else:
        detail = ": no tested concept is used differently from random directions"
    sentence = (f"TCAV (run <b>{esc(r.name)}</b>) at layer <i>{esc(layer)}</i>: {len(sig)} of {len(tc)} concept-class pairs "
                f"are significant (t-test, alpha {alpha:g} Bonferroni-corrected over {len(tc)} tests){detail}. "
                + _link(f"concepts.html#{r.slug}-tcav", "Scores of every pair") + ".")
    rows = sig if len(sig) else tc.sort_values("p_value").head(5)
    cols = ["concept", "class_name", "score_mean", "random_mean", "p_value"]
    ev = table(rows[cols].rename(columns={"class_name": "class"}),
               {"score_mean": "{:.2f}", "random_mean": "{:.2f}", "p_value": "{:.3g}"},
               caption="significant pairs" if len(sig) else "smallest p-values (none significant)")
    return _answer(sentence, ev)


def _dissect_answer(r: ReportRun) -> str:
    d = r.table("dissection")
    if d is None or not {"layer", "unit", "label", "labelled", "score"} <= set(d.columns):
        return ""
    info = r.manifest.get("dissection") or {}
    kind = info.get("kind", "concepts")
    parts = []
    for layer, g in d.groupby("layer", sort=False):
        lab = g[g["labelled"].astype(bool)]
        counts = lab["label"].value_counts().head(3)
        common = ", ".join(f"{lbl} ({k})" for lbl, k in counts.items())
        parts.append(f"<i>{esc(layer)}</i>: {len(lab)} of {len(g)} units labelled" + (f", mostly {esc(common)}" if common else ""))
    score = "class selectivity" if kind == "classes" else "IoU"
    sentence = (f"Dissection (run <b>{esc(r.name)}</b>; units labelled with {'classes' if kind == 'classes' else 'concepts'} "
                f"by {score}): "
                + "; ".join(parts) + ". " + _link(f"dissection.html#{r.slug}", "Unit galleries") + ".")
    top = d[d["labelled"].astype(bool)].sort_values("score", ascending=False).head(5)
    ev = table(top[["layer", "unit", "label", "score"]], {"score": "{:.3f}"}, caption=f"top units by {score}")
    return _answer(sentence, ev)


def question_patterns(concepts: list[ReportRun], dissections: list[ReportRun]) -> str:
    answers = [a for r in concepts for a in (_ice_answer(r), _tcav_answer(r)) if a]
    answers += [a for a in (_dissect_answer(r) for r in dissections) if a]
    if not concepts:
        answers.append(_answer("No concepts run was given: <code>xailab concepts ice --model M --weights W "
                               "--images DATA --layer L --out RUN</code> finds the concepts a layer uses, "
                               "<code>xailab concepts tcav</code> tests concepts you name."))
    if not dissections:
        answers.append(_answer("No dissection run was given: <code>xailab dissect --model M --weights W --images "
                               "DATA --layers L --concepts classes --out RUN</code> labels single units."))
    return _box(2, "What patterns has the model learned?", answers)


# -- 3. difficulties -----------------------------------------------------------------------------------
def _class_answer(r: ReportRun) -> str:
    pc, conf = r.table("per_class"), r.table("confusion")
    if pc is None or "accuracy" not in pc:
        return ""
    split, pcs = pick_split(pc)
    weak = weakest_classes(pcs)
    ev_tab = r.table("evaluation")
    overall = ""
    if ev_tab is not None and "accuracy" in ev_tab:
        _, e = pick_split(ev_tab)
        if len(e):
            overall = f", against {pct(float(e['accuracy'].iloc[0]))} overall"
    names = ", ".join(f"{esc(c)} ({pct(float(a))})" for c, a in zip(weak["class"], weak["accuracy"], strict=True))
    sentence = (f"In run <b>{esc(r.name)}</b>{f' ({esc(split)} split)' if split else ''}, the weakest classes are {names}{overall}.")
    evidence = table(weak[[c for c in ("class", "support", "accuracy") if c in weak]], {"accuracy": "{:.1%}"},
                     caption="lowest accuracy (recall)")
    if conf is not None and {"true", "predicted", "count"} <= set(conf.columns):
        _, cs = pick_split(conf.assign(name=conf["name"].astype(str)) if "name" in conf else conf)
        pairs = confused_pairs(cs, r.class_names())
        if len(pairs):
            p = pairs.iloc[0]
            sentence += (f" The most frequent confusion: <i>{esc(p['true'])}</i> taken for "
                         f"<i>{esc(p['predicted as'])}</i> ({int(p['count'])} images, "
                         f"{pct(float(p['share of the true class']))} of the class).")
            evidence += table(pairs, {"share of the true class": "{:.1%}"}, caption="most confused pairs")
        sentence += " " + _link(f"index.html#confusion-{r.slug}", "Confusion matrix") + "."
    return _answer(sentence, evidence)


def _flow_answer(r: ReportRun, has_flow_page: bool) -> str:
    pred = r.table("predictions")
    if pred is None or not {"epoch", "instance", "label", "predicted"} <= set(pred.columns):
        return ""
    dyn = instance_dynamics(pred)
    epochs = int(pred["epoch"].nunique())
    link = (" " + _link("flow.html", "Instance flow") + ".") if has_flow_page else \
        f" (<code>xailab flow {esc(r.name)}</code> draws the instance flow.)"
    if epochs < 2:
        return _answer(f"Run <b>{esc(r.name)}</b> recorded the predictions of {len(dyn):,} instances at one epoch only: "
                       f"forgetting needs two or more.{link}")
    ltf, forg, never = int(dyn["learned_then_forgotten"].sum()), int((dyn["forgetting"] > 0).sum()), int(dyn["never_right"].sum())
    sentence = (f"Over {epochs} epochs of {len(dyn):,} tracked instances in run <b>{esc(r.name)}</b>, {ltf} were right at some "
                f"epoch and wrong at the last (learned, then forgotten), {forg} had at least one forgetting event "
                f"(right, then wrong) and {never} were never right")
    if "ambiguous" in dyn:
        sentence += (f"; {int(dyn['ambiguous'].sum())} are ambiguous (the probability of their true class varies "
                     f"with a standard deviation of {AMBIGUOUS_STD:g} or more over the epochs)")
    sentence += "." + link
    key = ["forgetting", "variability"] if "variability" in dyn else ["forgetting", "changes"]
    mask = dyn["learned_then_forgotten"] | dyn["ambiguous"] if "ambiguous" in dyn else dyn["learned_then_forgotten"]
    worst = dyn[mask].sort_values(key, ascending=False).head(8)
    names = r.class_names() or []

    def cname(k: int) -> str:
        return names[k] if 0 <= k < len(names) else str(k)

    show = pd.DataFrame({"instance": worst["instance"], "true": [cname(int(k)) for k in worst["label"]],
                         "last prediction": [cname(int(k)) for k in worst["final"]],
                         "forgetting events": worst["forgetting"], "changes": worst["changes"]})
    fmt = {}
    if "variability" in worst:
        show["p(true) last"] = worst["p_final"].to_numpy()
        show["p(true) std"] = worst["variability"].to_numpy()
        fmt = {"p(true) last": "{:.2f}", "p(true) std": "{:.2f}"}
    ev = table(show, fmt, caption="forgotten or ambiguous instances (most forgetting first)") if len(show) else ""
    return _answer(sentence, ev)


def question_difficulties(runs: list[ReportRun], has_flow_page: bool) -> str:
    answers = [a for r in runs for a in (_class_answer(r), _flow_answer(r, has_flow_page)) if a]
    if not answers:
        answers = [_answer("No run with an evaluation or recorded predictions was given: <code>xailab train ... "
                           "--out RUN</code> (or <code>xailab evaluate</code>) stores per-class accuracy, the "
                           "confusion matrix and the per-epoch predictions.")]
    return _box(3, "What difficulties does it have?", answers)


def questions_section(site: Site, runs: list[ReportRun], explain: list[ReportRun], concepts: list[ReportRun],
                      dissections: list[ReportRun], has_flow_page: bool) -> str:
    """The three questions, answered from ``runs``."""
    return ("<h2>Three questions</h2>"
            + question_where(site, explain)
            + question_patterns(concepts, dissections)
            + question_difficulties(runs, has_flow_page))
