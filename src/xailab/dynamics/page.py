"""The instance-flow page: one self-contained HTML file (inline SVG + our own small script).

The page works offline from disk: no CDN, no external script, no fetch. Its data is one JSON
block (``<script type="application/json" id="flow-data">``) with ``<``, ``>`` and ``&``
written as ``\\u003c`` etc., so no class or run name can close the block; every string is put
into the page with ``textContent``, and a Content-Security-Policy allows only the page's own
script (by its SHA-256), so even an injected ``<script>`` would not run.

What the JSON holds, so the browser can re-aggregate under its controls (true classes, colour
by true class or correctness, changed only, misclassified only, hide stays) exactly:

* ``nodes``: rows ``[epoch_index, predicted, true, flags, count]``,
* ``links``: rows ``[step, source, target, true, correct_group, flags, count]``,

with ``flags = changed (1) + misclassified at the last epoch (2)`` and the correctness groups
of :data:`~xailab.dynamics.flow.CORRECT_GROUPS`. Their size grows with the number of distinct
cells, not with the number of instances. The instance table holds at most ``max_instances``
rows (those with the most changes first); the diagram's counts always cover every instance.

    result = flow_page(Run.open("runs/cifar"), true_classes=["cat"], epochs="1-6")
    result.path                      # runs/cifar/files/flow.html
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd

from xailab.dynamics._page_assets import CSS, JS
from xailab.dynamics.flow import (
    ColorBy,
    Sankey,
    instance_table,
    link_groups,
    sankey,
    select_history,
)
from xailab.dynamics.history import TABLE, History
from xailab.runs.store import Run, atomic_write_text

INSTANCE_DIR = "instances"  # RUN/files/instances/<id>.png and RUN/files/instances/<id>/*.png|html


def flow_cells(h: History) -> tuple[list[list[int]], list[list[int]]]:
    """The finest counts the page aggregates: node rows and link rows (see the module doc)."""
    k = h.n_classes
    y = h.labels.astype(np.int64)
    final, _ = h.final()
    flags = (h.n_changes() > 0).astype(np.int64) + 2 * ((final >= 0) & (final != y))
    nodes: list[np.ndarray] = []
    for e in range(len(h.epochs)):
        p = h.predicted[:, e].astype(np.int64)
        ok = p >= 0
        code, n = np.unique((p[ok] * k + y[ok]) * 4 + flags[ok], return_counts=True)
        rest, f = np.divmod(code, 4)
        c, yy = np.divmod(rest, k)
        nodes.append(np.stack([np.full(len(code), e), c, yy, f, n], 1))
    links: list[np.ndarray] = []
    for s in range(len(h.epochs) - 1):
        a = h.predicted[:, s].astype(np.int64)
        b = h.predicted[:, s + 1].astype(np.int64)
        cg = link_groups(h, s, "correct")
        ok = (a >= 0) & (b >= 0)
        code, n = np.unique(((((a[ok] * k + b[ok]) * k + y[ok]) * 4 + cg[ok]) * 4) + flags[ok],
                            return_counts=True)
        rest, f = np.divmod(code, 4)
        rest, g = np.divmod(rest, 4)
        rest, yy = np.divmod(rest, k)
        src, dst = np.divmod(rest, k)
        links.append(np.stack([np.full(len(code), s), src, dst, yy, g, f, n], 1))
    node_rows = np.concatenate(nodes).tolist() if nodes else []
    link_rows = np.concatenate(links).tolist() if links else []
    return node_rows, link_rows


def instance_links(run: Run | None, instances: Iterable[int], page_dir: Path,
                   extra: Mapping[int, Sequence[tuple[str, str]]] | None = None,
                   ) -> tuple[dict[int, str], dict[int, list[tuple[str, str]]]]:
    """Hrefs (relative to ``page_dir``) of each instance's thumbnail and explanation figures.

    A thumbnail is ``RUN/files/instances/<id>.png`` (see :func:`render_thumbnails`); the files of
    ``RUN/files/instances/<id>/`` (``.png``, ``.html``, ``.svg``, e.g. ``gradcam.png``) are its
    explanations, named by their stem. ``extra`` adds ``(name, href)`` pairs per instance.
    """
    thumbs: dict[int, str] = {}
    expl: dict[int, list[tuple[str, str]]] = {k: list(v) for k, v in (extra or {}).items()}
    if run is None:
        return thumbs, expl
    root = run.path / "files" / INSTANCE_DIR
    if not root.is_dir():
        return thumbs, expl
    wanted = {int(i) for i in instances}
    with os.scandir(root) as it:
        entries = [(e.name, e.is_dir()) for e in it if not e.name.startswith(".")]
    for name, is_dir in entries:
        if not is_dir and not name.endswith(".png"):
            continue
        stem = name if is_dir else name[:-4]
        if not stem.isdigit() or int(stem) not in wanted:
            continue
        if not is_dir:
            thumbs[int(stem)] = _href(root / name, page_dir)
            continue
        for f in sorted((root / name).iterdir()):
            if f.suffix in (".png", ".html", ".svg", ".jpg") and not f.name.startswith("."):
                expl.setdefault(int(stem), []).append((f.stem, _href(f, page_dir)))
    return thumbs, expl


def _href(target: Path, page_dir: Path) -> str:
    rel = os.path.relpath(target.resolve(), page_dir.resolve())
    return quote(Path(rel).as_posix())


def page_data(h: History, *, title: str = "Instance flow", run_name: str = "",
              color_by: ColorBy = "true", generated: Mapping[str, Any] | None = None,
              max_instances: int = 5000, thumbs: Mapping[int, str] | None = None,
              explanations: Mapping[int, Sequence[tuple[str, str]]] | None = None) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (see the module doc for the layout)."""
    nodes, links = flow_cells(h)
    table = instance_table(h, sort_by="changes").head(max(0, max_instances))
    thumbs, explanations = thumbs or {}, explanations or {}
    ids = table["instance"].tolist()

    return {
        "version": 1,
        "title": title,
        "run": run_name,
        "classes": list(h.classes),
        "epochs": h.epochs.astype(int).tolist(),
        "color_by": color_by,
        "groups": list(h.classes) if color_by == "true" else ["kept right", "learned", "forgotten",
                                                             "kept wrong"],
        "generated": dict(generated or {}),
        "n_instances": len(h),
        "nodes": nodes,
        "links": links,
        "table": {
            "n": len(table),
            "id": ids,
            "y": table["label"].tolist(),
            "traj": [t.tolist() for t in table["trajectory"]],
            "changes": table["changes"].tolist(),
            "forgotten": table["forgotten"].tolist(),
            "first": _nullable(table["first_right"]),
            "last": _nullable(table["last_right"]),
            "conf": [None if math.isnan(c) else round(float(c), 4) for c in table["confidence"]],
            "thumb": [thumbs.get(i) for i in ids],
            "expl": [[list(x) for x in explanations.get(i, ())] or None for i in ids],
        },
    }


