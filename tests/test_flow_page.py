"""The instance-flow page: escaping, the data it embeds, thumbnails, and (with Chromium) drawing."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.browser import chromium, headless
from xailab.dynamics import History, flow_page, page_data, render_page, render_thumbnails, sankey
from xailab.dynamics._page_assets import JS
from xailab.dynamics.page import flow_cells, script_json
from xailab.dynamics.thumbnails import explanation_path

from .test_flow import make_run

EVIL = "<script>alert(1)</script>"
EVIL_CLASSES = [EVIL, "a&b \"quoted\" 'single'", "</script><b>x</b>"]


def json_block(page: str) -> str:
    m = re.search(r'<script type="application/json" id="flow-data">(.*?)</script>', page, re.S)
    assert m is not None
    return m.group(1)


def test_user_strings_are_escaped(tmp_path: Path) -> None:
    run = make_run(tmp_path / "<img src=x onerror=alert(2)>", classes=EVIL_CLASSES)
    page = flow_page(run, true_classes=[EVIL]).path.read_text()
    assert EVIL not in page and "</script><b>" not in page and "onerror=alert(2)>" not in page
    assert html.escape("<img src=x onerror=alert(2)>") in page  # the run name, as text
    block = json_block(page)
    assert "<" not in block and ">" not in block and "&" not in block
    data = json.loads(block)
    assert data["classes"] == EVIL_CLASSES and data["run"] == "<img src=x onerror=alert(2)>"
    assert page.count("<script") == 2  # the data block and our own script, nothing else


def test_script_json_round_trips_awkward_text() -> None:
    obj = {"s": "</script><!-- \u2028 & <b>", "n": [1, None, 2.5]}
    text = script_json(obj)
    assert "</" not in text and "<!--" not in text and json.loads(text) == obj


def test_only_our_script_may_run() -> None:
    data = page_data(History(np.array([1]), np.array([0]), np.array([0]), np.zeros((1, 1), int),
                             None, ("a",)))
    page = render_page(data)
    digest = base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in page and "default-src 'none'" in page
    assert f"<script>{JS}</script>" in page
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=|@import|fetch\(|XMLHttpRequest", page)


def test_every_package_data_file_goes_into_the_wheel() -> None:
    """The page's script and stylesheet are files read at run time: pyproject must ship them."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["xailab"]
    pkg = root / "src" / "xailab"
    data = {p.relative_to(pkg).as_posix() for p in pkg.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts}
    assert {"dynamics/flow_page.js", "dynamics/flow_page.css"} <= data
    assert data <= set(listed), f"package data missing from pyproject.toml: {sorted(data - set(listed))}"


def aggregate_cells(h: History, color_by: str, changed: bool, miscl: bool) -> dict:
    """What the page's script computes from the cells, written again in Python."""
    _, links = flow_cells(h)
    out: dict = {}
    for s, a, b, y, cg, f, n in links:
        if (changed and not f & 1) or (miscl and not f & 2):
            continue
        key = (int(h.epochs[s]), a, b, y if color_by == "true" else cg)
        out[key] = out.get(key, 0) + n
    return out


@pytest.mark.parametrize("color_by", ["true", "correct"])
def test_page_cells_reaggregate_to_the_sankey(tmp_path: Path, color_by: str) -> None:
    from xailab.dynamics import select_history

    run = make_run(tmp_path / "r")
    for changed, miscl in [(False, False), (True, False), (False, True), (True, True)]:
        h = select_history(run, changed_only=changed, misclassified=miscl)
        want = {(r[0], r[2], r[3], r[4]): r[5] for r in sankey(h, color_by).links.to_numpy().tolist()}
        assert aggregate_cells(select_history(run), color_by, changed, miscl) == want
    nodes, _ = flow_cells(select_history(run))
    assert sum(n for e, *_, n in nodes if e == 0) == 6


