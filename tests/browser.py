"""Headless Chromium for the tests that open pages (skipped with a reason when it is absent)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest


def chromium() -> str:
    """Path of a Chromium executable, or skip the test."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        exe = shutil.which(name)
        if exe:
            return exe
    pytest.skip("Chromium is not installed (apt-get install chromium): the page is not drawn")


def headless(exe: str, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run Chromium headless on ``url`` with a throw-away profile and no background traffic."""
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--window-size=1400,1000", *extra, url],
            capture_output=True, text=True, timeout=120, check=False)
