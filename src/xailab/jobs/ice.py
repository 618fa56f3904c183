"""The ICE job: fit concepts on an image set, analyse them, and store everything in a run.

``ice_images`` streams the images through the model (fit: ``epochs`` passes; analysis: two passes;
fidelity curve: one pass per number of concepts on a subset) and writes into ``RUN``:

* arrays ``ice_basis [k, C]`` (the concept directions P), ``ice_thresholds [k]``,
  ``ice_mean_scores`` / ``ice_max_scores [N, k]`` (per-image concept scores);
* tables ``ice_importance`` (per concept and class: sensitivity, contribution,
  positive_fraction, presence, mean_score), ``ice_fidelity`` (the curve against the number of
  concepts), ``ice_concepts`` (per concept), ``ice_images`` (per image);
* figures under ``RUN/files/ice/``: ``overview.png``, ``gallery_XX.png``, ``patches.png``,
  ``sensitivity.png``, ``contribution.png``, ``presence.png``, ``fidelity.png``;
* the manifest section ``ice`` (layer, settings, fidelity of the chosen basis, timings).

``apply_concepts`` applies a run's saved basis to new images (``RUN/files/ice/explain/``, table
``ice_explanations``). A rerun with the same settings reuses the saved basis (resume).

    run = ice_images(model, images, labels=y, class_names=ds.classes, out="runs/ice", n_concepts=10)
    maps = apply_concepts(model, "runs/ice", new_images, names=["my_cat.png"])
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.concepts.activations import ImageSource, iter_activations, num_images, take
from xailab.concepts.ice import (
    SIGNED,
    ConceptBasis,
    ConceptMaps,
    ICEAnalysis,
    analyse_ice,
    explain_concepts,
    fidelity_curve,
    fit_concepts,
    non_negative_layers,
)
from xailab.core.errors import InputError
from xailab.core.hooks import resolve_layer
from xailab.jobs.common import model_sha256, tensor_sha256
from xailab.runs.store import Run

Display = Callable[[Tensor], Tensor]
DEFAULT_CURVE = (2, 4, 6, 8, 10, 12, 16, 24, 32)


def _minmax(x: Tensor) -> Tensor:
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def default_ice_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The layer ICE factorises when none is named: the last conv block, or, when that is a bare
    ``Conv2d`` (signed output), the first ReLU-like module registered after it."""
    name, module = resolve_layer(model, None)
    if not isinstance(module, SIGNED):
        return name, module
    names = [n for n, _ in model.named_modules()]
    after = set(names[names.index(name) + 1:])
    for candidate in non_negative_layers(model):
        if candidate in after:
            return candidate, dict(model.named_modules())[candidate]
    return name, module  # nothing non-negative follows: the signed-layer check explains what to do


def _channels(model: nn.Module, layer: str | None, images: ImageSource) -> tuple[str, int]:
    name, module = resolve_layer(model, layer) if layer is not None else default_ice_layer(model)
    first = next(iter_activations(model, module, images, batch_size=1))
    return name, int(first.activations.shape[1])


