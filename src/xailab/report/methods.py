"""The method cards page: one card per method any run used, with its parameters and cost.

The cards come from the runs: the explain job writes each method's card (declared beside the
method, :mod:`xailab.core.card`) into the manifest's ``cards`` section. A run written before
cards were recorded shows the method's name and parameters with a note.
"""

from __future__ import annotations

from typing import Any

from xailab.report.data import ReportRun
from xailab.report.html import esc, kv, params_block


def _cost(r: ReportRun, method: str) -> list[tuple[str, object]]:
    items: list[tuple[str, object]] = []
    expl = r.table("explanations")
    if expl is not None and "method" in expl:
        rows = expl[expl["method"] == method]
        if len(rows):
            if "seconds_per_image" in rows:
                items.append(("seconds per image", f"{float(rows['seconds_per_image'].iloc[0]):.4g}"))
            if "evaluations_per_image" in rows:
                items.append(("model evaluations per image", f"{float(rows['evaluations_per_image'].iloc[0]):.0f}"))
    xm = r.explanation_manifest(method)
    shape = xm.get("shape")
    if isinstance(xm.get("seconds"), int | float):
        items.append(("seconds in all", f"{xm['seconds']:.4g}"))
    if isinstance(xm.get("evaluations"), int | float):
        items.append(("model evaluations in all", f"{xm['evaluations']:,}"))
    if shape:
        items.append(("map shape", " × ".join(map(str, shape))))
    return items


HOHMAN = ("why", "who", "what", "how", "when", "where")


def _card_of(kind: str, used: list[ReportRun]) -> dict[str, Any] | None:
    """The card of method ``kind`` as the first run that recorded one wrote it."""
    for r in used:
        c = (r.manifest.get("cards") or {}).get(kind)
        if isinstance(c, dict):
            return c
    return None


def _card_body(c: dict[str, Any]) -> list[str]:
    rows = "".join(f"<tr><th>{esc(q.capitalize())}</th><td>{esc(c.get(q, ''))}</td></tr>" for q in HOHMAN)
    limits = "".join(f"<li>{esc(x)}</li>" for x in c.get("limits") or [])
    return [f"<p>{esc(c.get('summary', ''))}</p><p><b>Paper.</b> {esc(c.get('paper', ''))}</p>",
            "<table><tbody>" + rows + "</tbody></table>",
            f"<p><b>Known limits.</b></p><ul>{limits}</ul>",
            f"<p><b>Cost.</b> {esc(c.get('cost', ''))}</p>"]


def card_html(method: str, used: list[ReportRun]) -> str:
    kind = str(used[0].explanation_manifest(method).get("method") or method) if used else method
    c = _card_of(kind, used)
    shown = method if kind == method else f"{method} = {kind}"
    family = f" · {c.get('family', '')}" if c else ""
    head = f'<h3 id="{esc(method)}">{esc(c.get("title", method) if c else method)} <span class="family">' \
           f'{esc(shown)}{esc(family)}</span></h3>'
    parts = [head]
    if c is None:
        parts.append("<p class=note>No card in this run: it was written before runs recorded the cards "
                     "of their methods, or the method declares none.</p>")
    else:
        parts.extend(_card_body(c))
    for r in used:
        xm = r.explanation_manifest(method)
        label = f" in {r.name}" if len(used) > 1 else ""
        parts.append(f"<p><b>Measured cost{esc(label)}.</b></p>" + kv(_cost(r, method)))
        parts.append(f"<p><b>Parameters used{esc(label)}.</b></p>" + params_block(xm.get("params") or {}))
    return '<div class="card">' + "".join(parts) + "</div>"


def cards_section(runs: list[ReportRun]) -> str:
    by_method: dict[str, list[ReportRun]] = {}
    for r in runs:
        for m in r.methods():
            by_method.setdefault(m, []).append(r)
    if not by_method:
        return ""
    toc = " · ".join(f'<a href="#{esc(m)}">{esc(m)}</a>' for m in by_method)
    intro = ("<p class=note>Why, who, what, how, when and where follow Hohman et al. (2018), \"Visual "
             "Analytics in Deep Learning: An Interrogative Survey for the Next Frontiers\", IEEE TVCG.</p>")
    return intro + f"<p>{toc}</p>" + "".join(card_html(m, used) for m, used in by_method.items())
