"""The folder a report is being written into: pages at the top, images under ``img/``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from xailab.report.html import page
from xailab.runs.store import atomic_write_text


@dataclass
class Site:
    """Paths inside the site folder ``root`` and the navigation shared by every page."""

    root: Path
    title: str
    subtitle: str = ""
    nav: list[tuple[str, str]] = field(default_factory=list)
    pages: list[str] = field(default_factory=list)

    def img(self, relpath: str) -> tuple[Path, str]:
        """``(absolute path, src relative to the site)`` of an image ``img/<relpath>``."""
        dest = self.root / "img" / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest, f"img/{relpath}"

    def copy(self, source: Path, relpath: str) -> str:
        """Copy ``source`` to ``img/<relpath>``; its src."""
        dest, src = self.img(relpath)
        shutil.copyfile(source, dest)
        return src

    def write(self, name: str, title: str, body: str, *, active: str | None = None) -> Path:
        """Write page ``name`` (a file name at the site's top)."""
        text = page(f"{title} · {self.title}" if title != self.title else title, body,
                    nav=self.nav, active=active or name, subtitle=self.subtitle)
        self.pages.append(name)
        return atomic_write_text(self.root / name, text)
