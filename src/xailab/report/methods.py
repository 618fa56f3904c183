"""The method cards page: one card per method any run used, with its parameters and cost."""

from __future__ import annotations

from xailab.report.cards import card
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


def card_html(method: str, used: list[ReportRun]) -> str:
    kind = str(used[0].explanation_manifest(method).get("method") or method) if used else method
    c = card(kind)
    shown = method if kind == method else f"{method} = {kind}"
    head = f'<h3 id="{esc(method)}">{esc(c.title if c else method)} <span class="family">' \
           f'{esc(shown)}{esc(" · " + c.family) if c else ""}</span></h3>'
    parts = [head]
    if c is None:
        parts.append("<p class=note>No card is written for this method yet.</p>")
    else:
        parts.append(f"<p>{esc(c.summary)}</p><p><b>Paper.</b> {esc(c.paper)}</p>")
        rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in c.hohman())
        parts.append("<table><tbody>" + rows + "</tbody></table>")
        parts.append("<p><b>Known limits.</b></p><ul>" + "".join(f"<li>{esc(x)}</li>" for x in c.limits) + "</ul>")
    for r in used:
        xm = r.explanation_manifest(method)
        label = f" in {r.name}" if len(used) > 1 else ""
        parts.append(f"<p><b>Cost{esc(label)}.</b></p>" + kv(_cost(r, method)))
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
