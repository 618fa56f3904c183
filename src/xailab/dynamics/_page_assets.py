"""The inline stylesheet and script of the instance-flow page (our own SVG Sankey, no library).

Both are package data, ``flow_page.css`` and ``flow_page.js`` beside this module (in the wheel too),
read once here; :func:`xailab.dynamics.page.render_page` inlines them and allows the script by its
SHA-256 in the page's Content-Security-Policy, computed when the page is written.

The script reads the JSON block ``#flow-data`` (see :func:`xailab.dynamics.page.page_data`),
aggregates its finest counts in the browser under the page's controls, and draws:

* the Sankey: one column per epoch, one node per predicted class (every class keeps its slot,
  so a class stays at one height), links as filled cubic ribbons whose width is the count;
  bands coloured by true class or by correctness; hover for counts, click for the instances;
* where the instances of one true class go, epoch by epoch; the most confused pairs;
* the instance table: sortable, paginated, a sparkline of each trajectory.

A selection can be opened from the address: ``flow.html#link=3,0,1`` (epoch 3 -> next, class 0
-> class 1; a fourth number picks one colour group) or ``flow.html#node=3,0``. Clicking a band
or a node highlights it (the rest dimmed), writes its address into the URL's hash (so a reload,
a bookmark or a shared link keeps the selection; back/forward and an edited hash are followed)
and scrolls its instance list into view.

Every string from the data is inserted with ``textContent`` or ``setAttribute``, never parsed
as HTML. When drawing ends, ``<body data-status="ok">`` and the SVG carries ``data-links`` (bands
drawn) and ``data-total`` (instances on them); an uncaught error sets ``data-status="error"``.
"""

from importlib.resources import files


def _read(name: str) -> str:
    return files("xailab.dynamics").joinpath(name).read_text(encoding="utf-8")


CSS = _read("flow_page.css")
JS = _read("flow_page.js")
