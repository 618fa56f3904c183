"""What the backdoor detectors look at: a class's activations, its explanation maps, and where
a group of maps relies on something the rest does not.

* :func:`penultimate`: the activations of the penultimate dense layer (activation clustering,
  spectral signatures, SCAn read them);
* :func:`explain_class` and :func:`map_features`: a class's explanation maps (LRP by default),
  scaled to unit sum and downsampled, SpRAy's features (Lapuschkin et al. 2019, arXiv:1902.10178);
* :func:`relied_region`: the bounding box of the connected area around the largest excess of
  the suspected items' mean map over the rest's, where the excess is at least 0.3 times the
  largest.

The detectors are in :mod:`xailab.audit.classic` (SpRAy, activation clustering),
:mod:`xailab.audit.spectral` and :mod:`xailab.audit.scan`; the verdict in :mod:`xailab.audit.verdict`.

    acts = penultimate(model, x)                   # [n, d]
    full, feats = map_features(explain_class(model, x, 7, "lrp", {}, 128, 0))
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.hooks import HookScope, model_session


# -- features -----------------------------------------------------------------------------------------
def last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("activation clustering needs the model's last nn.Linear layer; this model has none "
                         "(pass layer= the name of the penultimate layer)")
    return linears[-1]


def penultimate_layer(model: nn.Module) -> str | None:
    """The layer whose output activation clustering uses by default: the dense layer before the
    last ``nn.Linear`` (its pre-activation output), or None (= the last linear layer's input)
    when the classifier has a single linear layer."""
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-2] if len(linears) >= 2 else None


@torch.no_grad()
def penultimate(model: nn.Module, x: Tensor, *, layer: str | None = "auto", batch_size: int = 256) -> Tensor:
    """``[n, d]`` activations, flattened: the output of ``layer``; ``"auto"``: of
    :func:`penultimate_layer`; None (or no such layer): the input of the last ``nn.Linear``."""
    from xailab.core.hooks import model_device, resolve_layer

    if layer == "auto":
        layer = penultimate_layer(model)
    seen: list[Tensor] = []
    module = resolve_layer(model, layer)[1] if layer else last_linear(model)

    def pre(mod: nn.Module, inputs: Any) -> None:
        seen.append(inputs[0].detach().flatten(1).cpu())

    def post(mod: nn.Module, inputs: Any, output: Any) -> None:
        out = output[0] if isinstance(output, (tuple, list)) else output
        seen.append(out.detach().flatten(1).cpu())

    dev = model_device(model)
    with model_session(model), HookScope() as hooks:
        hooks.add(module.register_forward_hook(post) if layer else module.register_forward_pre_hook(pre))
        for lo in range(0, len(x), batch_size):
            model(x[lo : lo + batch_size].to(dev))
    return torch.cat(seen)


def explain_class(model: nn.Module, x: Tensor, label: int, method: str, params: dict[str, Any],
                  batch_size: int, seed: int) -> Tensor:
    """Pixel maps ``[n, H, W]`` of ``method`` for class ``label`` on normalised images ``x``."""
    import xailab

    explainer = xailab.create(method, model, batch_size=batch_size, seed=seed, **params)
    return explainer.explain(x, target=label).pixel_maps()[:, 0].float()


def map_features(maps: Tensor, *, mode: str = "positive", downsample: int = 2) -> tuple[Tensor, Tensor]:
    """``(full-resolution maps, flattened features)``: sign handled, each map scaled to unit sum,
    then average-pooled by ``downsample`` for the clustering (SpRAy's downsized heatmaps)."""
    if mode == "positive":
        a = maps.clamp_min(0)
    elif mode == "abs":
        a = maps.abs()
    else:
        raise InputError(f"map mode must be 'positive' or 'abs', not {mode!r}")
    a = a / a.flatten(1).sum(dim=1).clamp_min(1e-12)[:, None, None]
    small = F.avg_pool2d(a[:, None], downsample)[:, 0] if downsample > 1 else a
    return a, small.flatten(1)


def relied_region(mean_small: Tensor, mean_rest: Tensor, level: float = 0.3) -> tuple[tuple[int, int, int, int] | None, float]:
    """Where the suspicious cluster looks and the rest does not.

    ``d = mean_small - mean_rest``; the region is the bounding box (top, left, bottom, right;
    inclusive) of the connected area (8-neighbourhood) around the largest ``d`` where ``d`` is at
    least ``level`` times that largest value. Returns it and the share of ``mean_small``'s
    relevance inside it; ``(None, nan)`` when the small cluster relies on nothing more than the
    rest does. (Relevance inside a trigger is uneven, LRP favours its edges, hence a level well
    below one half.)
    """
    from scipy import ndimage

    diff = (mean_small - mean_rest).double().cpu().numpy()
    peak = float(diff.max())
    if peak <= 0:
        return None, float("nan")
    labels, _ = ndimage.label(diff >= level * peak, structure=np.ones((3, 3)))
    ys, xs = np.nonzero(labels == labels[np.unravel_index(int(diff.argmax()), diff.shape)])
    box = (int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max()))
    inside = mean_small[box[0] : box[2] + 1, box[1] : box[3] + 1].sum()
    return box, float(inside / mean_small.sum().clamp_min(1e-12))


def class_indices(labels: Tensor, label: int, max_items: int | None, seed: int) -> np.ndarray:
    idx = torch.nonzero(labels == label).flatten()
    if max_items is not None and len(idx) > max_items:
        g = torch.Generator().manual_seed(seed * 1_000_003 + label)
        idx = idx[torch.randperm(len(idx), generator=g)[:max_items]].sort().values
    return idx.numpy()


def dataset_items(dataset: Any, idx: np.ndarray) -> Tensor:
    """The inputs of items ``idx`` of ``dataset`` (its ``get_batch`` without augmentation when it has one)."""
    get_batch = getattr(dataset, "get_batch", None)
    if callable(get_batch):
        try:
            return get_batch(idx, augment=False)[0]
        except TypeError:
            return get_batch(idx)[0]
    return torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in idx])
