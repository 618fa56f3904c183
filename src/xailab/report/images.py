"""Per-image pages of an explain run and the index of all images with thumbnails.

Each image page shows the image, the model's top classes, the explained targets and one grid:
methods as rows, targets as columns, each map on its own colour scale with its colour bar, targets
of the same class (true and top-1 of a correct prediction) merged into one column
(``drawing.grid_png``).
The grid ``xailab explain`` already wrote (``files/overlays/<i>_grid.png``) is copied when
present, otherwise drawn from the saved maps; per-method overlays with colour bars are copied
when present.
"""

from __future__ import annotations

from pathlib import PurePath

import numpy as np
import pandas as pd

from xailab.drawing import grid_png
from xailab.plotting import target_title
from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, table
from xailab.report.report_figures import image_png
from xailab.report.writer import Site
from xailab.runs.store import atomic_write_bytes

TOP_K = 5


def short(name: str) -> str:
    """An image's name to show: the file name of an absolute path, else the name as it is."""
    return PurePath(name).name if PurePath(name).is_absolute() else name


def page_name(r: ReportRun, i: int) -> str:
    return f"{r.slug}-image-{i:05d}.html"


def _display(r: ReportRun) -> np.ndarray | None:
    shown = r.display()
    if shown is not None or "images" not in r.run.arrays():
        return shown
    x = r.run.read_array("images").astype(np.float64)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    return np.round((x - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)


def _image_table(r: ReportRun, n: int) -> pd.DataFrame:
    df = r.table("images")
    if df is None or "name" not in df:
        df = pd.DataFrame({"index": np.arange(n), "name": [f"{i:05d}" for i in range(n)]})
    if "label" not in df:
        df["label"] = -1
    return df.sort_values("index" if "index" in df else "name").reset_index(drop=True)


def image_pages(site: Site, r: ReportRun, max_images: int) -> str:
    """Write every image page of ``r``; return the HTML of its thumbnail index."""
    shown = _display(r)
    if shown is None:
        return ""
    n_all = len(shown)
    images = _image_table(r, n_all)
    n = min(n_all, max_images, len(images))
    probs = r.probabilities()
    methods = r.methods()
    explained = _explained_targets(r.table("explanations"), methods)
    thumbs: list[str] = []
    for i in range(n):
        name = str(images.loc[i, "name"])
        label = int(images.loc[i, "label"])
        dest, src = site.img(f"{r.slug}/images/{i:05d}.png")
        image_png(shown[i], dest)
        pred = ""
        if probs is not None and i < len(probs):
            k = int(np.argmax(probs[i]))
            mark = "" if label < 0 else (" ✓" if k == label else " ✗")
            pred = f"<span>→ {esc(r.class_name(k))} ({probs[i, k]:.2f}){mark}</span>"
        true = f"<span class=muted>true: {esc(r.class_name(label))}</span>" if label >= 0 else ""
        thumbs.append(f'<a href="{esc(page_name(r, i))}"><img class="pix" src="{esc(src)}" alt="{esc(name)}">'
                      f'<span title="{esc(name)}">{esc(short(name))}</span>{true}{pred}</a>')
        body = _image_body(site, r, i, n, name, label, src, shown[i], probs, explained.get(i), methods)
        site.write(page_name(r, i), f"{r.name}: {short(name)}", body, active="images.html")
    more = f'<p class="note">First {n} of {n_all} images (raise --max-images for more).</p>' if n < n_all else ""
    return f'<div class="thumbs">{"".join(thumbs)}</div>{more}'


def _explained_targets(expl: pd.DataFrame | None, methods: list[str]) -> dict[int, pd.DataFrame]:
    """Each image's rows of the first method in table ``explanations`` (grouped once, not per page)."""
    if expl is None or not methods or not {"image", "method"} <= set(expl.columns):
        return {}
    first = expl[expl["method"] == methods[0]]
    return {int(i): rows for i, rows in first.groupby("image", sort=False)}


def _image_body(
    site: Site, r: ReportRun, i: int, n: int, name: str, label: int, src: str, image: np.ndarray,
    probs: np.ndarray | None, rows_i: pd.DataFrame | None, methods: list[str],
) -> str:
    pager = ['<a href="images.html">all images</a>']
    if i > 0:
        pager.append(f'<a href="{esc(page_name(r, i - 1))}">← previous</a>')
    if i + 1 < n:
        pager.append(f'<a href="{esc(page_name(r, i + 1))}">next →</a>')
    parts = [f'<div class="pager">{"".join(pager)}</div>', f"<h2>{esc(short(name))}</h2>"]
    if short(name) != name:
        parts.append(f"<p class=note>{esc(name)}</p>")
    side = [figure(src, f"true class: {r.class_name(label)}" if label >= 0 else "no label known",
                   alt=name, cls="big pix")]
    if probs is not None and i < len(probs):
        order = np.argsort(-probs[i])[:TOP_K]
        rows = "".join(
            f"<tr><td class=num>{rank}</td><td>{esc(r.class_name(int(k)))}{' (true)' if int(k) == label else ''}"
            f'</td><td class=num>{probs[i, k]:.4f}</td><td><meter min="0" max="1" value="{probs[i, k]:.4f}">'
            f"</meter></td></tr>"
            for rank, k in enumerate(order, start=1))
        side.append("<div><h3>Top classes</h3><table><thead><tr><th>#</th><th>class</th><th>probability</th>"
                    f"<th></th></tr></thead><tbody>{rows}</tbody></table></div>")
    if rows_i is not None and len(rows_i):
        cols = [c for c in ("target", "class", "class_name", "probability") if c in rows_i]
        side.append("<div><h3>Explained targets</h3>" + table(rows_i[cols], {"probability": "{:.4f}"}) + "</div>")
    parts.append(f'<div class="row">{"".join(side)}</div>')
    grid = _grid(site, r, i, image, probs)
    if grid:
        parts.append("<h3>Every method, every target</h3><p class=note>Rows are methods, columns the "
                     "explained targets (targets of the same class share a column, e.g. true = top1 when the model is "
                     "right); each map has its own colour scale, read off the bar beside it (red = evidence for "
                     "the class, blue = against, for signed maps; dark to bright for non-negative ones). Opacity "
                     "grows with the magnitude, so the image shows through where a method attributes "
                     "nothing.</p>" + grid)
    per = []
    for m in methods:
        png = r.file(f"overlays/{i:05d}_{m}.png")
        if png is not None:
            per.append(figure(site.copy(png, f"{r.slug}/overlays/{i:05d}_{m}.png"), m, alt=f"{name}: {m}"))
    if per:
        parts.append('<h3>Each method with its colour scale</h3><p class=note>Image, raw attribution with '
                     'its colour bar, overlay; one row per target, one scale per method.</p>'
                     f'<div>{"".join(per)}</div>')
    return "".join(parts)


def _grid(site: Site, r: ReportRun, i: int, image: np.ndarray, probs: np.ndarray | None) -> str:
    caption = "methods × targets"
    existing = r.file(f"overlays/{i:05d}_grid.png")
    if existing is not None:
        return figure(site.copy(existing, f"{r.slug}/grids/{i:05d}.png"), caption)
    maps: dict[str, list[np.ndarray]] = {}
    names: list[str] = []
    targets: np.ndarray | None = None
    for m in r.methods():
        pm = r.pixel_maps(m)
        if pm is None or i >= len(pm):
            continue
        t_names = list(r.explanation_manifest(m).get("target_names", []))
        if not names:
            names, targets = t_names, r.tensor(m, "targets")
        if t_names != names:
            continue
        maps[m] = [pm[i, j].astype(np.float32) for j in range(pm.shape[1])]
    if not maps or targets is None:
        return ""
    titles = [target_title(t, r.class_name(int(targets[i, j])),
                           float(probs[i, int(targets[i, j])]) if probs is not None else float("nan"))
              for j, t in enumerate(names)]
    dest, src = site.img(f"{r.slug}/grids/{i:05d}.png")
    atomic_write_bytes(dest, grid_png(image, maps, titles, classes=[int(c) for c in targets[i]]))
    return figure(src, caption)
