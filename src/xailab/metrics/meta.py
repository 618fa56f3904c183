"""Checks of the metrics themselves, after MetaQuantus (Hedström et al. 2023, "The meta-evaluation
problem in explainable AI", TMLR, arXiv:2302.07265): which scores deserve weight?

A useful metric is *resilient* to noise that should not matter and *reactive* to a change that
should. Three perturbations, each scored by the metric on the same images:

* noise: each map plus Gaussian noise of ``noise`` times its own standard deviation. Reported:
  ``noise_spearman``, the Spearman correlation over images of the clean and noisy scores (1: the
  metric orders the images the same way), and ``noise_change``, the mean absolute change of the
  score in units of its spread over images (small is resilient);
* shuffled maps: each map's pixels permuted at random (same values, no spatial sense). Reported:
  ``shuffle_effect``, the mean change of the score in its *worse* direction in units of the
  spread of the per-image changes (a paired effect size; large and positive is reactive), and
  ``shuffle_p``, the paired sign-flip test's p-value;
* randomised model (optional): maps explained on a model whose weights were randomised, scored
  on the real model; ``model_effect`` and ``model_p`` as for shuffling.

``verdict`` reads: ``resilient`` when ``noise_spearman >= 0.5``, ``reactive`` when every
reactivity test given has ``p < alpha`` with a positive effect.

    rows = metric_checks({"deletion": lambda a: deletion(model, x, a, y).auc}, maps,
                         directions={"deletion": "lower"})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from xailab.core.errors import InputError
from xailab.metrics.maps import rankdata, row_pearson
from xailab.metrics.stats import paired_test

Score = Callable[[Tensor], Tensor]


def noisy_maps(maps: Tensor, scale: float, seed: int = 0) -> Tensor:
    """``maps [N, H, W]`` plus Gaussian noise of ``scale`` times each map's standard deviation."""
    g = torch.Generator().manual_seed(seed)
    sd = maps.flatten(1).double().std(1).view(-1, 1, 1)
    return (maps.double() + scale * sd * torch.randn(maps.shape, generator=g, dtype=torch.float64)).to(maps.dtype)


def shuffled_maps(maps: Tensor, seed: int = 0) -> Tensor:
    """Each map's pixels in a random order (image ``i`` uses generator ``seed * 1_000_003 + i``)."""
    flat = maps.flatten(1)
    out = torch.empty_like(flat)
    for i in range(len(flat)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        out[i] = flat[i, torch.randperm(flat.shape[1], generator=g)]
    return out.view_as(maps)


def _effect(clean: np.ndarray, changed: np.ndarray, direction: str) -> tuple[float, float]:
    d = changed - clean if direction == "lower" else clean - changed  # > 0: the score got worse
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return float("nan"), float("nan")
    sd = float(d.std(ddof=1))
    effect = float(d.mean()) / sd if sd > 0 else (float("inf") * np.sign(d.mean()) if d.mean() else 0.0)
    return effect, paired_test(clean, changed)


def metric_checks(
    scores: Mapping[str, Score], maps: Tensor, *, directions: Mapping[str, str],
    randomised: Tensor | None = None, noise: float = 0.1, alpha: float = 0.05, seed: int = 0,
    clean: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """One row per metric (module docstring). ``scores[name](maps [N, H, W]) -> [N]`` scores the
    maps on fixed images and model; ``randomised`` are the maps of a randomised model;
    ``clean[name]``, when given, are ``scores[name](maps)`` already computed (not scored again)."""
    if maps.dim() != 3:
        raise InputError(f"maps must be [N, H, W], got {tuple(maps.shape)}")
    variants = {"noise": noisy_maps(maps, noise, seed), "shuffle": shuffled_maps(maps, seed)}
    if randomised is not None:
        variants["model"] = randomised
    rows = []
    for name, fn in scores.items():
        way = directions.get(name)
        if way not in ("lower", "higher"):
            raise InputError(f"metric {name} needs a direction 'lower' or 'higher', got {way!r}")
        given = clean is not None and name in clean
        base = np.asarray(clean[name], dtype=np.float64) if given else fn(maps).double().cpu().numpy()  # type: ignore[index]
        out = {v: fn(m).double().cpu().numpy() for v, m in variants.items()}
        spread = float(np.nanstd(base)) or 1.0
        ok = np.isfinite(base) & np.isfinite(out["noise"])
        rho = float(row_pearson(rankdata(torch.tensor(base[ok])[None]), rankdata(torch.tensor(out["noise"][ok])[None]))[0])
        row: dict[str, Any] = {"metric": name, "direction": way, "noise_spearman": rho,
               "noise_change": float(np.nanmean(np.abs(out["noise"] - base))) / spread}
        for v in [k for k in variants if k != "noise"]:
            row[f"{v}_effect"], row[f"{v}_p"] = _effect(base, out[v], way)
        reactive = all(row[f"{v}_p"] < alpha and row[f"{v}_effect"] > 0 for v in variants if v != "noise")
        row["verdict"] = ", ".join([("resilient" if rho >= 0.5 else "not resilient to noise"),
                                    ("reactive" if reactive else "not reactive")])
        rows.append(row)
    return pd.DataFrame(rows)
