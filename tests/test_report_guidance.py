"""Dissection and concept pages: a unit is named only above the threshold shown on the page;
guidance beside the fidelity numbers."""

from __future__ import annotations

import inspect

import pandas as pd

from xailab.concepts.dissection import DEFAULT_SELECTIVITY_THRESHOLD, dissect_classes
from xailab.report.dissection_page import shown_labels, threshold_note


def test_units_below_the_threshold_show_no_clear_concept() -> None:
    units = pd.DataFrame({"unit": [0, 1], "label": ["Trouser", "Sandal"], "score": [0.082, 0.61],
                          "labelled": [False, True]})
    shown = shown_labels(units)
    assert list(shown["label"]) == ["no clear concept (best guess: Trouser)", "Sandal"]
    assert list(units["label"]) == ["Trouser", "Sandal"]  # the input is left alone


def test_threshold_is_explained_and_a_zero_threshold_is_called_out() -> None:
    note = threshold_note("classes", 0.3)
    assert "reaches 0.3" in note and "no clear concept" in note and "threshold 0" not in note
    assert "every unit got a class" in threshold_note("classes", 0.0)
    assert "IoU 0.04" in threshold_note("colour", 0.04)
    assert threshold_note("classes", None) == ""


def test_class_dissection_labels_only_selective_units_by_default() -> None:
    default = inspect.signature(dissect_classes).parameters["threshold"].default
    assert default == DEFAULT_SELECTIVITY_THRESHOLD > 0
