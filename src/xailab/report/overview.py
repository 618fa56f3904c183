"""The overview page's sections: model, data, accuracy, confusion, curves; instance flow.

Each function returns HTML, or ``""`` when the run lacks the data (the section is then absent).
"""

from __future__ import annotations

import shutil

import pandas as pd

from xailab.report.data import ReportRun
from xailab.report.html import esc, figure, kv, table
from xailab.report.report_figures import confusion_png, curves_png
from xailab.report.writer import Site


def train_section(site: Site, r: ReportRun) -> str:
    """Model, data, accuracy overall and per class, confusion matrices, training curves."""
    m = r.manifest
    parts: list[str] = []
    model = m.get("model") or {}
    cfg = m.get("config") or {}
    data = m.get("dataset") or {}
    status = m.get("status") or {}
    parts.append("<h3>Model and data</h3>" + kv([
        ("model", model.get("name") or cfg.get("model")),
        ("class", model.get("class")),
        ("parameters", f"{model['parameters']:,}" if isinstance(model.get("parameters"), int) else None),
        ("initial weights", model.get("weights") or cfg.get("weights")),
        ("data", data.get("name") or cfg.get("data")),
        ("train / val / test", " / ".join(str(data.get(k, "–")) for k in ("train_size", "val_size", "test_size"))
         if data else None),
        ("image size", "x".join(map(str, data["image_size"])) if data.get("image_size") else None),
        ("epochs", status.get("epochs") or cfg.get("epochs")),
        ("best epoch", status.get("best_epoch")),
        ("state", status.get("state")),
    ]))
    ev = r.table("evaluation")
    if ev is not None:
        cols = [c for c in ("name", "n", "accuracy", "loss", "precision_macro", "recall_macro", "f1_macro") if c in ev]
        parts.append("<h3>Accuracy</h3>" + table(ev[cols].rename(columns={"name": "split"}),
                                                 {"accuracy": "{:.2%}", "n": "{:,}"}))
    pc = r.table("per_class")
    if pc is not None:
        for split, df in pc.groupby("name", sort=False) if "name" in pc else [("", pc)]:
            cols = [c for c in ("index", "class", "support", "accuracy", "precision", "f1") if c in df]
            parts.append(f"<h3>Per class{esc(f' ({split})' if split else '')}</h3>"
                         + table(df[cols], {"accuracy": "{:.2%}", "precision": "{:.3f}", "f1": "{:.3f}"}))
    conf = r.table("confusion")
    if conf is not None and {"true", "predicted", "count"} <= set(conf.columns):
        classes = r.class_names() or []
        groups = conf.groupby("name", sort=False) if "name" in conf else [("all", conf)]
        figs = []
        for split, df in groups:
            dest, src = site.img(f"{r.slug}/confusion-{_safe(str(split))}.png")
            confusion_png(df, classes, dest)
            figs.append(figure(src, f"confusion matrix ({split}): rows true, columns predicted"))
        parts.append(f'<h3 id="confusion-{esc(r.slug)}">Confusion</h3>' + "".join(figs))
    met = r.table("metrics")
    if met is not None and "epoch" in met:
        dest, src = site.img(f"{r.slug}/curves.png")
        if curves_png(met, dest) is not None:
            cols = [c for c in ("epoch", "train_loss", "val_loss", "train_acc", "val_acc", "lr", "seconds") if c in met]
            parts.append("<h3>Training curves</h3>" + figure(src, "loss and accuracy per epoch")
                         + table(met.sort_values("epoch")[cols]))
    return "".join(parts)


def explain_section(r: ReportRun, links: dict[str, str]) -> str:
    """What an explain run holds, with links to its pages."""
    cfg = r.manifest.get("config") or {}
    ex = r.manifest.get("explain") or {}
    targets = ex.get("targets")
    items = [
        ("model", cfg.get("model")),
        ("weights", cfg.get("weights")),
        ("images", cfg.get("images")),
        ("images explained", ex.get("n_images")),
        ("targets", ", ".join(map(str, targets)) if isinstance(targets, list) else targets),
        ("methods", ", ".join(r.methods())),
        ("seed", ex.get("seed")),
    ]
    nav = " · ".join(f'<a href="{esc(href)}">{esc(label)}</a>' for label, href in links.items())
    return kv(items) + (f"<p>{nav}</p>" if nav else "") + crosscheck_section(r)


def crosscheck_section(r: ReportRun) -> str:
    """What ``xailab crosscheck`` found: our maps against a reference library's, one row per
    method of the run and baseline."""
    summary = r.manifest.get("crosscheck") or {}
    frames = []
    for key, rows in summary.items():
        if isinstance(rows, list) and rows:
            method, _, against = str(key).rpartition("-")
            frames.append(pd.DataFrame(rows).assign(method=method, against=against))
    if not frames:
        return ""
    df = pd.concat(frames, ignore_index=True)
    cols = [c for c in ("method", "against", "baseline", "images", "max_abs_diff", "max_abs", "rel_error_max",
                        "pearson_min", "spearman_min", "delta_ours_mean_abs", "delta_captum_mean_abs") if c in df]
    numeric = {c: "{:.3g}" for c in cols if c not in ("method", "against", "baseline", "images")}
    return ("<h3>Checked against the reference library</h3>"
            "<p class=note>The same model, images, targets and baselines recomputed with the reference library: "
            "the largest absolute difference of any pixel beside the largest attribution, the worst relative "
            "error and correlations, and each side's completeness error (table <code>crosscheck</code> of the "
            "run has every image).</p>" + table(df[cols], numeric))


def kfold_section(r: ReportRun) -> str:
    """Stratified k-fold: one row per fold and the mean +- standard deviation."""
    folds = r.table("kfold")
    if folds is None or folds.empty:
        return ""
    folds = folds.sort_values("fold") if "fold" in folds else folds
    metrics = [c for c in ("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro") if c in folds]
    cols = [c for c in ("fold", "n_train", "n_val", "best_epoch") if c in folds] + metrics
    summary = r.manifest.get("kfold") or {}
    mean, std = summary.get("mean") or {}, summary.get("std") or {}
    line = ", ".join(f"{m} {mean[m]:.4f} ± {std.get(m, float('nan')):.4f}" for m in metrics if m in mean)
    fmt = {m: "{:.4f}" for m in metrics}
    return (f"<p>{len(folds)} folds, each model validated on its held-out fold (stratified by class)"
            + (f": {esc(line)}" if line else "") + ".</p>" + table(folds[cols], fmt))


def flow_section(site: Site, r: ReportRun) -> str:
    """Embed the run's instance-flow page (``files/flow.html``), copied with its thumbnails."""
    src = r.file("flow.html")
    if src is None:
        return ""
    folder = site.root / "flow" / r.slug
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, folder / "flow.html")
    thumbs = src.parent / "instances"
    if thumbs.is_dir():
        shutil.copytree(thumbs, folder / "instances", dirs_exist_ok=True)
    href = f"flow/{r.slug}/flow.html"
    return (f'<p>How each tracked instance\'s prediction moved between classes over the epochs. Click a band '
            f'or a node to list its instances. <a href="{esc(href)}">Open the flow page on its own</a>: '
            'its address then keeps the selection (e.g. <code>flow.html#link=3,0,1</code>).</p>'
            f'<iframe src="{esc(href)}" title="instance flow of {esc(r.name)}"></iframe>')


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)[:40] or "x"


def summary_rows(runs: list[ReportRun]) -> pd.DataFrame:
    return pd.DataFrame([{"run": r.name, "kind": r.kind, "created": r.manifest.get("created", ""),
                          "path": str(r.run.path)} for r in runs])