def ice_images(
    model: nn.Module,
    images: ImageSource,
    *,
    out: str | Path,
    labels: Tensor | Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    display: Display | None = None,
    n_concepts: int = 10,
    layer: str | None = None,
    curve: Sequence[int] = DEFAULT_CURVE,
    curve_images: int = 500,
    batch_size: int = 64,
    epochs: int = 1,
    seed: int = 0,
    clamp: bool = False,
    presence: float = 0.5,
    gallery: int = 8,
    png: bool = True,
    config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> Run:
    """Fit ``n_concepts`` ICE concepts on ``layer`` over ``images`` and store the analysis in ``out``.

    Args:
        display: maps a batch of ``images`` to what a person sees, ``[B, 3, H, W]`` in [0, 1]
            (e.g. the preprocessing's ``denormalize``); default: per-image min-max scaling.
        curve: numbers of concepts for the fidelity curve (fitted in the same stream as the
            chosen basis; those above the layer's channel count are dropped); ``()`` for none.
        curve_images: images (a seeded random subset) on which the curve is evaluated.
        presence: a concept counts in an image when its largest score there exceeds
            ``presence`` times the 99th percentile of that score over the images.
        gallery: images per row of the galleries (strongest / weakest) and patches.
    Other arguments as :func:`xailab.concepts.ice.fit_concepts`.
    """
    start = time.perf_counter()
    n = num_images(images)
    layer_name, channels = _channels(model, layer, images)
    ks = sorted({int(k) for k in curve if 1 <= int(k) <= channels and int(k) <= n} | {int(n_concepts)})
    spec = {"layer": layer_name, "n_concepts": n_concepts, "ks": ks, "n_images": n, "epochs": epochs,
            "seed": seed, "clamp": clamp, "batch_size": batch_size,  # and what the basis is fitted on:
            "model": model_sha256(model), "images": _images_identity(images)}
    run = Run.create(out, kind="concepts", config=config or {})
    bases = _bases(run, model, images, spec, channels, log, progress)
    result = analyse_ice(model, bases[n_concepts], images, labels, batch_size=batch_size,
                         presence=presence, progress=progress)
    _save_bases(run, result, bases, spec, log)
    curve_df = _curve(run, model, bases, images, curve, curve_images, seed, batch_size, progress)

    names = list(names) if names is not None else [f"{i:05d}" for i in range(n)]
    cnames = [str(c) for c in class_names] if class_names is not None else [str(j) for j in range(result.sensitivity.shape[1])]
    _write_tables(run, result, names, cnames)
    _record(run, spec, channels, presence, result, cnames, int(min(curve_images, n)) if len(curve_df) else 0, start)
    if png:
        write_ice_figures(model, run, result, images, names, cnames, display, gallery, curve_df, batch_size)
    return run


def _images_identity(images: ImageSource) -> str:
    """The sha256 of an image tensor; a dataset by its type, size and source."""
    if isinstance(images, Tensor):
        return tensor_sha256(images)
    return f"{type(images).__name__}:{num_images(images)}:{getattr(images, 'source', getattr(images, 'root', ''))}"


def _bases(run: Run, model: nn.Module, images: ImageSource, spec: dict[str, Any], channels: int,
           log: Callable[[str], None], progress: bool) -> dict[int, ConceptBasis]:
    """The fitted bases by number of concepts: loaded when the run holds a fit of the same spec."""
    n_concepts, ks, layer_name, n = spec["n_concepts"], spec["ks"], spec["layer"], spec["n_images"]
    saved = run.manifest.get("ice_spec")
    bases: dict[int, ConceptBasis] = {}
    if saved == json.loads(json.dumps(spec)) and "ice_basis" in run.arrays():
        log("ice: concept basis already in the run, fit skipped")
        bases[n_concepts] = ConceptBasis.load(run)
        for k in ks:
            if k != n_concepts and f"ice_k{k}_basis" in run.arrays():
                bases[k] = ConceptBasis.load(run, f"ice_k{k}")
        return bases
    log(f"ice: fitting {', '.join(map(str, ks))} concepts on {layer_name} ({channels} channels) over {n} images")
    return fit_concepts(model, images, ks, layer=layer_name, batch_size=spec["batch_size"], epochs=spec["epochs"],
                        seed=spec["seed"], clamp=spec["clamp"], progress=progress)


def _save_bases(run: Run, result: ICEAnalysis, bases: dict[int, ConceptBasis], spec: dict[str, Any],
                log: Callable[[str], None]) -> None:
    """The chosen basis, the curve's other bases and the spec they were fitted with (for resume)."""
    n_concepts = spec["n_concepts"]
    result.basis.save(run)
    for k, b in bases.items():
        if k != n_concepts:
            b.save(run, f"ice_k{k}")
    run.update_manifest("ice_spec", spec)
    fid = result.fidelity
    log("ice: top-1 agreement {:.3f}, mean |logit error| {:.3f}, reconstruction error {:.3f}".format(
        fid["top1_agreement"], fid["mean_abs_logit_error"], fid["reconstruction_error"]))


def _record(run: Run, spec: dict[str, Any], channels: int, presence: float, result: ICEAnalysis,
            cnames: list[str], curve_images: int, start: float) -> None:
    """The manifest's ``ice`` section."""
    run.update_manifest("ice", {
        "layer": spec["layer"], "n_concepts": spec["n_concepts"], "channels": channels, "n_images": spec["n_images"],
        "epochs": spec["epochs"], "seed": spec["seed"], "clamp": spec["clamp"], "presence": presence,
        "map_size": list(result.map_size), "class_names": cnames, "fidelity": result.fidelity,
        "curve_images": curve_images, "seconds": time.perf_counter() - start,
    })


def _curve(run: Run, model: nn.Module, bases: dict[int, ConceptBasis], images: ImageSource, curve: Sequence[int],
           curve_images: int, seed: int, batch_size: int, progress: bool) -> pd.DataFrame:
    """The fidelity curve over a seeded subset of the images (table ``ice_fidelity``); empty without one."""
    n = num_images(images)
    curve_df = pd.DataFrame()
    if len(bases) > 1 or curve:
        m = min(curve_images, n)
        sub = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))[:m]
        subset = take(images, sub)[0]
        curve_df = fidelity_curve(model, bases, subset, batch_size=batch_size, progress=progress)
        run.write_table("ice_fidelity", curve_df)
    return curve_df


