"""The optional parts of ``compare``: ROAD and infidelity per image, and checks of the metrics.

:func:`extra_part` scores every method's maps with the metrics named in
``CompareSettings.extra_metrics`` (``"road"``: :func:`~xailab.metrics.road.road`, column
``road_auc``; ``"infidelity"``: :func:`~xailab.metrics.infidelity.infidelity` with each map
rescaled by its best-fitting factor, so that maps on other scales compare, column ``infidelity``;
``"irof"``: :func:`~xailab.metrics.irof.irof` on the same superpixels for every method, column
``irof``, not by default: about 100 model evaluations per image) and writes table ``faithfulness_extra`` (one row per image and method, one part
per method, skipped on a rerun with the same settings and maps).

:func:`checks_part` runs the MetaQuantus-style checks of :mod:`xailab.metrics.meta` on the
reference method's maps of the first ``check_images`` images, for every per-image metric of the
scoreboard (deletion, insertion and the extra metrics): resilience to noise in the maps, and
reactivity to shuffled maps and to maps of a randomised model. Table ``metric_checks``.

    extra = extra_part(run, model, x, expl, maps, cols, names, settings, print)
    checks = checks_part(run, model, x, expl, maps, cols, "gradcam", settings, print)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.metrics.compare_parts import accepted_params, explanation_key, mark_done, parts_done
from xailab.metrics.faithfulness import deletion, insertion
from xailab.metrics.infidelity import InfidelityDrops, infidelity, infidelity_drops
from xailab.metrics.info import info_of
from xailab.metrics.irof import irof, superpixels
from xailab.metrics.maps import maps_for_images
from xailab.metrics.meta import metric_checks
from xailab.metrics.road import road
from xailab.runs.store import Run

if TYPE_CHECKING:
    from xailab.metrics.scoreboard import CompareSettings

#: the extra metrics ``compare`` can add, by option name -> scoreboard column
EXTRA_METRICS = {"road": "road_auc", "infidelity": "infidelity", "irof": "irof"}
Log = Callable[[str], None]
#: changes when what the parts compute changes (2: infidelity normalised), so older parts are redone
VERSION = 2


def check_extra(names: tuple[str, ...]) -> None:
    """Refuse an unknown extra metric name with the known ones."""
    bad = [n for n in names if n not in EXTRA_METRICS]
    if bad:
        raise InputError(f"unknown metric {', '.join(bad)}; choose from {', '.join(EXTRA_METRICS)}")


def road_percentages(steps: int) -> list[float]:
    """``steps`` removal levels at the centres of equal bins of [0, 100] (10 steps: 5, 15, ..., 95)."""
    if steps < 1:
        raise InputError(f"ROAD needs at least one step, got {steps}")
    return [100.0 * (k + 0.5) / steps for k in range(steps)]


def infidelity_patch(cfg: CompareSettings, images: Tensor) -> int:
    """The patch side infidelity fills: ``cfg.infidelity_patch``, or with 0 an eighth of the
    longer image side (64 perturbations per image whatever its size)."""
    return cfg.infidelity_patch or max(1, math.ceil(max(images.shape[-2:]) / 8))


def scorers(model: nn.Module, x: Tensor, t: Tensor, cfg: CompareSettings,
            drops: dict[tuple[int, ...], InfidelityDrops] | None = None) -> dict[str, Callable[[Tensor], Tensor]]:
    """Per-image score functions ``maps [N, H, W] -> [N]`` of the scoreboard's per-image metrics.

    Infidelity's model evaluations do not depend on the map: they are made once per set of
    targets and kept in ``drops`` (pass the same dict for every method of a run)."""
    kw: dict[str, Any] = {"batch_size": cfg.batch_size}
    cache = {} if drops is None else drops
    out: dict[str, Callable[[Tensor], Tensor]] = {
        "deletion_auc": lambda a: deletion(model, x, a, t, steps=cfg.steps, fill=cfg.deletion_fill, **kw).auc,
        "insertion_auc": lambda a: insertion(model, x, a, t, steps=cfg.steps, fill=cfg.insertion_fill, **kw).auc,
    }
    if "road" in cfg.extra_metrics:
        out["road_auc"] = lambda a: road(model, x, a, t, percentages=road_percentages(cfg.road_steps),
                                         noise=cfg.road_noise, seed=cfg.seed, **kw).auc
    if "irof" in cfg.extra_metrics:
        seg = superpixels(x)  # the same segments for every map scored
        out["irof"] = lambda a: irof(model, x, a, t, segments=seg, **kw)
    if "infidelity" in cfg.extra_metrics:
        patch = infidelity_patch(cfg, x)

        def infid(a: Tensor) -> Tensor:
            key = tuple(t.tolist())
            if key not in cache:
                cache[key] = infidelity_drops(model, x, t, patch=patch, **kw)
            return infidelity(model, x, a, t, patch=patch, normalise=True, drops=cache[key])
        out["infidelity"] = infid
    return out


DIRECTIONS = {"deletion_auc": info_of(deletion).direction, "insertion_auc": info_of(insertion).direction,
              "road_auc": info_of(road).direction, "infidelity": info_of(infidelity).direction,
              "irof": info_of(irof).direction}


def extra_part(run: Run, model: nn.Module, x: Tensor, expl: dict[str, Explanation], maps: dict[str, Tensor],
               cols: dict[str, int], names: list[str], cfg: CompareSettings, log: Log,
               drops: dict[tuple[int, ...], InfidelityDrops] | None = None) -> pd.DataFrame | None:
    """Table ``faithfulness_extra`` for the methods of ``expl`` (module docstring); ``None``
    when no extra metric is asked for. Infidelity's drops are kept in ``drops`` (by targets)."""
    check_extra(cfg.extra_metrics)
    if not cfg.extra_metrics:
        return None
    spec = cfg.spec("extra_metrics", "road_steps", "road_noise", "infidelity_patch", "batch_size", "target", "seed")
    done = parts_done(run)
    drops = {} if drops is None else drops
    for m in expl:
        mspec = f"{spec}:v{VERSION}:{explanation_key(run, m)}"
        if run.has_part("faithfulness_extra", m) and done.get(f"faithfulness_extra/{m}") == mspec:
            log(f"{m}: {', '.join(cfg.extra_metrics)} already in the run, skipped")
            continue
        t = expl[m].targets[:, cols[m]].to(x.device)
        fns = scorers(model, x, t, cfg, drops)
        table = pd.DataFrame({"image": np.arange(len(x)), "name": names, "method": m})
        for opt in cfg.extra_metrics:
            col = EXTRA_METRICS[opt]
            table[col] = fns[col](maps[m]).double().cpu().numpy()
        run.write_table("faithfulness_extra", table, part=m)
        mark_done(run, f"faithfulness_extra/{m}", mspec)
        log(f"{m}: " + ", ".join(f"{EXTRA_METRICS[o]} {float(np.nanmean(table[EXTRA_METRICS[o]])):.4g}"
                                 for o in cfg.extra_metrics))
    extra = run.read_table("faithfulness_extra")
    return extra[extra["method"].isin(list(expl))]


