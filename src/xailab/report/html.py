"""HTML building blocks of the report: escaping, the page frame, tables, the style sheet.

Every user-given string (class, image and run names, parameters) goes through :func:`esc`;
pages carry no script at all and a Content-Security-Policy that lets them load nothing but
images and frames from their own folder, so a hostile class name shows as text and the site
works offline from ``file://``.

    body = section("Overview", table(df, {"accuracy": "{:.3f}"}))
    text = page("xailab report", body, nav=[("index.html", "Overview")], active="index.html")
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

CSS = """
:root { --fg:#1d232a; --muted:#5b6670; --line:#d8dde2; --bg:#fff; --band:#f4f6f8; --accent:#1f5fa8; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0; }
header { background: #16324f; color: #fff; padding: .7rem 1.5rem; }
header h1 { font-size: 1.25rem; margin: 0; }
header .sub { color: #c9d6e3; font-size: .85rem; }
nav { display: flex; flex-wrap: wrap; gap: .2rem; padding: .4rem 1.5rem; background: var(--band);
      border-bottom: 1px solid var(--line); }
nav a { padding: .25rem .7rem; border-radius: 4px; text-decoration: none; color: var(--accent); }
nav a.active { background: var(--accent); color: #fff; }
main { padding: 1rem 1.5rem 3rem; max-width: 1400px; }
h2 { font-size: 1.2rem; border-bottom: 2px solid var(--line); padding-bottom: .2rem; margin-top: 2rem; }
h3 { font-size: 1.05rem; margin: 1.4rem 0 .5rem; }
a { color: var(--accent); }
p.note, .muted { color: var(--muted); font-size: .88rem; }
table { border-collapse: collapse; margin: .4rem 0 1rem; font-size: .88rem; }
th, td { border: 1px solid var(--line); padding: .2rem .5rem; text-align: left; vertical-align: top; }
th { background: var(--band); font-weight: 600; }
.tw { max-width: 100%; overflow-x: auto; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: #dff0d8; font-weight: 600; } td span.ci { display: block; font-size: .78em; color: var(--muted); }
th[title] { text-decoration: underline dotted; cursor: help; }
ul.notes { font-size: .88rem; margin: .2rem 0 1rem; padding-left: 1.2rem; } span.flagged { color: #a11; font-weight: 600; }
p.recommend { background: #eef5fb; border-left: 4px solid var(--accent); padding: .4rem .8rem; }
dl.kv { display: grid; grid-template-columns: max-content auto; gap: .15rem 1rem; margin: .4rem 0 1rem; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; }
figure { margin: .5rem 0 1.2rem; display: inline-block; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: .82rem; }
img.pix { image-rendering: pixelated; }
.thumbs { display: flex; flex-wrap: wrap; gap: .8rem; }
.thumbs a { display: block; width: 136px; text-decoration: none; color: var(--fg); font-size: .8rem;
            border: 1px solid var(--line); border-radius: 4px; padding: 4px; }
.thumbs img { width: 126px; height: 126px; object-fit: contain; background: #000; }
.thumbs span { display: block; overflow-wrap: anywhere; }
.row { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
img.big { width: 224px; height: 224px; object-fit: contain; background: #000; }
meter { width: 120px; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .2rem 1rem .8rem; margin: 1rem 0; }
.card h3 { margin-top: .8rem; }
.card .family { color: var(--muted); font-weight: normal; font-size: .85rem; }
pre { background: var(--band); padding: .5rem; overflow-x: auto; font-size: .8rem; white-space: pre-wrap; }
iframe { width: 100%; height: 820px; border: 1px solid var(--line); }
.pager { margin: .8rem 0; } .pager a { margin-right: 1rem; }
td.q0 { background: #f7fbff; } td.q1 { background: #deebf7; } td.q2 { background: #c6dbef; }
td.q3 { background: #9ecae1; } td.q4 { background: #6baed6; } td.q5 { background: #4292c6; color: #fff; }
td.q6 { background: #2171b5; color: #fff; } td.q7 { background: #08519c; color: #fff; }
td.q8 { background: #08306b; color: #fff; }
section.q { border-left: 4px solid var(--accent); background: #fafbfc; padding: .2rem 1rem .5rem; margin: 1rem 0; }
section.q h3 { margin: .6rem 0 .3rem; }
.answer { display: flex; flex-wrap: wrap; gap: 0 1.5rem; align-items: flex-start; border-top: 1px solid var(--line);
          padding-top: .3rem; }
.answer > p { flex: 1 1 22rem; max-width: 44rem; margin: .3rem 0 .6rem; }
.evidence { flex: 1 1 24rem; min-width: 0; }
.evidence figure { margin-bottom: .4rem; }
caption { caption-side: top; text-align: left; color: var(--muted); font-size: .82rem; }
code { font-size: .85em; background: var(--band); padding: 0 .2em; overflow-wrap: anywhere; }
details > summary { cursor: pointer; color: var(--accent); margin: .6rem 0; }
h4 { font-size: .95rem; margin: 1.1rem 0 .4rem; }
@media print {
  @page { margin: 14mm 12mm; }
  body { font-size: 11pt; }
  nav, .pager, iframe, details > summary { display: none; }
  .tw { overflow: visible; }
  header { background: none; color: #000; border-bottom: 2px solid #000; padding: 0 0 .3rem; }
  header .sub { color: #333; }
  main { max-width: none; padding: 0; }
  a { color: #000; text-decoration: none; }
  h2, h3, h4, caption { break-after: avoid; }
  figure, table, .card, .answer, dl.kv { break-inside: avoid; }
  table { font-size: 8.5pt; }
  td { overflow-wrap: break-word; }
  section.q { background: none; }
  .thumbs a { border-color: #999; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode()

#: Nothing from outside: no script at all, the style sheet by its hash, images and frames only
#: from the site's own folder.
CSP = (
    f"default-src 'none'; style-src 'sha256-{CSS_HASH}'; img-src 'self'; frame-src 'self'; "
    "base-uri 'none'; form-action 'none'"
)


def esc(value: Any) -> str:
    """``html.escape(str(value))``: the one way user text enters a page."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, spec: str | None = None) -> str:
    """A table cell's text: floats to 4 significant digits (or ``spec``), NaN as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "–"
    if spec is not None:
        try:
            return spec.format(value)
        except (ValueError, TypeError):
            return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def header(text: Any, title: str = "") -> str:
    """A ``<th>`` whose text may wrap after an underscore (``integrated_gradients`` takes two short
    lines, not one wide column); ``title`` is its tooltip (the full wording of a short header)."""
    tip = f' title="{esc(title)}"' if title and title != str(text) else ""
    return f"<th{tip}>{esc(text).replace('_', '_<wbr>')}</th>"


def table(df: pd.DataFrame, formats: Mapping[str, str] | None = None, *, caption: str = "") -> str:
    """``df`` as an HTML table, every cell escaped; numbers right-aligned."""
    formats = formats or {}
    head = "".join(header(c) for c in df.columns)
    rows = []
    for rec in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, rec, strict=True):
            v = v.item() if hasattr(v, "item") else v
            cls = ' class="num"' if is_number(v) else ""
            cells.append(f"<td{cls}>{esc(fmt(v, formats.get(str(col))))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return f'<div class="tw"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def heat_table(matrix: pd.DataFrame, *, lo: float = 0.0, hi: float = 1.0, spec: str = "{:.2f}") -> str:
    """A square matrix (e.g. mean IoU between methods) with cells shaded by value (CSS classes);
    column names wrap after underscores, so twelve methods fit a laptop's window."""
    head = "<th></th>" + "".join(header(c, str(c)) for c in matrix.columns)
    rows = []
    for name, rec in matrix.iterrows():
        cells = []
        for v in rec.tolist():
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append('<td class="num">–</td>')
                continue
            q = int(min(8, max(0, (float(v) - lo) / max(hi - lo, 1e-12) * 8.999)))
            cells.append(f'<td class="num q{q}">{esc(fmt(float(v), spec))}</td>')
        rows.append(f"<tr><th>{esc(name)}</th>{''.join(cells)}</tr>")
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def kv(items: Sequence[tuple[str, Any]]) -> str:
    """A definition list of ``(label, value)``; ``None`` values are left out."""
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(fmt(v))}</dd>" for k, v in items if v is not None)
    return f'<dl class="kv">{body}</dl>'


def figure(src: str, caption: str = "", *, alt: str = "", cls: str = "") -> str:
    c = f' class="{esc(cls)}"' if cls else ""
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{esc(src)}" alt="{esc(alt or caption)}"{c}>{cap}</figure>'


def params_block(params: Mapping[str, Any]) -> str:
    return f"<pre>{esc(json.dumps(params, indent=2, sort_keys=True, default=str))}</pre>"


def page(title: str, body: str, *, nav: Sequence[tuple[str, str]], active: str, subtitle: str = "") -> str:
    """A whole page: CSP, the style sheet, the header, the navigation and ``body`` (already HTML)."""
    links = "".join(
        f'<a href="{esc(href)}"{" class=active" if href == active else ""}>{esc(label)}</a>'
        for href, label in nav
    )
    sub = f'<div class="sub">{esc(subtitle)}</div>' if subtitle else ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style></head>\n"
        f"<body><header><h1>{esc(title)}</h1>{sub}</header>\n<nav>{links}</nav>\n"
        f"<main>\n{body}\n</main></body></html>\n"
    )
