"""Which method to trust for this model and data: intervals on the scoreboard and a verdict.

:func:`board_intervals` adds a bootstrap interval over images (``<column>_low``,
``<column>_high``) to every scoreboard column that has per-image values: deletion and insertion
AUC, faithfulness correlation, agreement IoU / Spearman (a method's mean over the other methods,
per image) and ``avg_iou``. Time is measured once per run, so it has no interval.

:func:`verdict` ranks the methods under a :class:`VerdictRule`, a rule that is data (weights,
thresholds), written into the run and shown on the report page:

1. per image, ``faithfulness = w_insertion * insertion_auc - w_deletion * deletion_auc`` (higher
   is better: the score rises fast when the top pixels are revealed and falls fast when they are
   removed);
2. its mean, bootstrap interval and a rank from Holm-corrected paired sign-flip tests over the
   images (:func:`~xailab.metrics.stats.significance_ranks`): methods that cannot be told apart
   share a rank, and the verdict says "tie";
3. with ``sanity_gate``, a method flagged by the randomisation test ranks after every method
   that passed; the reason is given: *input-dominated* when its maps on the randomised model
   still follow the input's magnitude (Spearman >= ``input_threshold``), else *model-independent*;
4. caveats per method: slow (seconds per image above ``slow_seconds``), an outlier (mean IoU with
   the other methods below ``low_agreement``), few images (fewer than ``min_images``).

    board = board_intervals(board, faith, agreement, reference="gradcam")
    table = verdict(faith, board, sanity_table, agreement)        # one row per method, ranked
    table.attrs["recommendation"]                                 # one sentence
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from xailab.metrics.info import MetricInfo
from xailab.metrics.stats import CI, bootstrap_ci, significance_ranks

#: the verdict's per-image score, declared as the other metrics are
FAITHFULNESS = MetricInfo("faithfulness", "higher", "faithfulness",
                          "w_insertion * insertion AUC - w_deletion * deletion AUC, per image")


@dataclass(frozen=True)
class VerdictRule:
    """The verdict's rule (module docstring); every field is shown on the report page."""

    w_insertion: float = 1.0
    w_deletion: float = 1.0
    alpha: float = 0.05
    level: float = 0.95
    sanity_gate: bool = True
    input_threshold: float = 0.5
    slow_seconds: float = 1.0
    low_agreement: float = 0.1
    min_images: int = 10
    resamples: int = 2000
    seed: int = 0

    def table(self) -> pd.DataFrame:
        """``name, value, meaning``: the rule as a table for the report."""
        meaning = {
            "w_insertion": "weight of insertion AUC in faithfulness = w_ins * insertion - w_del * deletion",
            "w_deletion": "weight of deletion AUC in that score",
            "alpha": "paired tests (Holm-corrected) below this p-value separate two methods, else a tie",
            "level": "confidence level of the bootstrap intervals over images",
            "sanity_gate": "methods flagged by the randomisation test rank after all that passed",
            "input_threshold": "flagged maps whose Spearman with |input| reaches this are input-dominated",
            "slow_seconds": "seconds per image above which a method is called slow",
            "low_agreement": "mean IoU with the other methods below which a method is an outlier",
            "min_images": "fewer images than this: intervals are wide, read ties with care",
            "resamples": "bootstrap resamples and random sign flips",
            "seed": "seed of the resampling",
        }
        return pd.DataFrame([{"name": k, "value": v, "meaning": meaning[k]} for k, v in asdict(self).items()])


def per_image_agreement(agreement: pd.DataFrame, method: str, column: str,
                        partner: str | None = None) -> pd.Series:
    """Per image, the mean ``column`` of ``method`` with the other methods (or ``partner``)."""
    if agreement is None or not len(agreement):
        return pd.Series(dtype=float)
    pairs = agreement[(agreement["method_a"] == method) | (agreement["method_b"] == method)]
    if partner is not None:
        pairs = pairs[(pairs["method_a"] == partner) | (pairs["method_b"] == partner)]
    return pairs.groupby("image")[column].mean()


