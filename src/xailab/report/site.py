"""``xailab report``: a self-contained static site made from one or more runs.

The site is one folder that opens from disk (``file://``), offline: pages with no script, one
inline style sheet allowed by its hash in a Content-Security-Policy, and every image a PNG file
under ``img/``. Pages, each written only when some run has its data:

* ``index.html``   overview: three questions answered from the runs' numbers (object or
  surroundings? learned patterns? difficulties?, see :mod:`~xailab.report.questions`), the runs,
  model and data, accuracy (overall, per class), confusion matrices and training curves of
  train and evaluate runs, what each explain run holds;
* ``images.html``  thumbnails of every explained image, linking to one page per image (the
  image, its top classes, a grid of every method for every explained target);
* ``compare.html`` what ``xailab compare`` wrote: scoreboard, IoU and rank-correlation matrices,
  faithfulness, sanity, figures;
* ``flow.html``    the instance flow of a train run (its ``files/flow.html``, embedded);
* ``learning.html`` explanations over training of ``xailab learning`` (see :mod:`~xailab.report.learning_page`);
* ``concepts.html`` ICE concepts and TCAV scores of ``xailab concepts`` runs;
* ``dissection.html`` labelled units of ``xailab dissect`` runs;
* ``distill.html`` surrogate trees, rules and students of ``xailab distill`` runs;
* ``audit.html``   attacks, planted backdoors and backdoor detection of ``xailab audit`` runs;
* ``counterfactuals.html`` counterfactuals of ``xailab counterfactual`` runs (pixel, region, prototype, concept);
* ``methods.html`` a card per method used (Hohman et al. 2018), its parameters and its cost.

The site is built in a hidden folder beside ``out`` and renamed into place, so a failed build
leaves nothing behind and an existing report is replaced whole. It reads only the run store.

    build_site(["runs/cifar-train", "runs/cifar-explain"], "site/")
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from xailab.report.audit_page import audit_page, has_audit
from xailab.report.comparison import comparison_section, has_comparison
from xailab.report.concepts_page import concepts_page, has_concepts
from xailab.report.counterfactual_page import counterfactual_page, has_counterfactuals
from xailab.report.data import ReportRun, slug
from xailab.report.dissection_page import dissection_page, has_dissection
from xailab.report.distill_page import distill_page, has_distill
from xailab.report.html import esc, table
from xailab.report.images import image_pages
from xailab.report.learning_page import has_learning, learning_page
from xailab.report.methods import cards_section
from xailab.report.overview import (
    explain_section,
    flow_section,
    kfold_section,
    summary_rows,
    train_section,
)
from xailab.report.questions import questions_section
from xailab.report.writer import Site
from xailab.runs.store import RunError, atomic_write_text

MARKER = ".xailab-report"


def run_names(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """A name for each run: its folder's name, with as many parent folders as tell it apart
    from another run of the same folder name (``vit/explain`` and ``cnn/explain``)."""
    parts = [Path(p).resolve().parts for p in paths]
    names = []
    for mine in parts:
        k = 1
        while k < len(mine) and any(o != mine and o[-k:] == mine[-k:] for o in parts):
            k += 1
        names.append("/".join(mine[-k:]))
    return names


def open_runs(paths: Sequence[str | os.PathLike[str]]) -> list[ReportRun]:
    """Open each run, giving each a distinct name (:func:`run_names`) and slug (that name made
    file-name safe; the same run given twice is numbered)."""
    runs: list[ReportRun] = []
    seen: set[str] = set()
    for p, name in zip(paths, run_names(paths), strict=True):
        base = slug(name)
        s, k = base, 2
        while s in seen:
            s, k = f"{base}-{k}", k + 1
        seen.add(s)
        runs.append(ReportRun.of(p, s, name))
    if not runs:
        raise RunError("no run given to report on")
    return runs


def build_site(
    runs: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    title: str = "xailab report",
    max_images: int = 100,
) -> Path:
    """Write the report of ``runs`` into folder ``out`` (replacing an earlier report there)."""
    opened = open_runs(runs)
    dest = Path(out)
    if dest.exists() and not (dest / MARKER).is_file() and (not dest.is_dir() or any(dest.iterdir())):
        raise RunError(f"{dest} exists and is not an xailab report; give an empty or new folder")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        tmp.chmod(0o755)
        _build(opened, Site(tmp, title, subtitle=", ".join(r.name for r in opened)), max_images)
        atomic_write_text(tmp / MARKER, "written by xailab report\n")
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


@dataclass
class _Groups:
    """The runs each page shows."""

    train: list[ReportRun]
    explain: list[ReportRun]
    compared: list[ReportRun]
    flows: list[ReportRun]
    concepts: list[ReportRun]
    dissections: list[ReportRun]
    audits: list[ReportRun]
    learning: list[ReportRun]
    counterfactuals: list[ReportRun]
    distills: list[ReportRun]

    @classmethod
    def of(cls, runs: list[ReportRun]) -> _Groups:
        explain = [r for r in runs if r.kind != "audit" and r.methods()]  # audit runs keep maps of attacks
        return cls(
            train=[r for r in runs if r.kind == "train" or r.has_table("per_class") or r.has_table("confusion")],
            explain=explain, compared=[r for r in explain if has_comparison(r)],
            flows=[r for r in runs if r.file("flow.html") is not None],
            concepts=[r for r in runs if has_concepts(r)], dissections=[r for r in runs if has_dissection(r)],
            audits=[r for r in runs if has_audit(r)], learning=[r for r in runs if has_learning(r)],
            counterfactuals=[r for r in runs if has_counterfactuals(r)],
            distills=[r for r in runs if has_distill(r)],
        )

    def nav(self) -> list[tuple[str, str]]:
        """The pages in the navigation: the overview, then each page that has runs to show."""
        pages: list[tuple[str, str, list[ReportRun]]] = [
            ("images.html", "Images", self.explain), ("compare.html", "Comparison", self.compared),
            ("flow.html", "Instance flow", self.flows), ("learning.html", "Learning", self.learning),
            ("concepts.html", "Concepts", self.concepts),
            ("dissection.html", "Dissection", self.dissections), ("audit.html", "Audit", self.audits),
            ("counterfactuals.html", "Counterfactuals", self.counterfactuals),
            ("distill.html", "Distillation", self.distills),
            ("methods.html", "Methods", self.explain)]
        return [("index.html", "Overview")] + [(href, label) for href, label, shown in pages if shown]


def _build(runs: list[ReportRun], site: Site, max_images: int) -> None:
    g = _Groups.of(runs)
    site.nav = g.nav()
    pages = dict(site.nav)
    site.write("index.html", site.title, _overview(site, runs, g, pages))
    _write_pages(site, g, max_images)
    assert set(pages) <= set(site.pages)


def _overview(site: Site, runs: list[ReportRun], g: _Groups, pages: dict[str, str]) -> str:
    """The index page's body: the questions, the runs, then each run's own section or a pointer."""
    body = [questions_section(site, runs, g.explain, g.concepts, g.dissections, has_flow_page=bool(g.flows)),
            "<h2>Runs</h2>", table(summary_rows(runs))]
    for r in g.train:
        what = "Training" if r.kind == "train" else "Evaluation"
        body.append(f"<h2>{what}: {esc(r.name)}</h2>" + train_section(site, r))
    for r in g.explain:
        links = {label: href for href, label in site.nav if href in ("images.html", "compare.html", "methods.html")}
        if r not in g.compared:
            links.pop("Comparison", None)
        body.append(f"<h2>Explanations: {esc(r.name)}</h2>" + explain_section(r, links))
    shown_elsewhere = {id(r): href for group, href in ((g.concepts, "concepts.html"), (g.dissections, "dissection.html"),
                                                        (g.audits, "audit.html"),
                                                        (g.counterfactuals, "counterfactuals.html"),
                                                        (g.distills, "distill.html")) for r in group}
    for r in runs:
        if r in g.train or r in g.explain:
            continue
        if r.has_table("kfold"):
            body.append(f"<h2>Cross-validation: {esc(r.name)}</h2>" + kfold_section(r))
        elif id(r) in shown_elsewhere:
            href = shown_elsewhere[id(r)]
            body.append(f"<h2>{esc(r.kind)}: {esc(r.name)}</h2><p>Shown on the "
                        f'<a href="{esc(href)}#{esc(r.slug)}">{esc(pages[href])} page</a>.</p>')
        else:
            body.append(f"<h2>{esc(r.kind)}: {esc(r.name)}</h2><p class=note>Nothing of this run is shown "
                        "beyond its listing above.</p>")
    return "".join(body)


def _write_pages(site: Site, g: _Groups, max_images: int) -> None:
    """Every page but the overview, for the groups that have runs."""
    if g.explain:
        sections = []
        for r in g.explain:
            thumbs = image_pages(site, r, max_images)
            if thumbs:
                sections.append(f"<h2>{esc(r.name)}</h2>{thumbs}")
        site.write("images.html", "Images", "".join(sections) or "<p>No images were stored with these runs.</p>")
        site.write("methods.html", "Methods", "<h2>Method cards</h2>" + cards_section(g.explain))
    if g.compared:
        site.write("compare.html", "Comparison",
                   "".join(f"<h2>{esc(r.name)}</h2>" + comparison_section(site, r) for r in g.compared))
    if g.flows:
        site.write("flow.html", "Instance flow",
                   "".join(f"<h2>{esc(r.name)}</h2>" + flow_section(site, r) for r in g.flows))
    if g.learning:
        site.write("learning.html", "Learning", learning_page(site, g.learning))
    if g.concepts:
        site.write("concepts.html", "Concepts", concepts_page(site, g.concepts))
    if g.dissections:
        site.write("dissection.html", "Dissection", dissection_page(site, g.dissections))
    if g.audits:
        site.write("audit.html", "Audit", audit_page(site, g.audits))
    if g.counterfactuals:
        site.write("counterfactuals.html", "Counterfactuals", counterfactual_page(site, g.counterfactuals))
    if g.distills:
        site.write("distill.html", "Distillation", distill_page(site, g.distills))
