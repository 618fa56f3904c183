"""The comparison page of twelve methods fits a 1300-pixel window: short scoreboard headers with
their full names as tooltips, intervals and method names that wrap, agreement matrices whose
column names wrap after underscores (checked in headless Chromium: no table scrolls sideways)."""

from __future__ import annotations

import re
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.browser import chromium, headless
from xailab.report.site import build_site
from xailab.report.verdict_section import SCOREBOARD_COLUMNS

from .test_report import make_explain

METHODS = ["saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "deeplift", "gradcam",
           "gradcam_pp", "score_cam", "occlusion", "lime", "kernel_shap", "lrp_epsilon_plus"]
SCORES = ["avg_iou", "deletion_auc", "insertion_auc", "faithfulness_corr", "road_auc", "infidelity", "irof",
          "agreement_iou", "agreement_spearman"]

# Added to a copy of the page without its policy: the tables wider than their box, and the page's width.
PROBE = ("<script>addEventListener('load',()=>{const o=[...document.querySelectorAll('.tw')].filter(e=>"
         "e.scrollWidth>e.clientWidth+1).map(e=>e.scrollWidth+'>'+e.clientWidth);document.body.setAttribute("
         "'data-over',o.join('|'));document.body.setAttribute('data-width',document.documentElement.scrollWidth"
         "+'/'+innerWidth)});</script>")


def twelve_method_site(tmp_path: Path) -> Path:
    run = make_explain(tmp_path / "explain")
    rng = np.random.default_rng(0)
    board = pd.DataFrame({"method": METHODS, "avg_time": rng.uniform(0.01, 12, 12), "sanity": "passed",
                          "sanity_spearman": rng.uniform(-0.1, 0.4, 12), "evaluations_per_image": 1000.0})
    for c in SCORES:
        v = rng.uniform(-0.2, 0.9, 12)
        board[c], board[f"{c}_low"], board[f"{c}_high"] = v, v - 0.123456, v + 0.234567
    run.write_table("scoreboard", board)
    pairs = list(combinations(METHODS, 2))
    run.write_table("agreement", pd.DataFrame({"image": 0, "name": "a", "method_a": [a for a, _ in pairs],
                                               "method_b": [b for _, b in pairs], "iou": rng.uniform(0, 1, len(pairs)),
                                               "spearman": rng.uniform(-0.3, 1, len(pairs))}))
    return build_site([run.path], tmp_path / "site")


def test_scoreboard_headers_are_short_with_their_full_names_as_tooltips(tmp_path: Path) -> None:
    page = (twelve_method_site(tmp_path) / "compare.html").read_text()
    for short, full in SCOREBOARD_COLUMNS.values():
        assert len(short) <= 12
        if full:
            assert f'title="{full}"' in page.replace("&#x27;", "'"), full
    assert "integrated_<wbr>gradients" in page  # names wrap in the matrices' heads and the scoreboard
    assert re.search(r"<th[^>]*>lrp_<wbr>epsilon_<wbr>plus</th>", page)


@pytest.mark.slow
def test_twelve_methods_fit_a_1300_pixel_window(tmp_path: Path) -> None:
    exe = chromium()
    page = twelve_method_site(tmp_path) / "compare.html"
    probe = page.with_name("probe.html")
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page.read_text())
                     .replace("</body>", PROBE + "</body>"))
    dom = headless(exe, probe.as_uri(), "--dump-dom", "--window-size=1300,900").stdout
    m = re.search(r'data-over="([^"]*)" data-width="(\d+)/(\d+)"', dom)
    assert m is not None, dom[:300]
    assert m.group(1) == "", m.group(1)  # no table wider than the page
    assert int(m.group(2)) <= int(m.group(3))
