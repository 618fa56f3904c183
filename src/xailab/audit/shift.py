"""How an attack moves the explanations: clean and attacked images explained side by side.

For every method and target, both images are explained and compared with the measures of
:mod:`xailab.metrics`:

* ``iou``: IoU of the top ``top`` share of pixels of the two maps (:func:`xailab.metrics.iou`);
* ``spearman``: rank correlation of the two maps (:func:`xailab.metrics.spearman`);
* ``mass_clean``, ``mass_adv``: share of the positive relevance inside the changed region (the
  patch), :func:`xailab.metrics.relevance_mass`; ``area`` is the region's share of the image,
  the mass a map blind to the patch would put there. Only for attacks with a region (patches).

Targets (which class each map explains):

* ``"top1"``: each image's own prediction (the clean one on the clean image, the adversarial one
  on the attacked image): *why did the model say what it said*;
* ``"true"``: the label on both; ``"clean"``: the clean prediction on both; ``"adversarial"``:
  the adversarial prediction on both; ``"target"``: the target of a targeted attack on both.

    shift = explanation_shift(model, result, ["saliency", "integrated_gradients"], targets=["top1"])
    shift.table                # image, method, target, classes, iou, spearman, mass_clean, mass_adv, area
    shift.summary()            # means per method and target
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.audit.pixel import resolve_preprocessing
from xailab.audit.result import AttackResult
from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.data.transforms import Preprocessing

SHIFT_TARGETS = ("top1", "true", "clean", "adversarial", "target")


@dataclass
class ShiftResult:
    """How explanations move under an attack: per image, method and target, and the maps on both sides."""

    table: pd.DataFrame
    clean: dict[str, Explanation]        # method -> explanation of the clean images [N, T, ...]
    adversarial: dict[str, Explanation]  # method -> explanation of the attacked images
    targets: list[str]

    def summary(self) -> pd.DataFrame:
        """Mean of every measure per method and target (NaN-skipping)."""
        cols = [c for c in ("iou", "spearman", "mass_clean", "mass_adv", "area") if c in self.table]
        return self.table.groupby(["method", "target"], sort=False)[cols].mean().reset_index()


def _target_columns(result: AttackResult, targets: Sequence[str]) -> tuple[Tensor, Tensor]:
    clean_cols, adv_cols = [], []
    for t in targets:
        if t == "top1":
            c, a = result.clean_pred, result.adv_pred
        elif t == "true":
            c = a = result.labels
        elif t == "clean":
            c = a = result.clean_pred
        elif t == "adversarial":
            c = a = result.adv_pred
        elif t == "target":
            if result.target is None:
                raise InputError("target 'target' needs a targeted attack")
            c = a = result.target
        else:
            raise InputError(f"unknown explanation target {t!r}; choose from {', '.join(SHIFT_TARGETS)}")
        clean_cols.append(c)
        adv_cols.append(a)
    return torch.stack(clean_cols, dim=1), torch.stack(adv_cols, dim=1)


def explanation_shift(
    model: nn.Module,
    result: AttackResult,
    methods: Sequence[str] | Mapping[str, Mapping[str, Any]] = ("saliency",),
    *,
    targets: Sequence[str] = ("top1",),
    preprocessing: Preprocessing | str | None = "model",
    top: float = 0.1,
    batch_size: int = 64,
    seed: int = 0,
) -> ShiftResult:
    """Explain ``result``'s clean and attacked images with ``methods`` (names, or name -> params)
    and measure the change (see the module docstring). The explainers see the images as the model
    does (normalised by ``preprocessing``, default the model's)."""
    import xailab
    from xailab.metrics import iou, relevance_mass, spearman

    prep = resolve_preprocessing(model, preprocessing)
    specs = {m: {} for m in methods} if not isinstance(methods, Mapping) else {k: dict(v) for k, v in methods.items()}
    if not specs:
        raise InputError("no explanation method given")
    targets = list(targets)
    tc, ta = _target_columns(result, targets)
    dev = next((p.device for p in model.parameters()), torch.device("cpu"))

    def norm(x: Tensor) -> Tensor:
        return (prep.normalize(x) if prep is not None else x).to(dev)

    xc, xa = norm(result.clean), norm(result.adversarial)
    area = result.mask.flatten(1).double().mean(dim=1) if result.mask is not None else None
    frames, clean_ex, adv_ex = [], {}, {}
    for name, params in specs.items():
        explainer = xailab.create(name, model, batch_size=batch_size, seed=seed, **params)
        ec = explainer.explain(xc, target=tc)
        ea = explainer.explain(xa, target=ta)
        clean_ex[name], adv_ex[name] = ec, ea
        for j, t in enumerate(targets):
            cols: dict[str, Any] = {
                "image": np.arange(len(result)), "method": name, "target": t,
                "class_clean": tc[:, j].numpy(), "class_adv": ta[:, j].numpy(),
                "iou": iou(ec, ea, top=top, target=j).numpy(),
                "spearman": spearman(ec, ea, target=j).numpy(),
            }
            if result.mask is not None and area is not None:
                cols["mass_clean"] = relevance_mass(ec, result.mask, target=j).numpy()
                cols["mass_adv"] = relevance_mass(ea, result.mask, target=j).numpy()
                cols["area"] = area.numpy()
            frames.append(pd.DataFrame(cols))
    return ShiftResult(pd.concat(frames, ignore_index=True), clean_ex, adv_ex, targets)