def _set(board: pd.DataFrame, col: str, cis: list[CI]) -> None:
    board[f"{col}_low"] = [c.low for c in cis]
    board[f"{col}_high"] = [c.high for c in cis]


def board_intervals(board: pd.DataFrame, faith: pd.DataFrame, agreement: pd.DataFrame | None = None, *,
                    reference: str | None = None, level: float = 0.95, resamples: int = 2000,
                    seed: int = 0) -> pd.DataFrame:
    """``board`` with ``<column>_low`` / ``<column>_high`` bootstrap intervals (module docstring)."""
    out = board.copy()
    methods = list(out["method"])

    def ci(values: object) -> CI:
        return bootstrap_ci(values, level=level, resamples=resamples, seed=seed)

    for col in ("deletion_auc", "insertion_auc", "faithfulness_corr", "road_auc", "infidelity", "irof"):
        if col in out and col in faith:
            _set(out, col, [ci(faith.loc[faith["method"] == m, col]) for m in methods])
    if agreement is not None and len(agreement):
        for col, src in (("agreement_iou", "iou"), ("agreement_spearman", "spearman")):
            if col in out and src in agreement:
                _set(out, col, [ci(per_image_agreement(agreement, m, src)) for m in methods])
        if reference is not None and "avg_iou" in out:
            _set(out, "avg_iou", [CI(1.0, 1.0, 1.0, 1) if m == reference else
                                  ci(per_image_agreement(agreement, m, "iou", reference)) for m in methods])
    return out


def sanity_reason(rows: pd.DataFrame | None, input_threshold: float) -> tuple[str, str]:
    """``(verdict, reason)`` of one method from its sanity table (the last step decides)."""
    if rows is None or not len(rows):
        return "n/a", "not tested (not a registered method, or the test was skipped)"
    last = rows.iloc[-1]
    sp = float(last["spearman"])
    verdict = str(last.get("verdict", "n/a"))
    if verdict == "passed":
        return verdict, f"maps change when the weights are randomised (Spearman {sp:.2f})"
    if verdict != "flagged":
        return verdict, "not tested"
    inp = float(last["input_spearman"]) if "input_spearman" in rows else float("nan")
    if np.isfinite(inp) and inp >= input_threshold:
        return verdict, (f"input-dominated: on the randomised model the map still follows |input| "
                         f"(Spearman {inp:.2f}); it shows the image more than the model")
    return verdict, f"model-independent: the map hardly changes when the weights are randomised (Spearman {sp:.2f})"


def _scores(faith: pd.DataFrame, methods: list[str], rule: VerdictRule) -> dict[str, np.ndarray]:
    out = {}
    for m in methods:
        f = faith[faith["method"] == m].sort_values("image")
        out[m] = (rule.w_insertion * f["insertion_auc"].to_numpy(np.float64)
                  - rule.w_deletion * f["deletion_auc"].to_numpy(np.float64))
    return out


def _caveats(m: str, board_row: pd.Series | None, n: int, rule: VerdictRule) -> list[str]:
    out = []
    if board_row is not None:
        t = float(board_row.get("avg_time", np.nan))
        if np.isfinite(t) and t > rule.slow_seconds:
            out.append(f"slow ({t:.3g} s per image)")
        a = float(board_row.get("agreement_iou", np.nan))
        if np.isfinite(a) and a < rule.low_agreement:
            out.append(f"outlier (mean IoU {a:.2f} with the other methods)")
    if n < rule.min_images:
        out.append(f"only {n} images")
    return out


