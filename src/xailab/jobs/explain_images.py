"""Explain a set of images with several methods into a run directory.

The job behind ``xailab explain``: maps saved as ``RUN/explanations/<name>/``, a table
``explanations`` (one row per image, target and method),
the images themselves (``arrays/images``, table ``images``) and PNG overlays under
``RUN/files/overlays/``. A rerun of the same job skips the methods already saved (resume).

    run = explain_images(model, images, labels=labels, names=names, class_names=class_names,
                         methods=["saliency", "gradcam"], targets=["true", "top1"], out="runs/x")

A method may be given a name of its own, ``NAME=METHOD``, so one run holds several settings of
one method side by side (``ig_black=integrated_gradients,ig_noise=integrated_gradients`` with
``method_params={"ig_black": {"baseline": "black"}, "ig_noise": {"baseline": "uniform"}}``);
parameters given under the method's own name apply to every name that runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from xailab.core.card import method_cards
from xailab.core.errors import InputError, UnsupportedModelError
from xailab.core.explanation import Explanation
from xailab.core.registry import METHODS
from xailab.core.targets import TargetSpec
from xailab.jobs.explain_plan import (
    MethodPlan,
    method_kwargs,
    method_names,
    method_spec,
    model_sha256,
    plan_methods,
)
from xailab.runs.store import Run, RunError, atomic_write_text

# the planning half lives in explain_plan; these names stay importable from here
__all__ = [
    "PNG_MODES",
    "Backend",
    "MethodPlan",
    "explain_images",
    "method_kwargs",
    "method_names",
    "method_spec",
    "model_sha256",
    "plan_methods",
    "png_mode",
    "write_overlays",
]


def explain_images(
    model: nn.Module,
    images: Tensor,
    *,
    out: str | Path,
    methods: Sequence[str],
    targets: TargetSpec,
    labels: Tensor | None = None,
    names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    display: Tensor | None = None,
    method_params: dict[str, dict[str, Any]] | None = None,
    layer: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    quick: bool = False,
    png: bool | str = "grid",
    config: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
    backend: Backend | None = None,
) -> Run:
    """Explain ``images`` with every method in ``methods`` and store everything in run ``out``.

    Everything the user gave (methods, parameters, layers, targets) is checked before the run is
    created. A rerun into the same ``out`` skips the methods already saved, and refuses when the
    run holds maps of another model, other images or other targets. A method that cannot explain
    this model (:class:`~xailab.core.errors.UnsupportedModelError`) is skipped and listed in the
    manifest (``explain.refused``) while the others run.

    Args:
        display: the images as a person sees them, ``[N, C, H, W]`` in [0, 1], for the overlays
            (default: ``images`` min-max scaled).
        method_params: per-method keyword arguments, e.g. ``{"lime": {"num_samples": 2000}}``.
        mean, std: the normalisation the images went through, given to every method that
            builds baselines or noise in pixel space (IG's black/white baselines, SmoothGrad).
        png: the PNG overlays under ``files/overlays/``: ``"grid"`` (one grid of methods x
            targets per image), ``"all"`` (also one image | heatmap | overlay figure per method),
            ``"none"``; ``True`` / ``False`` are ``"all"`` / ``"none"``.
        backend: computes the methods not yet in the run, all at once, instead of this process
            (e.g. :class:`xailab.distributed.RayBackend`); what it returns is stored as here.
    """
    figures = png_mode(png)  # checked before any work
    names = list(names) if names is not None else [f"{i:05d}" for i in range(len(images))]
    plan = plan_methods(model, images, methods, targets, labels=labels, method_params=method_params, layer=layer,
                        mean=mean, std=std, batch_size=batch_size, seed=seed, quick=quick)
    for m, why in plan.refused.items():
        log(f"{m}: refused before the run: {why}")
    run = _open_run(out, plan, model, images, targets, config)
    _record(run, plan, targets, layer, class_names, len(images))
    # the report reads the cards from here; those of methods an earlier call put in the run stay
    run.update_manifest("cards", {**(run.manifest.get("cards") or {}), **method_cards(plan.kinds.values())})
    shown = display if display is not None else _minmax(images)
    _write_images(run, images, shown, names, labels)
    results, refused = _compute(run, model, images, plan, targets, labels, names, class_names, log, backend)
    _record_refusals(run, refused)
    if figures != "none":
        write_overlays(run, results, shown, names, class_names, per_method=figures == "all")
    return run


def _open_run(out: str | Path, plan: MethodPlan, model: nn.Module, images: Tensor, targets: TargetSpec,
              config: dict[str, Any] | None) -> Run:
    """Create the run, or reopen it when it holds maps of the same model, images and targets."""
    path = Path(out)
    if (path / "manifest.json").is_file():
        old = Run.open(path).manifest.get("explain") or {}
        before = old.get("identity")
        what = {"model": "another model (other weights)", "images": "other images", "labels": "other labels",
                "targets": "other targets"}
        if before is not None:
            diff = [what[k] for k in what if before.get(k) != plan.identity[k]]
        else:  # a run made before identities were recorded
            diff = ["another number of images"] if old.get("n_images", len(images)) != len(images) else []
        if diff:
            raise RunError(f"run {path} holds explanations of {', '.join(diff)}; explaining into it would mix "
                           "them: choose another --out (or remove the run to recompute)")
    return Run.create(out, kind="explain", config=config or {})


def _record(run: Run, plan: MethodPlan, targets: TargetSpec, layer: str | None,
            class_names: Sequence[str] | None, n: int) -> None:
    """The manifest's ``explain`` section; methods an earlier (or concurrent) job put in the run stay."""
    prev = run.manifest.get("explain") or {}
    run.update_manifest("explain", {
        "methods": list(dict.fromkeys([*prev.get("methods", []), *plan.names])),
        "kinds": {**prev.get("kinds", {}), **plan.kinds},
        "targets": targets if isinstance(targets, (str, int)) else list(map(str, targets)),
        "batch_size": plan.batch_size, "seed": plan.seed, "layer": layer,
        "class_names": list(class_names) if class_names is not None else None,
        "n_images": n, "identity": plan.identity,
    })


def _record_refusals(run: Run, refused: dict[str, str]) -> None:
    """The refused methods, with their reasons, in the manifest (and not among its methods)."""
    if refused:
        section = run.manifest["explain"]
        kept = [m for m in section["methods"] if m not in refused or (run.path / "explanations" / m).is_dir()]
        run.update_manifest("explain", {**section, "methods": kept, "refused": refused})


def _write_images(run: Run, images: Tensor, shown: Tensor, names: list[str], labels: Tensor | None) -> None:
    run.write_array("images", images.detach().cpu().float())
    run.write_array("display", (shown.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8))
    run.write_table("images", {
        "index": np.arange(len(images)),
        "name": list(names),
        "label": (labels.cpu().numpy() if labels is not None else np.full(len(images), -1)),
    })


def _compute(run: Run, model: nn.Module, images: Tensor, plan: MethodPlan, targets: TargetSpec,
             labels: Tensor | None, names: list[str], class_names: Sequence[str] | None,
             log: Callable[[str], None], backend: Backend | None) -> tuple[dict[str, Explanation], dict[str, str]]:
    """Each method's maps (saved ones loaded, the others computed and saved); refusals by name."""
    canon, kinds, specs = plan.names, plan.kinds, plan.specs
    done = {m for m in canon if _is_saved(run, m, specs[m])}
    computed: dict[str, Explanation] = {}
    if backend is not None and len(done | set(plan.refused)) < len(canon):
        todo = {m: plan.kwargs[m] for m in canon if m not in done and m not in plan.refused}
        renamed = {m: kinds[m] for m in todo if kinds[m] != m}
        computed = backend(model, images, run=run, methods=todo, specs={m: specs[m] for m in todo},
                           targets=targets, labels=labels, batch_size=plan.batch_size, seed=plan.seed,
                           **({"kinds": renamed} if renamed else {}))
    results: dict[str, Explanation] = {}
    refused: dict[str, str] = {}
    for m in canon:
        dest = run.path / "explanations" / m
        if m in plan.refused:  # refused by the check before the run started
            refused[m] = plan.refused[m]
            continue
        if m in done:
            log(f"{m}: already in the run, skipped")
            results[m] = Explanation.load(dest)
            continue
        try:
            res = computed[m] if m in computed else METHODS.create(
                kinds[m], model, batch_size=plan.batch_size, seed=plan.seed, **plan.kwargs[m]
            ).explain(images, target=targets, labels=labels, progress=True)
        except UnsupportedModelError as e:
            refused[m] = str(e)
            log(f"{m}: refused: {e}")
            continue
        res.save(dest)
        atomic_write_text(run.path / "explanations" / f".{m}.spec", specs[m])
        run.write_table("explanations", _rows(res, names, class_names, m), part=m)
        results[m] = res
        log(f"{m}: {res.seconds / len(images):.3f} s/image, {res.evaluations / len(images):.0f} model evaluations/image")
    if backend is not None:
        backend.finish(run)
    return results, refused


class Backend(Protocol):
    """Computes several methods over all images somewhere else (see ``explain_images``)."""

    def __call__(self, model: nn.Module, images: Tensor, *, run: Run, methods: dict[str, dict[str, Any]],
                 specs: dict[str, str], targets: TargetSpec, labels: Tensor | None, batch_size: int,
                 seed: int, kinds: dict[str, str] | None = None) -> dict[str, Explanation]:
        """``methods`` maps each name in the run to its keyword arguments; ``kinds`` maps the
        names that are not a registered method's own to the method they run."""

    def finish(self, run: Run) -> None:
        """Called once what it returned is saved in the run (e.g. to remove its partial files)."""


def _is_saved(run: Run, method: str, spec: str) -> bool:
    spec_file = run.path / "explanations" / f".{method}.spec"
    return (run.path / "explanations" / method / "manifest.json").is_file() and spec_file.is_file() \
        and spec_file.read_text() == spec


def _minmax(x: Tensor) -> Tensor:
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def _class_name(class_names: Sequence[str] | None, k: int) -> str:
    return str(class_names[k]) if class_names is not None and 0 <= k < len(class_names) else str(k)


def _rows(res: Explanation, names: Sequence[str], class_names: Sequence[str] | None,
          label: str) -> dict[str, list[Any]]:
    """The ``explanations`` table's part of one method: a row per image and target, by column."""
    probs = res.probabilities.detach().cpu().numpy()
    n, t = res.targets.shape
    classes = [[int(k) for k in row] for row in res.targets.tolist()]
    pairs = [(i, j) for i in range(n) for j in range(t)]
    return {
        "image": [i for i, _ in pairs], "name": [names[i] for i, _ in pairs], "method": [label] * len(pairs),
        "algorithm": [res.method] * len(pairs), "target": [res.target_names[j] for _, j in pairs],
        "class": [classes[i][j] for i, j in pairs],
        "class_name": [_class_name(class_names, classes[i][j]) for i, j in pairs],
        "probability": [float(probs[i, classes[i][j]]) for i, j in pairs],
        "seconds_per_image": [res.seconds / n] * len(pairs), "evaluations_per_image": [res.evaluations / n] * len(pairs),
    }


PNG_MODES = ("none", "grid", "all")


def png_mode(png: bool | str) -> str:
    """``"none"``, ``"grid"`` or ``"all"`` from a mode or a bool (``True`` is ``"all"``)."""
    if isinstance(png, bool):
        return "all" if png else "none"
    if png not in PNG_MODES:
        raise InputError(f"png must be one of {', '.join(PNG_MODES)}, got {png!r}")
    return png


def write_overlays(
    run: Run,
    results: dict[str, Explanation],
    display: Tensor,
    names: Sequence[str],
    class_names: Sequence[str] | None,
    per_method: bool = False,
) -> None:
    """One grid PNG (methods x targets) per image; with ``per_method`` also one PNG per
    (image, method) with a row per target. Drawn with numpy and PIL (:mod:`xailab.drawing`)."""
    from tqdm.auto import tqdm

    from xailab.drawing import grid_png, overlay_png
    from xailab.plotting import target_title
    from xailab.runs.store import atomic_write_bytes

    if not results:
        return
    first = next(iter(results.values()))
    probs = first.probabilities.detach().cpu().numpy()
    classes = first.targets.tolist()
    pixel = {m: res.pixel_maps().float().numpy() for m, res in results.items()}
    shown = (display.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    for i in tqdm(range(len(first)), desc="overlays", unit="img"):
        titles = [target_title(name, _class_name(class_names, int(classes[i][j])), float(probs[i, classes[i][j]]))
                  for j, name in enumerate(first.target_names)]
        grid = {m: list(maps[i]) for m, maps in pixel.items()}
        if per_method:
            for m, maps_i in grid.items():
                png = overlay_png(shown[i], maps_i, titles, suptitle=f"{names[i]} — {m}")
                atomic_write_bytes(run.file(f"overlays/{i:05d}_{m}.png"), png)
        atomic_write_bytes(run.file(f"overlays/{i:05d}_grid.png"), grid_png(shown[i], grid, titles, suptitle=str(names[i]),
                                                                               classes=classes[i]))
