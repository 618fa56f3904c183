"""Sanity check by model-parameter randomisation (Adebayo et al. 2018, "Sanity checks for
saliency maps", NeurIPS, arXiv:1810.03292).

An explanation of a model's decision must depend on the model. The cascading test re-initialises
the model's layers one after another from the top (logits) down and re-explains the same images
for the same classes after each step. If the maps stay alike after the whole network has been
randomised, the method shows the image (edges, texture), not what the model learnt: it is
*flagged*. Similarity to the original map is measured per image as

* the Spearman rank correlation of the absolute maps, and
* the SSIM of the max-normalised absolute maps,

and the verdict reads the mean Spearman after the last step: ``>= threshold`` (default 0.5) is
flagged. Each step also records the Spearman of the new map with the input's magnitude
(``|x|`` summed over channels): a flagged method whose randomised maps still follow the input is
*input-dominated* (e.g. input x gradient or IG on images with black backgrounds, where the map is
zero wherever the input is, whatever the weights). The test runs on a deep copy; the user's model is never modified. Each layer is
re-initialised with its own ``reset_parameters()`` under ``torch.manual_seed(seed)`` (the global
random state is restored afterwards), as Quantus's MPRT does.

    res = randomisation_test(model, images, "saliency")            # or any explain(model, x, t)
    res.table()          # one row per step: layer, mean Spearman, mean SSIM
    res.flagged          # True when the maps do not depend on the model
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_device
from xailab.metrics.info import metric
from xailab.metrics.maps import (
    ExplainFn,
    check_images,
    nanmean,
    nanstd,
    pixel_maps,
    rankdata,
    resize,
    resolve_target,
    row_pearson,
)
from xailab.metrics.ssim import structural_similarity


@dataclass(frozen=True)
class SanityResult:
    """Similarity of the maps of a progressively randomised model to the original maps.

    Attributes:
        method: name of the method tested.
        layers: the layers randomised, in order; step ``k`` has ``layers[:k + 1]`` randomised
            (cascading) or only ``layers[k]`` (independent).
        steps: the step indices at which the method was re-explained.
        spearman: ``[len(steps), N]`` Spearman of the absolute maps, per image.
        ssim: ``[len(steps), N]`` SSIM of the max-normalised absolute maps, per image.
        threshold: the verdict's threshold on the last step's mean Spearman.
        input_spearman: ``[len(steps), N]`` Spearman of each step's map with ``|input|``.
    """

    method: str
    layers: list[str]
    steps: list[int]
    spearman: Tensor
    ssim: Tensor
    threshold: float
    cascading: bool = True
    original: Tensor = field(default_factory=lambda: torch.empty(0), repr=False)
    input_spearman: Tensor = field(default_factory=lambda: torch.empty(0, 0), repr=False)

    @property
    def final_spearman(self) -> float:
        """Mean Spearman after the last step (the fully randomised model when cascading)."""
        return float(nanmean(self.spearman[-1].numpy())) if len(self.steps) else float("nan")

    @property
    def final_ssim(self) -> float:
        return float(nanmean(self.ssim[-1].numpy())) if len(self.steps) else float("nan")

    @property
    def flagged(self) -> bool:
        """True when the maps hardly change although the model was randomised."""
        return bool(self.final_spearman >= self.threshold)

    @property
    def verdict(self) -> str:
        return "flagged" if self.flagged else "passed"

    @property
    def final_input_spearman(self) -> float:
        """Mean Spearman of the last step's maps with the input's magnitude."""
        if not len(self.steps) or self.input_spearman.numel() == 0:
            return float("nan")
        return float(nanmean(self.input_spearman[-1].numpy()))

    def table(self) -> pd.DataFrame:
        """One row per re-explained step: ``step, layer, spearman, spearman_std, ssim, ssim_std,
        input_spearman``."""
        sp, ss = self.spearman.numpy(), self.ssim.numpy()
        inp = (nanmean(self.input_spearman.numpy(), axis=1) if self.input_spearman.numel()
               else np.full(len(self.steps), np.nan))
        return pd.DataFrame({
            "method": self.method,
            "step": self.steps,
            "layer": [self.layers[k] for k in self.steps],
            "spearman": nanmean(sp, axis=1),
            "spearman_std": nanstd(sp, axis=1),
            "ssim": nanmean(ss, axis=1),
            "ssim_std": nanstd(ss, axis=1),
            "input_spearman": inp,
        })


def randomisable_layers(model: nn.Module) -> list[str]:
    """Names of the modules holding parameters of their own, from the output back to the input
    (definition order reversed: the cascading order)."""
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def randomise_layer(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s own parameters under ``seed`` (``reset_parameters()`` when it
    has one, else a normal draw of each parameter's own scale); the global RNG is restored."""
    devices = [p.device.index or 0 for p in module.parameters(recurse=False) if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for p in module.parameters(recurse=False):
            std = float(p.std()) if p.numel() > 1 else 0.0
            p.normal_(0.0, std if std > 0 else 0.01)


def explain_fn(method: str | ExplainFn, params: dict[str, Any] | None = None) -> tuple[str, ExplainFn]:
    """``(name, explain(model, images, targets) -> maps)`` for a registered method name (built
    with ``params``) or an explain function (returned as it is)."""
    if callable(method):
        return getattr(method, "__name__", "custom"), method
    from xailab.core.registry import create

    kwargs = dict(params or {})

    def run(model: nn.Module, x: Tensor, t: Tensor) -> Explanation:
        return create(method, model, **kwargs).explain(x, target=t)

    return method, run


def _abs_maps(out: Tensor | Explanation, n: int, size: tuple[int, int], who: str) -> Tensor:
    a = pixel_maps(out, name=f"maps of {who}")
    if len(a) != n:
        raise InputError(f"{who} returned {len(a)} maps for {n} images")
    return resize(a.detach().double(), size).abs().cpu()


def _similarity(orig: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    sp = row_pearson(rankdata(orig.flatten(1)), rankdata(new.flatten(1)))
    no = orig / orig.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
    nn_ = new / new.flatten(1).amax(1).clamp_min(1e-300)[:, None, None]
    win = min(7, *orig.shape[-2:])
    win = win if win % 2 else win - 1
    ss = structural_similarity(no, nn_, 1.0, win_size=win) if win >= 3 else torch.full((len(orig),), float("nan"))
    return sp, ss


def _plan(work: nn.Module, modules: dict[str, nn.Module], layers: Sequence[str] | None,
          max_steps: int | None) -> tuple[list[str], list[int]]:
    """The layers to randomise, in order, and the steps (indices into them) that re-explain."""
    order = list(layers) if layers is not None else randomisable_layers(work)
    for n in order:
        if n not in modules or not n:
            from xailab.core.hooks import resolve_layer

            resolve_layer(work, n)  # raises with the closest names
    if not order:
        raise InputError("the model has no layer with parameters to randomise")
    steps = list(range(len(order)))
    if max_steps is not None and max_steps < len(order):
        if max_steps < 1:
            raise InputError(f"max_steps must be >= 1, got {max_steps}")
        last = len(order) - 1  # always the last step; the first too when there is room
        steps = [last] if max_steps == 1 else sorted({round(i * last / (max_steps - 1)) for i in range(max_steps)})
    return order, steps


@metric(
    direction="lower", category="randomisation", low=-1.0, high=1.0,
    summary="Spearman of the maps before and after randomising every layer (the maps should change)",
)
def randomisation_test(
    model: nn.Module,
    images: Tensor,
    method: str | ExplainFn,
    target: Tensor | int | str | None = None,
    *,
    layers: Sequence[str] | None = None,
    cascading: bool = True,
    max_steps: int | None = None,
    seed: int = 43,
    threshold: float = 0.5,
    method_params: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SanityResult:
    """Cascading (or independent) model-parameter randomisation test (see the module docstring).

    Args:
        method: a registered method name (built with ``method_params`` on each randomised copy)
            or ``explain(model, images, targets [N]) -> maps``.
        target: classes to explain, kept fixed across steps (default: the model's top class).
        layers: the layers to randomise, in order (default: every module with parameters, from
            the output to the input).
        cascading: randomise layers cumulatively (default) or one at a time.
        max_steps: re-explain only at this many evenly spaced steps (always including the last),
            to bound the cost on deep models; every layer is still randomised in a cascade.
        seed: seed of the re-initialisation of every layer (default 43: Quantus's default,
            ``seed=42`` plus one; not 0, which would redraw the first layer of a model built
            right after ``torch.manual_seed(0)`` identically).
        threshold: flag the method when the last step's mean Spearman is at least this.
    """
    name, explain = explain_fn(method, method_params)
    x = check_images(images).to(model_device(model))
    work = copy.deepcopy(model)
    t = resolve_target(work, x, target)
    modules = dict(work.named_modules())
    order, steps = _plan(work, modules, layers, max_steps)

    size = (int(x.shape[-2]), int(x.shape[-1]))
    original = _abs_maps(explain(work, x, t), len(x), size, name)
    magnitude = rankdata(x.detach().double().abs().sum(1).cpu().flatten(1))
    pristine = copy.deepcopy(work.state_dict()) if not cascading else None
    sps, sss, inps = [], [], []
    for k, layer in enumerate(order):
        if pristine is not None:
            work.load_state_dict(pristine)
        randomise_layer(modules[layer], seed)
        if k not in steps:
            continue
        if progress is not None:
            progress(f"{name}: randomised up to {layer} ({k + 1}/{len(order)})")
        new = _abs_maps(explain(work, x, t), len(x), size, name)
        sp, ss = _similarity(original, new)
        sps.append(sp)
        sss.append(ss)
        inps.append(row_pearson(rankdata(new.flatten(1)), magnitude))
    return SanityResult(
        method=name, layers=order, steps=steps, spearman=torch.stack(sps), ssim=torch.stack(sss),
        threshold=threshold, cascading=cascading, original=original,
        input_spearman=torch.stack(inps),
    )