def verdict(faith: pd.DataFrame, board: pd.DataFrame | None = None, sanity: pd.DataFrame | None = None,
            agreement: pd.DataFrame | None = None, rule: VerdictRule | None = None) -> pd.DataFrame:
    """One row per method, best first (module docstring): ``position, method, rank, faithfulness``
    with its interval, ``deletion_auc`` / ``insertion_auc`` intervals, ``tied_with``, ``sanity``,
    ``sanity_reason``, ``agreement_iou``, ``avg_time``, ``caveats``. ``attrs["recommendation"]``
    is one sentence; ``attrs["rule"]`` the rule as records ``name, value, meaning``."""
    rule = rule or VerdictRule()
    methods = list(dict.fromkeys(faith["method"]))
    scores = _scores(faith, methods, rule)
    ranks, pvals = significance_ranks(scores, higher_is_better=True, alpha=rule.alpha,
                                      resamples=rule.resamples, seed=rule.seed)
    brow = {str(r["method"]): r for _, r in board.iterrows()} if board is not None else {}
    rows = []
    for m in methods:
        ci = bootstrap_ci(scores[m], level=rule.level, resamples=rule.resamples, seed=rule.seed)
        f = faith[faith["method"] == m]
        d = bootstrap_ci(f["deletion_auc"], level=rule.level, resamples=rule.resamples, seed=rule.seed)
        i = bootstrap_ci(f["insertion_auc"], level=rule.level, resamples=rule.resamples, seed=rule.seed)
        s_rows = sanity[sanity["method"] == m] if sanity is not None and "method" in sanity else None
        s_verdict, reason = sanity_reason(s_rows, rule.input_threshold)
        ties = [o for o in methods if o != m and ranks[o] == ranks[m]
                and not pvals.get((m, o), pvals.get((o, m), 0.0)) < rule.alpha]
        b = brow.get(m)
        rows.append({
            "method": m, "rank": ranks[m] if np.isfinite(ci.mean) else len(methods),
            "faithfulness": ci.mean, "faithfulness_low": ci.low, "faithfulness_high": ci.high,
            "deletion_auc": d.mean, "deletion_auc_low": d.low, "deletion_auc_high": d.high,
            "insertion_auc": i.mean, "insertion_auc_low": i.low, "insertion_auc_high": i.high,
            "tied_with": ", ".join(ties), "sanity": s_verdict, "sanity_reason": reason,
            "agreement_iou": float(b["agreement_iou"]) if b is not None and "agreement_iou" in b else np.nan,
            "avg_time": float(b["avg_time"]) if b is not None and "avg_time" in b else np.nan,
            "caveats": "; ".join(_caveats(m, b, ci.n, rule) + (["sanity not tested"] if s_verdict == "n/a" else [])),
            "images": ci.n,
        })
    table = pd.DataFrame(rows)
    gated = (table["sanity"] == "flagged") if rule.sanity_gate else pd.Series(False, index=table.index)
    table["gated"] = gated
    table = table.sort_values(["gated", "rank", "faithfulness"], ascending=[True, True, False], kind="stable")
    table.insert(0, "position", np.arange(1, len(table) + 1))
    table = table.reset_index(drop=True)
    table.attrs["recommendation"] = recommendation(table)
    table.attrs["rule"] = rule.table().to_dict("records")
    return table


def recommendation(table: pd.DataFrame) -> str:
    """One sentence from a :func:`verdict` table: the best method(s), ties named."""
    if not len(table):
        return "no method to recommend: the run has no faithfulness scores"
    ok = table[~table["gated"]]
    if not len(ok):
        return ("no method passed the sanity check; the least bad by faithfulness is "
                f"{table.iloc[0]['method']}, but its maps do not depend on the model enough to trust them")
    best = ok[ok["rank"] == ok["rank"].min()]
    names = list(best["method"])
    lead = ok.iloc[0]
    text = (f"{lead['method']} (faithfulness {lead['faithfulness']:.3f} "
            f"[{lead['faithfulness_low']:.3f}, {lead['faithfulness_high']:.3f}])")
    if len(names) > 1:
        others = ", ".join(n for n in names if n != lead["method"])
        return f"use {text}; it ties with {others} (no significant difference on these images)"
    if len(ok) < len(table):
        return f"use {text}; of the methods that passed the sanity check it is significantly the most faithful"
    return f"use {text}; it is significantly more faithful than every other method"