def test_thumbnails_and_explanation_links(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")
    images = [torch.rand(3, 8, 8) * 4 - 2 for _ in range(6)]  # normalised-looking tensors
    paths = render_thumbnails(run, [(x, 0) for x in images], [1, 4], size=32)
    assert [p.name for p in paths] == ["1.png", "4.png"]
    with Image.open(paths[0]) as im:
        assert im.size == (32, 32)
    explanation_path(run, 4, "gradcam").write_bytes(paths[0].read_bytes())
    page = flow_page(run)
    t = json.loads(json_block(page.path.read_text()))["table"]
    thumbs = dict(zip(t["id"], t["thumb"], strict=True))
    expl = dict(zip(t["id"], t["expl"], strict=True))
    assert thumbs[1] == "instances/1.png" and thumbs[0] is None
    assert expl[4] == [["gradcam", "instances/4/gradcam.png"]] and expl[1] is None
    other = flow_page(run, tmp_path / "pages" / "f.html")
    t2 = json.loads(json_block(other.path.read_text()))["table"]
    assert dict(zip(t2["id"], t2["thumb"], strict=True))[1] == "../r/files/instances/1.png"


def test_table_is_capped_but_counts_are_not(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")
    data = json.loads(json_block(flow_page(run, max_instances=2).path.read_text()))
    assert data["table"]["id"] == [4, 1] and data["n_instances"] == 6
    assert sum(n for e, *_, n in data["nodes"] if e == 0) == 6






@pytest.mark.slow
def test_page_draws_in_headless_chromium(tmp_path: Path) -> None:
    exe = chromium()
    run = make_run(tmp_path / "r", classes=EVIL_CLASSES)
    page = flow_page(run, color_by="correct",
                     explanations={4: [("<b>x</b>", "javascript:alert(3)"), ("ok", "4/gradcam.png")]})
    res = headless(exe, page.path.as_uri(), "--dump-dom")
    dom = res.stdout
    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    assert 'data-status="ok"' in dom, dom[:2000]
    bands = len(page.sankey.links)  # 17: every (step, a, b, correctness) band of the history
    assert bands == 17
    assert f'data-links="{bands}"' in dom and 'data-total="18"' in dom  # 6 instances x 3 steps
    assert dom.count('class="band') == bands and dom.count('class="node"') == 10
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text
    assert EVIL not in dom  # never an element
    assert "javascript:" not in dom.split("<script")[0] and '<a href="#">&lt;b&gt;x&lt;/b&gt;</a>' in dom
    assert '<a href="4/gradcam.png">ok</a>' in dom


@pytest.mark.slow
def test_an_injected_script_is_blocked_by_the_policy(tmp_path: Path) -> None:
    exe = chromium()
    page = flow_page(make_run(tmp_path / "r")).path
    text = page.read_text().replace('<div id="error"></div>', '<div id="error"></div><script>'
                                    'document.body.setAttribute("data-pwned", "yes")</script>')
    page.write_text(text)
    res = headless(exe, page.as_uri(), "--dump-dom")
    assert 'data-status="ok"' in res.stdout  # our script still runs
    assert 'data-pwned="yes"' not in res.stdout  # the injected one does not
    assert "Content Security Policy" in res.stderr


@pytest.mark.slow
def test_a_selected_link_lists_its_instances(tmp_path: Path) -> None:
    exe = chromium()
    page = flow_page(make_run(tmp_path / "r"), color_by="correct").path
    dom = headless(exe, page.as_uri() + "#link=3,0,1,2", "--dump-dom").stdout  # cat -> dog, forgotten
    assert 'data-status="ok"' in dom
    assert "Link epoch 3 → 4: cat → dog (forgotten), 1 instances, 1 in the table below" in dom
    rows = re.findall(r'<tr class="(?:right|wrong)"><td class="">(\d+)</td>', dom)
    assert rows == ["1"]
    dom = headless(exe, page.as_uri() + "#link=3,0,1", "--dump-dom").stdout  # every colour
    assert sorted(re.findall(r'<tr class="(?:right|wrong)"><td class="">(\d+)</td>', dom)) == ["1", "4"]
    dom = headless(exe, page.as_uri() + "#node=2,1", "--dump-dom").stdout  # dog at epoch 2
    assert sorted(re.findall(r'<tr class="(?:right|wrong)"><td class="">(\d+)</td>', dom)) == ["3", "4", "5"]


@pytest.mark.slow
def test_an_empty_selection_draws_without_errors(tmp_path: Path) -> None:
    exe = chromium()
    page = flow_page(make_run(tmp_path / "r"), true_classes=["dog"], misclassified=True)
    assert len(page.history) == 0
    res = headless(exe, page.path.as_uri(), "--dump-dom")
    assert 'data-status="ok"' in res.stdout and 'data-links="0"' in res.stdout
    assert not [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