def _write_tables(run: Run, res: ICEAnalysis, names: Sequence[str], cnames: Sequence[str]) -> None:
    run.write_array("ice_mean_scores", res.mean_scores.float())
    run.write_array("ice_max_scores", res.max_scores.float())
    run.write_table("ice_importance", res.importance_table(cnames))
    thr = res.basis.thresholds if res.basis.thresholds is not None else torch.zeros(res.basis.n_concepts)
    present = res.max_scores > thr
    top = res.max_scores.argsort(0, descending=True)[:5]
    run.write_table("ice_concepts", pd.DataFrame([{
        "concept": c, "threshold": float(thr[c]), "present_fraction": float(present[:, c].float().mean()),
        "mean_score": float(res.mean_scores[:, c].mean()), "max_score": float(res.max_scores[:, c].max()),
        "top_images": ",".join(names[int(i)] for i in top[:, c]),
    } for c in range(res.basis.n_concepts)]))
    n = len(res.groups)
    run.write_table("ice_images", pd.DataFrame({
        "index": np.arange(n), "name": list(names),
        "label": res.labels.numpy() if res.labels is not None else np.full(n, -1),
        "group": res.groups.numpy(), "prediction": res.predictions.numpy(),
        "recon_prediction": res.recon_predictions.numpy(),
        "top_concept": res.mean_scores.argmax(1).numpy(),
    }))


def _select(res: ICEAnalysis, m: int) -> tuple[Tensor, Tensor]:
    """Per concept: the ``m`` images of largest and of smallest max score ``[k, m]`` each."""
    key = res.max_scores + 1e-6 * res.mean_scores  # break ties among all-zero images by the mean
    strong = key.argsort(0, descending=True)[:m].T
    weak = key.argsort(0)[:m].T
    return strong, weak


def write_ice_figures(
    model: nn.Module,
    run: Run,
    res: ICEAnalysis,
    images: ImageSource,
    names: Sequence[str],
    class_names: Sequence[str],
    display: Display | None,
    gallery: int,
    curve: pd.DataFrame,
    batch_size: int = 64,
) -> None:
    """The PNG figures of an analysis (see the module docstring), written atomically."""
    from xailab.concepts.concept_figures import (
        crop,
        fidelity_figure,
        gallery_figure,
        overview_figure,
        patch_box,
        patches_figure,
    )
    from xailab.plotting import save_png

    show = display or _minmax
    k = res.basis.n_concepts
    m = max(1, min(gallery, len(res.groups)))
    strong, weak = _select(res, m)
    wanted = torch.unique(torch.cat([strong.flatten(), weak.flatten()]))
    x, _ = take(images, wanted)
    cm = explain_concepts(model, res.basis, x, batch_size=batch_size)
    seen = show(x).detach().float().cpu().clamp(0, 1)
    size = (int(seen.shape[2]), int(seen.shape[3]))
    up = cm.upsampled(size)
    row_of = {int(i): r for r, i in enumerate(wanted)}

    def rows(sel: Tensor) -> list[int]:
        return [row_of[int(i)] for i in sel]

    def title(i: int, c: int) -> str:
        g = int(res.groups[i])
        return f"{class_names[g] if g < len(class_names) else g} {float(res.max_scores[i, c]):.2f}"

    overview = []
    patches = []
    for c in range(k):
        rs, rw = rows(strong[c]), rows(weak[c])
        vmax = float(res.max_scores[:, c].max()) or 1.0
        fig = gallery_figure(seen[rs], up[rs, c], seen[rw], up[rw, c], concept=c,
                             top_titles=[title(int(i), c) for i in strong[c]],
                             low_titles=[title(int(i), c) for i in weak[c]], vmax=vmax)
        save_png(fig, run.file(f"ice/gallery_{c:02d}.png"))
        overview.append((seen[rs], up[rs, c]))
        patches.append([crop(seen[row_of[int(i)]], patch_box(int(res.argmax[int(i), c]), res.map_size, size, 4.0))
                        for i in strong[c]])
    labels = [f"concept {c}" for c in range(k)]
    save_png(overview_figure(overview, labels), run.file("ice/overview.png"))
    save_png(patches_figure(patches, labels), run.file("ice/patches.png"))
    _class_bars(run, res, class_names)
    if len(curve):
        save_png(fidelity_figure(curve, k), run.file("ice/fidelity.png"))


