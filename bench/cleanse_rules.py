"""The decisions of :mod:`bench.bench_cleanse`: which classes each rule flags per audited model, and
the summary per trigger and split (seeds 1-5 ``dev``: the models the earlier rules were looked at
on; other seeds ``test``).

Rules (each fixed before the test seeds were audited):

* ``mad``: the paper's MAD test on the model's own mask norms, robust z > ``threshold``;
* ``relative``: the MAD test on ``log(l1 / reference)`` (geometric median of the references),
  z > ``threshold`` (``cleanse.relative_flags``);
* ``null``: each class against its own spread among the references (``cleanse_null.null_test``:
  Student t on the centred log norms, Bonferroni over the classes, family-wise ``alpha`` 0.05).
  The references themselves are tested leave-one-out (``cleanse_null.leave_one_out``): clean
  models that took no part in their own null.
* ``moderated`` (**post hoc**: written after seeing seed 21 against 4 references, where single
  references with an unconverged mask made some classes' spread huge and others' tiny): ``null``
  with each class's variance shrunk halfway to the median variance over the classes,
  ``s~_k^2 = (s_k^2 + median_j s_j^2) / 2``, and ``2 (R - 1)`` degrees of freedom (an
  empirical-Bayes moderated t with prior weight ``R - 1``, as limma's, the prior not estimated).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def flags_text(flags: list[int]) -> str:
    return ",".join(map(str, flags)) or "-"


def decisions(rows: list[dict[str, Any]], threshold: float, alpha: float = 0.05) -> pd.DataFrame:
    """One row per audited model (references included, tested leave-one-out by ``null``)."""
    from xailab.audit.cleanse import flag_small, reference_norms, relative_flags
    from xailab.audit.cleanse_null import MIN_REFERENCES, leave_one_out, null_test, reference_null

    refs = [r for r in rows if r["model"] == "reference"]
    ref_l1 = [r["l1"] for r in refs]
    geo = reference_norms(ref_l1) if refs else None
    null = reference_null(ref_l1) if len(refs) >= MIN_REFERENCES else None
    loo = leave_one_out(ref_l1, alpha) if len(refs) > MIN_REFERENCES else [([], np.nan)] * len(refs)
    mod = moderated(null) if null is not None else None
    loo_mod = [moderated_test(r["l1"], moderated(reference_null([q["l1"] for q in refs if q is not r])), alpha)
               for r in refs] if len(refs) > MIN_REFERENCES else [[]] * len(refs)
    out = []
    for r in rows:
        l1, t, reached = np.asarray(r["l1"]), r["target"], np.asarray(r["reached"])
        others = np.arange(len(l1)) != t
        d = {"seed": r["seed"], "model": r["model"], "trigger": r.get("trigger", "patch:4"), "target": t,
             "split": "dev" if 1 <= r["seed"] <= 5 else "test", "asr": r["asr"],
             "mad": flags_text(flag_small(l1, threshold, reached)), "nc_s": r["nc_s"],
             "top_iou": r.get("top_iou", np.nan), "box_iou": r.get("box_iou", np.nan),
             "strip_frr": r.get("strip_frr", np.nan), "strip_far": r.get("strip_far", np.nan)}
        if r["model"] == "reference":
            flags, p_min = loo[refs.index(r)]
            d.update(null=flags_text(flags), p_adj_min_other=p_min, moderated=flags_text(loo_mod[refs.index(r)]))
            out.append(d)
            continue
        if geo is not None:
            flags, z, _p = relative_flags(l1, geo, threshold, reached)
            d.update(relative=flags_text(flags), z_rel_target=float(z[t]) if t >= 0 else np.nan,
                     z_rel_other=float(z[others].max()))
        if null is not None:
            flags, tt, _p, p_adj = null_test(l1, null, alpha, reached)
            d.update(null=flags_text(flags), t_target=float(tt[t]) if t >= 0 else np.nan,
                     p_adj_target=float(p_adj[t]) if t >= 0 else np.nan,
                     t_other=float(tt[others].max()), p_adj_min_other=float(p_adj[others].min()),
                     moderated=flags_text(moderated_test(l1, mod, alpha, reached)))
        out.append(d)
    return pd.DataFrame(out)


def moderated(null: Any) -> Any:
    """The ``moderated`` rule's null: variances shrunk halfway to their median, twice the dof."""
    from dataclasses import replace

    var = null.scale ** 2
    return replace(null, scale=np.sqrt((var + np.median(var)) / 2), n=2 * null.n - 1)


def moderated_test(l1: Any, null: Any, alpha: float, reached: Any = None) -> list[int]:
    from xailab.audit.cleanse_null import null_test

    return null_test(np.asarray(l1), null, alpha, reached)[0]


def span(values: Any) -> str:
    v = pd.Series(values, dtype=float).dropna()
    return "-" if v.empty else f"{v.min():.3g}-{v.max():.3g}"


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per split, trigger and rule: target flagged, another class flagged in poisoned models,
    clean models flagged, references flagged (``null``: each left out of its own null; ``mad``: they
    are clean models like any other; ``relative``: none, their norms are its reference), and the
    figures behind them."""
    out = []
    clean = df[df["model"] == "clean"]
    refs = df[df["model"] == "reference"]
    for (split, trigger), pois in df[df["model"] == "poisoned"].groupby(["split", "trigger"]):
        learnt = pois[pois["asr"] >= 0.5]
        cl = clean[clean["split"] == split]
        for rule in [c for c in ("mad", "relative", "null", "moderated") if c in df
                     and (c in ("mad", "relative") or "t_target" in df)]:  # the null needs 3 references
            hit = [str(t) in str(f).split(",") for t, f in zip(learnt["target"], learnt[rule], strict=True)]
            extra = [any(x != str(t) for x in str(f).split(",") if x != "-")
                     for t, f in zip(learnt["target"], learnt[rule], strict=True)]
            row = {"split": split, "trigger": trigger, "rule": rule, "target_flagged": f"{sum(hit)}/{len(learnt)}",
                   "other_class_in_poisoned": f"{sum(extra)}/{len(learnt)}",
                   "clean_flagged": f"{int((cl[rule] != '-').sum())}/{len(cl)}",
                   "refs_flagged": f"{int((refs[rule] != '-').sum())}/{len(refs)}" if rule != "relative" else "",
                   "asr": span(learnt["asr"]), "top_iou": span(learnt["top_iou"]), "box_iou": span(learnt["box_iou"]),
                   "nc_cpu_s": span(pois["nc_s"]), "strip_frr": span(learnt["strip_frr"]),
                   "strip_far": span(learnt["strip_far"])}
            if rule == "null":
                row.update(t_target=span(learnt["t_target"]), p_adj_target=span(learnt["p_adj_target"]),
                           p_adj_min_clean=span(cl["p_adj_min_other"]))
            elif rule == "relative":
                row.update(z_target=span(learnt["z_rel_target"]), z_max_clean=span(cl["z_rel_other"]))
            out.append(row)
    return pd.DataFrame(out)
