"""The flow page's selection in headless Chromium: a click on a band highlights it, writes its
address into the URL's hash and scrolls its instance list into view; a hash opens it again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.browser import chromium, headless
from xailab.dynamics import flow_page

from .test_flow import make_run

# Added to a copy of the page without its policy: after load, click the band cat -> dog between
# epochs 3 and 4 (forgotten), then record the hash, the scroll position and the list's caption.
PROBE = ("<script>addEventListener('load',()=>{const p=[...document.querySelectorAll('path.band')];"
         "const b=document.body;b.setAttribute('data-before',String(scrollY));"
         "p[p.length-1].dispatchEvent(new MouseEvent('click',{bubbles:true}));"
         "b.setAttribute('data-hash',location.hash);b.setAttribute('data-scroll',String(scrollY));"
         "b.setAttribute('data-picked',String(document.querySelectorAll('path.band.picked').length));"
         "b.setAttribute('data-caption',document.getElementById('selection').firstChild.textContent)});"
         "</script>")


@pytest.mark.slow
def test_a_click_highlights_the_band_writes_the_hash_and_scrolls_to_its_list(tmp_path: Path) -> None:
    exe = chromium()
    page = flow_page(make_run(tmp_path / "r"), color_by="correct").path
    text = page.read_text()
    probe = page.with_name("probe.html")
    probe.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", text)
                     .replace("</body>", PROBE + "</body>"))
    dom = headless(exe, probe.as_uri(), "--dump-dom", "--window-size=800,500").stdout
    attrs = dict(re.findall(r'data-(before|hash|scroll|picked|caption)="([^"]*)"', dom))
    assert attrs["before"] == "0" and float(attrs["scroll"]) > 100, attrs  # the list came into view
    assert attrs["picked"] == "1" and re.search(r'<svg[^>]*class="picking"', dom)
    m = re.fullmatch(r"#link=(\d+),(\d+),(\d+),(\d+)", attrs["hash"])
    assert m is not None, attrs
    assert attrs["caption"].startswith("Link epoch ")
    # the hash opens the same selection: one band picked, the same caption
    again = headless(exe, page.as_uri() + attrs["hash"], "--dump-dom").stdout
    assert 'data-status="ok"' in again and again.count('class="band picked"') == 1
    every = headless(exe, page.as_uri() + "#link=3,0,1", "--dump-dom").stdout  # both colours of cat -> dog
    assert every.count('class="band picked"') == 2
    assert attrs["caption"].replace("&amp;", "&") in again.replace("&amp;", "&")
    node = headless(exe, page.as_uri() + "#node=2,1", "--dump-dom").stdout
    assert node.count('class="node picked"') == 1 and re.search(r'<svg[^>]*class="picking"', node)
