"""Dissection outputs: CSV and run-store table, label histograms, unit galleries, model comparison.

    res = dissect(model, x, "layer1,layer2,layer3", ColourConcepts(prep.denormalize))
    run = dissection_to_run(res, "runs/dissect", model=model, images=x, display=prep.denormalize)
    compare_dissections(res_a.table, res_b.table)   # shared / exclusive labels of two models
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.concepts.activations import ImageSource, take
from xailab.concepts.dissection import Dissection, resolve_layers, stream_layers
from xailab.plotting import plain, save_png, subplots
from xailab.runs.store import Run, atomic_write_text

TABLE = "dissection"


def table_csv(table: pd.DataFrame) -> str:
    """The dissection table as CSV text (layer, unit, label, category, score, labelled, ...)."""
    return table.to_csv(index=False, float_format="%.6g")


def label_histogram(table: pd.DataFrame, path: str | Path, *, top: int = 20, title: str = "") -> Path:
    """PNG of labelled units per label, one panel per layer (the ``top`` most frequent labels)."""
    layers = list(dict.fromkeys(table["layer"]))
    fig, axes = subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        g = table[(table["layer"] == layer) & table["labelled"]]
        counts = g["label"].value_counts().head(top)
        total = int((table["layer"] == layer).sum())
        if counts.empty:
            ax.text(0.5, 0.5, "no unit reaches the threshold", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.barh([plain(str(s)) for s in counts.index[::-1]], counts.values[::-1], color="tab:blue")
        ax.set_title(plain(f"{layer}: {len(g)}/{total} units labelled"), fontsize=9)
        ax.set_xlabel("units")
        ax.tick_params(axis="y", labelsize=7)
    if title:
        fig.suptitle(plain(title), fontsize=10)
    fig.tight_layout()
    return save_png(fig, path)


def unit_masks(
    model: nn.Module, layer: str, images: ImageSource, index: Tensor, units: Tensor, thresholds: Tensor,
) -> tuple[Tensor, Tensor]:
    """``(images [n, C, H, W], masks bool [n, H, W])``: unit ``units[i]``'s map on image
    ``index[i]``, upsampled bilinearly to the image size and thresholded at ``thresholds[i]``."""
    modules = resolve_layers(model, [layer])
    x, _ = take(images, index)
    sub = x
    acts = next(iter(stream_layers(model, modules, sub, batch_size=len(sub))))[3][modules[0][0]]
    a = acts[torch.arange(len(index)), units.to(acts.device)][:, None].float()
    up = F.interpolate(a, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    return x, (up > thresholds.to(up.device)[:, None, None]).cpu()


def unit_gallery(
    result: Dissection,
    model: nn.Module,
    images: ImageSource,
    layer: str,
    units: Sequence[int],
    path: str | Path,
    *,
    display: Callable[[Tensor], Tensor] | None = None,
    per_unit: int = 6,
    names: Sequence[str] | None = None,
) -> Path:
    """PNG: one row per unit, its top images with the thresholded mask outlined and the rest
    dimmed. ``display`` maps model inputs to ``[0, 1]`` RGB (e.g. ``prep.denormalize``)."""
    units = list(units)
    top = result.top_images[layer]
    k = min(per_unit, top.shape[1])
    rows = pd.DataFrame(result.table[result.table["layer"] == layer]).set_index("unit")
    fig, axes = subplots(len(units), k, figsize=(1.6 * k, 1.75 * len(units)), squeeze=False)
    for r, u in enumerate(units):
        idx = top[u, :k]
        x, m = unit_masks(model, layer, images, idx, torch.full((k,), u), result.thresholds[layer][u].repeat(k))
        px = (display(x) if display is not None else x).clamp(0, 1).cpu()
        for c in range(k):
            ax = axes[r, c]
            img = px[c].permute(1, 2, 0).numpy()
            if img.shape[-1] == 1:
                img = np.repeat(img, 3, -1)
            mask = m[c].numpy()
            ax.imshow(np.where(mask[..., None], img, 0.35 * img))
            if mask.any() and not mask.all():
                ax.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if names is not None:
                ax.set_xlabel(plain(Path(str(names[int(idx[c])])).name)[-22:], fontsize=6)
        row = rows.loc[u]
        label = row["label"] if bool(row.get("labelled", True)) else f"(no clear concept;\nbest: {row['label']})"
        axes[r, 0].set_ylabel(plain(f"unit {u}\n{label}\n{row['score']:.3f}"), fontsize=7)
    score = "IoU" if result.kind == "concepts" else "selectivity"
    fig.suptitle(plain(f"{layer}: top units and images (label, {score}); mask = activation > T_k"), fontsize=9)
    fig.tight_layout()
    return save_png(fig, path)


def top_units(result: Dissection, layer: str, n: int) -> list[int]:
    """The ``n`` units of ``layer`` with the highest score (labelled units first)."""
    g = result.table[result.table["layer"] == layer]
    g = g.sort_values(["labelled", "score"], ascending=[False, False])
    return [int(u) for u in g["unit"].head(n)]


def compare_dissections(a: pd.DataFrame, b: pd.DataFrame, names: tuple[str, str] = ("a", "b")) -> pd.DataFrame:
    """Labels of two dissection tables: ``label, units_<a>, units_<b>, status`` with status
    ``shared`` (detected in both), ``only_<a>`` or ``only_<b>``; only labelled units count.

        cmp = compare_dissections(res20.table, res56.table, ("resnet20", "resnet56"))
    """
    na, nb = names
    ca = a[a["labelled"]]["label"].value_counts().rename(f"units_{na}")
    cb = b[b["labelled"]]["label"].value_counts().rename(f"units_{nb}")
    df = pd.concat([ca, cb], axis=1).fillna(0).astype(int)
    df.index.name = "label"
    df = df.reset_index()
    ina, inb = df[f"units_{na}"] > 0, df[f"units_{nb}"] > 0
    df["status"] = np.where(ina & inb, "shared", np.where(ina, f"only_{na}", f"only_{nb}"))
    return df.sort_values(["status", "label"], ignore_index=True)


def dissection_to_run(
    result: Dissection,
    out: str | Path | Run,
    *,
    model: nn.Module | None = None,
    images: ImageSource | None = None,
    display: Callable[[Tensor], Tensor] | None = None,
    names: Sequence[str] | None = None,
    gallery_units: int = 8,
    per_unit: int = 6,
    png: bool = True,
    config: dict[str, Any] | None = None,
) -> Run:
    """Store a dissection: table ``dissection``, ``files/dissection/dissection.csv``,
    ``labels_per_layer.png`` and (with ``model`` and ``images``) ``gallery_<layer>.png``."""
    run = out if isinstance(out, Run) else Run.create(out, kind="dissection", config=config or {})
    run.write_table(TABLE, result.table)
    for layer, s in result.scores.items():
        run.write_array(f"dissection_scores_{layer}", s)
    folder = run.path / "files" / "dissection"
    csv_path = atomic_write_text(folder / "dissection.csv", table_csv(result.table))
    files = {"csv": str(csv_path.relative_to(run.path))}
    if png:
        files["histogram"] = str(label_histogram(result.table, folder / "labels_per_layer.png",
                                                 title=f"network dissection ({result.kind})").relative_to(run.path))
        if model is not None and images is not None:
            for layer in result.scores:
                p = unit_gallery(result, model, images, layer, top_units(result, layer, gallery_units),
                                 folder / f"gallery_{layer}.png", display=display, per_unit=per_unit, names=names)
                files[f"gallery_{layer}"] = str(p.relative_to(run.path))
    run.update_manifest("dissection", {
        "kind": result.kind, "params": result.params, "seconds": result.seconds,
        "concepts": result.concepts, "files": files,
        "summary": result.summary().to_dict(orient="records"),
    })
    return run


def load_dissection_table(run: str | Path | Run) -> pd.DataFrame:
    """The dissection table of a run (for :func:`compare_dissections`)."""
    r = run if isinstance(run, Run) else Run.open(run)
    return r.read_table(TABLE)


__all__ = [
    "compare_dissections",
    "dissection_to_run",
    "label_histogram",
    "load_dissection_table",
    "table_csv",
    "top_units",
    "unit_gallery",
    "unit_masks",
]
