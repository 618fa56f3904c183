"""The report drawn by headless Chromium: no console errors, no blocked loads, every image loads."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.browser import chromium, headless
from xailab.report.html import CSP, esc
from xailab.report.site import build_site

from .test_report import EVIL, add_comparison, make_explain, make_train

# Added to a copy of a page (same folder, so the same relative paths): after the load event it
# writes on <body> how many images there are and which of them did not load.
PROBE = ("<script>addEventListener('load',()=>{const b=[...document.images].filter(i=>!(i.complete&&"
         "i.naturalWidth>0)).map(i=>i.getAttribute('src'));document.body.setAttribute('data-images',"
         "document.images.length);document.body.setAttribute('data-broken',b.join('|'))});</script>")






def console(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln
            or "Content Security Policy" in ln]


@pytest.mark.slow
def test_report_draws_with_every_image_loaded(tmp_path: Path) -> None:
    exe = chromium()
    explain = make_explain(tmp_path / "explain")
    add_comparison(explain)
    site = build_site([make_train(tmp_path / "train").path, explain.path], tmp_path / "site")
    for name in ("index.html", "images.html", "explain-image-00000.html", "compare.html", "flow.html",
                 "methods.html"):
        page = site / name
        res = headless(exe, page.as_uri(), "--dump-dom")
        assert console(res) == [], (name, console(res))
        assert "<main>" in res.stdout and EVIL not in res.stdout, name
        probe = site / f"probe-{name}"
        probe.write_text(page.read_text().replace(f'<meta http-equiv="Content-Security-Policy" '
                                                  f'content="{esc(CSP)}">', "")
                         .replace("</body>", PROBE + "</body>"))
        dom = headless(exe, probe.as_uri(), "--dump-dom", "--virtual-time-budget=5000").stdout
        m = re.search(r'data-images="(\d+)" data-broken="([^"]*)"', dom)
        assert m is not None, (name, dom[:500])
        assert m.group(2) == "", (name, m.group(2))
        n = int(m.group(1))
        assert n == page.read_text().count("<img "), name
        probe.unlink()


@pytest.mark.slow
def test_the_policy_blocks_outside_images_and_scripts(tmp_path: Path) -> None:
    exe = chromium()
    site = build_site([make_train(tmp_path / "train", flow=False).path], tmp_path / "site")
    page = site / "index.html"
    page.write_text(page.read_text().replace("<main>", '<main><img src="https://example.invalid/x.png">'
                                             '<script>document.body.setAttribute("data-pwned","1")</script>'))
    res = headless(exe, page.as_uri(), "--dump-dom")
    assert 'data-pwned="1"' not in res.stdout
    blocked = " ".join(console(res))
    assert "example.invalid" in blocked and "inline script" in blocked, blocked