def randomised_maps(model: nn.Module, x: Tensor, res: Explanation, t: Tensor, seed: int) -> Tensor | None:
    """Maps of ``res``'s method on a copy of ``model`` with every layer's weights randomised
    (``None`` when the method is not registered and cannot be re-explained)."""
    from xailab.core.registry import METHODS, create
    from xailab.metrics.sanity import randomisable_layers, randomise_layer

    if res.method not in METHODS.available():
        return None
    work = copy.deepcopy(model)
    modules = dict(work.named_modules())
    for k, name in enumerate(randomisable_layers(work)):
        randomise_layer(modules[name], seed * 1_009 + k)
    params = accepted_params(res.method, dict(res.params))
    out = create(res.method, work, **params).explain(x, target=t)
    return out.pixel_maps()[:, 0].float()


def checks_part(run: Run, model: nn.Module, x: Tensor, expl: dict[str, Explanation], maps: dict[str, Tensor],
                cols: dict[str, int], ref: str, cfg: CompareSettings, log: Log, *, faith: pd.DataFrame | None = None,
                drops: dict[tuple[int, ...], InfidelityDrops] | None = None) -> pd.DataFrame | None:
    """Table ``metric_checks`` (module docstring) on the maps of method ``ref``; ``None`` when
    ``cfg.metric_checks`` is off. ``faith``: the run's per-image scores (table ``faithfulness``
    merged with ``faithfulness_extra``), whose columns of ``ref`` are the clean scores (not
    computed again); ``drops``: :func:`extra_part`'s infidelity drops of all images (reused)."""
    if not cfg.metric_checks:
        return None
    spec = cfg.spec("extra_metrics", "road_steps", "road_noise", "infidelity_patch", "steps", "deletion_fill",
                    "insertion_fill", "check_images", "batch_size", "target", "seed")
    mspec = f"{spec}:v{VERSION}:{ref}:{explanation_key(run, ref)}"
    if run.has_part("metric_checks", "all") and parts_done(run).get("metric_checks") == mspec:
        log("metric checks already in the run, skipped")
        return run.read_table("metric_checks")
    k = min(len(x), cfg.check_images)
    xk = x[:k]
    t = expl[ref].targets[:k, cols[ref]].to(x.device)
    a = maps_for_images(maps[ref][:k], xk, mode="signed").float().cpu()
    try:
        rand = randomised_maps(model, xk, expl[ref], t, cfg.seed)
    except Exception as e:  # the checks stand without the randomised-model test
        log(f"metric checks: {ref} could not be re-explained on a randomised model ({type(e).__name__}: {e})")
        rand = None
    fns = scorers(model, xk, t, cfg, _first_drops(drops or {}, tuple(t.tolist())))
    with torch.random.fork_rng():
        table = metric_checks(fns, a, directions={c: DIRECTIONS[c] for c in fns},
                              randomised=None if rand is None else maps_for_images(rand, xk, mode="signed").cpu(),
                              seed=cfg.seed, clean=_clean_scores(faith, ref, k, list(fns)))
    table.insert(1, "method", ref)
    table.insert(2, "images", k)
    run.write_table("metric_checks", table, part="all")
    mark_done(run, "metric_checks", mspec)
    for rec in table.to_dict("records"):
        log(f"metric check {rec['metric']}: {rec['verdict']}")
    return table


def _first_drops(drops: dict[tuple[int, ...], InfidelityDrops], key: tuple[int, ...]
                 ) -> dict[tuple[int, ...], InfidelityDrops]:
    """The infidelity drops of the first ``len(key)`` images, cut from drops of more images with
    the same first targets (each image's drops depend on that image and its target only)."""
    k = len(key)
    for full, d in drops.items():
        if full[:k] == key:
            return {key: InfidelityDrops(d.drops[:k], d.images[:k], d.filled[:k], d.targets[:k], d.patch, d.output)}
    return {}


def _clean_scores(faith: pd.DataFrame | None, ref: str, k: int, columns: list[str]) -> dict[str, np.ndarray]:
    """Columns of ``faith`` for method ``ref``'s first ``k`` images (those it has for all of them)."""
    if faith is None:
        return {}
    rows = faith[(faith["method"] == ref) & (faith["image"] < k)].sort_values("image")
    if len(rows) != k or not np.array_equal(rows["image"].to_numpy(), np.arange(k)):
        return {}
    return {c: rows[c].to_numpy(dtype=np.float64) for c in columns if c in rows and rows[c].notna().all()}
