"""Training dynamics: instance flow, how predictions move between classes over the epochs.

The trainer's recorder (:mod:`xailab.train.recorder`) writes the history; this package reads it:

* :mod:`~xailab.dynamics.history`: the bounded reader (:func:`load_history` -> :class:`History`),
* :mod:`~xailab.dynamics.flow`: the Sankey counts, the instance table, class distributions,
  confused pairs,
* :mod:`~xailab.dynamics.page`: the self-contained interactive HTML page,
* :mod:`~xailab.dynamics.thumbnails`: instance images for the page.

    from xailab.dynamics import flow_page
    flow_page(Run.open("runs/cifar"), true_classes=["cat"], epochs="1-6", changed_only=True)
"""

from xailab.dynamics.flow import (
    CORRECT_GROUPS,
    Sankey,
    class_distribution,
    confused_pairs,
    confusion_by_epoch,
    flow_members,
    instance_table,
    learned_then_forgotten,
    sankey,
    select_history,
)
from xailab.dynamics.history import (
    FlowError,
    History,
    class_names,
    load_history,
    parse_epochs,
    recorded_epochs,
    resolve_classes,
)
from xailab.dynamics.page import FlowPage, flow_page, page_data, render_page
from xailab.dynamics.thumbnails import explanation_path, render_thumbnails

__all__ = [
    "CORRECT_GROUPS",
    "FlowError",
    "FlowPage",
    "History",
    "Sankey",
    "class_distribution",
    "class_names",
    "confused_pairs",
    "confusion_by_epoch",
    "explanation_path",
    "flow_members",
    "flow_page",
    "instance_table",
    "learned_then_forgotten",
    "load_history",
    "page_data",
    "parse_epochs",
    "recorded_epochs",
    "render_page",
    "render_thumbnails",
    "resolve_classes",
    "sankey",
    "select_history",
]