def _nullable(col: pd.Series) -> list[int | None]:
    return [None if pd.isna(v) else int(v) for v in col]


def script_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` appear."""
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def render_page(data: Mapping[str, Any]) -> str:
    """The HTML of the page for :func:`page_data`'s ``data``."""
    esc = html.escape
    digest = base64.b64encode(hashlib.sha256(JS.encode("utf-8")).digest()).decode("ascii")
    csp = (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; "
           "img-src 'self' data: file: http: https:")
    gen = dict(data.get("generated") or {})
    summary = " · ".join(f"{k}: {v}" for k, v in gen.items() if v not in (None, False, "", []))
    n_tab, n_all = data["table"]["n"], data["n_instances"]
    cap = ("" if n_tab >= n_all else
           f"The instance table holds the {n_tab:,} instances with the most changes of {n_all:,}; "
           "the diagram counts all of them.")
    run = f" — {esc(str(data.get('run') or ''))}" if data.get("run") else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp, quote=False)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(str(data.get("title") or "Instance flow"))}{run}</title>
<style>{CSS}</style></head>
<body data-status="loading">
<h1>{esc(str(data.get("title") or "Instance flow"))}{run}</h1>
<p class="meta">{n_all:,} instances · epochs {esc(_span(data["epochs"]))}{" · " + esc(summary) if summary else ""}</p>
<div id="error"></div>
<div id="controls">
 <label>colour by <select id="color-by"><option value="true">true class</option>
  <option value="correct">correctness</option></select></label>
 <label><input type="checkbox" id="hide-stays"> hide stays (a → a)</label>
 <label><input type="checkbox" id="changed-only"> changed only</label>
 <label><input type="checkbox" id="miscl-only"> misclassified at the last epoch</label>
 <span>true class: <span id="classes"></span></span>
</div>
<div id="legend"></div>
<div id="sankey"></div>
<p class="note">Columns are epochs, nodes the predicted classes, bands the instances that move
between them (width = count). Hover for counts; click a band or a node to list its instances.</p>
<div class="row">
 <div><h2>Where the instances of one true class go</h2>
  <label>true class <select id="dist-class"></select></label><div id="dist"></div></div>
 <div><h2>Most confused pairs at the last epoch</h2><div id="confused"></div></div>
</div>
<h2>Instances</h2>
<p class="note">{esc(cap)} Click a column to sort. The sparkline is the predicted class per epoch
(dashed: the true class; green dot right, red dot wrong).</p>
<div id="selection"></div>
<table id="instances"></table>
<div id="pager"></div>
<div id="tip"></div>
<script type="application/json" id="flow-data">{script_json(data)}</script>
<script>{JS}</script>
</body></html>
"""


def _span(epochs: Sequence[int]) -> str:
    if not epochs:
        return "none"
    return f"{epochs[0]}–{epochs[-1]}" if len(epochs) > 1 else str(epochs[0])


@dataclass(frozen=True)
class FlowPage:
    """What :func:`flow_page` made: the page's path, the filtered history and its Sankey."""

    path: Path
    history: History
    sankey: Sankey


def flow_page(run: Run, out: str | os.PathLike[str] | None = None, *,
              true_classes: Iterable[str | int] | str | int | None = None,
              epochs: str | tuple[int, int] | None = None, changed_only: bool = False,
              misclassified: bool = False, color_by: ColorBy | None = None,
              classes: Sequence[str] | None = None, max_instances: int = 5000,
              table: str = TABLE,
              explanations: Mapping[int, Sequence[tuple[str, str]]] | None = None) -> FlowPage:
    """Read the run's prediction history, filter it, and write the page (atomically).

    ``out`` defaults to ``RUN/files/flow.html``. The filters are those of
    :func:`~xailab.dynamics.flow.select_history`; ``color_by`` is the page's initial colouring
    (default: by correctness when the page shows one true class, else by true class).
    """
    h = select_history(run, true_classes=true_classes, epochs=epochs, changed_only=changed_only,
                       misclassified=misclassified, classes=classes, table=table)
    if color_by is None:
        color_by = "correct" if len(np.unique(h.labels)) == 1 else "true"
    s = sankey(h, color_by=color_by)
    path = Path(out) if out is not None else run.file("flow.html")
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = instance_table(h).head(max_instances)["instance"].tolist()
    thumbs, expl = instance_links(run, shown, path.parent, explanations)
    names = true_classes if true_classes is None or not isinstance(true_classes, (str, int)) else [true_classes]
    generated = {
        "true class": ", ".join(str(c) for c in names) if names else None,
        "changed only": "yes" if changed_only else None,
        "misclassified at the last epoch": "yes" if misclassified else None,
    }
    data = page_data(h, run_name=run.path.name, color_by=color_by, generated=generated,
                     max_instances=max_instances, thumbs=thumbs, explanations=expl)
    atomic_write_text(path, render_page(data))
    return FlowPage(path, h, s)