def _class_bars(run: Run, res: ICEAnalysis, class_names: Sequence[str]) -> None:
    """Bar charts of the concepts' sensitivity, contribution and presence per class (classes seen only)."""
    from xailab.concepts.concept_figures import bars_figure
    from xailab.plotting import save_png

    used = torch.nonzero(res.class_counts > 0).flatten()
    shown = [class_names[int(j)] if int(j) < len(class_names) else str(int(j)) for j in used]
    for values, fname, ylabel, what in (
        (res.sensitivity, "sensitivity", "d logit / d concept", "sensitivity"),
        (res.contribution, "contribution", "score x gradient", "contribution"),
        (res.presence, "presence", "share of images", "presence"),
    ):
        fig = bars_figure(values[:, used], shown, ylabel=ylabel, title=f"ICE concept {what} per class")
        save_png(fig, run.file(f"ice/{fname}.png"))


def apply_concepts(
    model: nn.Module,
    run: str | Path | Run,
    images: Tensor,
    *,
    names: Sequence[str] | None = None,
    display: Display | None = None,
    top: int = 4,
    batch_size: int = 64,
    png: bool = True,
) -> ConceptMaps:
    """Apply the run's saved concept basis to new ``images``: concept maps, scores, contributions.

    Writes table ``ice_explanations`` (a row per image and concept) and, with ``png``, one figure
    per image under ``RUN/files/ice/explain/`` showing the ``top`` concepts that add most to the
    predicted class.
    """
    from xailab.concepts.concept_figures import explanation_figure
    from xailab.plotting import save_png

    run = run if isinstance(run, Run) else Run.open(run)
    basis = ConceptBasis.load(run)
    if len(images) == 0:
        raise InputError("no images to explain")
    names = list(names) if names is not None else [f"{i:05d}" for i in range(len(images))]
    cm = explain_concepts(model, basis, images, batch_size=batch_size)
    cnames = run.manifest.get("ice", {}).get("class_names") or [str(j) for j in range(cm.logits.shape[1])]
    probs = torch.softmax(cm.logits, 1)
    scores = cm.scores
    rows = []
    for i in range(len(images)):
        for c in range(basis.n_concepts):
            rows.append({"image": i, "name": names[i], "concept": c, "score": float(scores[i, c]),
                         "present": bool(cm.present[i, c]) if cm.present is not None else None,
                         "contribution": float(cm.contribution[i, c]), "target": int(cm.targets[i])})
    run.write_table("ice_explanations", pd.DataFrame(rows), part=_part(names))
    if png:
        seen = (display or _minmax)(images).detach().float().cpu().clamp(0, 1)
        up = F.interpolate(cm.maps, size=seen.shape[-2:], mode="bilinear", align_corners=False)
        for i in range(len(images)):
            order = cm.contribution[i].argsort(descending=True)[: max(1, top)].tolist()
            caps = [f"c{c}: {float(cm.contribution[i, c]):+.2f}" for c in order]
            t = int(cm.targets[i])
            cls = cnames[t] if t < len(cnames) else str(t)
            fig = explanation_figure(seen[i], up[i], order, caps,
                                     title=f"{names[i]}: {cls} ({float(probs[i, t]):.2f}); concept: contribution")
            save_png(fig, run.file(f"ice/explain/{i:04d}_{_safe(names[i])}.png"))
    return cm


def _safe(name: str) -> str:
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name.strip("/"))
    return keep[-60:] or "image"


def _part(names: Sequence[str]) -> str:
    import hashlib

    return hashlib.sha1("\n".join(names).encode()).hexdigest()[:12]
