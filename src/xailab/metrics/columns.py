"""The metric behind each numeric column of the scoreboard, as data.

``compare`` writes these into the run (manifest section ``metrics``); the printed scoreboard
and the report say which way is better from them.

    COLUMNS["deletion_auc"].better()     # 'lower is better'
"""

from __future__ import annotations

from xailab.metrics.agreement import iou, spearman
from xailab.metrics.faithfulness import deletion, faithfulness_correlation, insertion
from xailab.metrics.infidelity import infidelity
from xailab.metrics.info import MetricInfo, info_of
from xailab.metrics.irof import irof
from xailab.metrics.road import road
from xailab.metrics.sanity import randomisation_test

#: the metric behind each numeric scoreboard column: its direction and category as data
COLUMNS: dict[str, MetricInfo] = {
    "seconds": MetricInfo("seconds", "lower", "cost", "wall-clock seconds of the method's explain call", low=0.0),
    "avg_time": MetricInfo("avg_time", "lower", "cost", "seconds per image", low=0.0),
    "evaluations_per_image": MetricInfo("evaluations_per_image", "lower", "cost",
                                        "samples the model evaluated per image", low=0.0),
    "deletion_auc": info_of(deletion),
    "insertion_auc": info_of(insertion),
    "faithfulness_corr": info_of(faithfulness_correlation),
    "road_auc": info_of(road),
    "infidelity": info_of(infidelity),
    "irof": info_of(irof),
    "sanity_spearman": info_of(randomisation_test),
    "agreement_iou": info_of(iou),
    "agreement_spearman": info_of(spearman),
    "avg_iou": info_of(iou),
}


def direction_legend(columns: dict[str, MetricInfo]) -> str:
    """``"lower is better: a, b; higher is better: c"`` from the columns' metric data."""
    parts = []
    for direction in ("lower", "higher"):
        names = [c for c, info in columns.items() if info.direction == direction]
        if names:
            parts.append(f"{direction} is better: {', '.join(names)}")
    return "; ".join(parts)

