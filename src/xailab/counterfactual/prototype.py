"""Prototype counterfactuals and plausibility: training images in the model's feature space.

The feature space is the input of the model's last ``nn.Linear`` (the penultimate layer: what
the classifier head reads), or any layer named. A :class:`Reference` holds the features of a
set of training images with their labels and the model's predictions.

* :func:`prototype_counterfactuals`: for each image, its nearest reference images of the target
  class that the model also puts in that class (the first one is the counterfactual: "the
  closest T-shirts look like this"), and its nearest images of its own predicted class (Looveren
  & Klaise 2021 use such class prototypes to guide a search; here they are the answer, as in
  example-based explanations, Kim et al. 2016).
* :func:`plausibility`: for any counterfactual, the mean feature distance to its ``k`` nearest
  reference images of the class it now has, divided by that class's typical value (the median,
  over the class's reference images, of the same distance to their ``k`` nearest classmates):
  about 1 is as typical as a real member, much more than 1 an outlier the class does not contain.

    ref = Reference.of(model, train_x, train_y)
    proto = prototype_counterfactuals(model, x, "top2", ref)
    plausibility(ref, cf.counterfactual, cf.counterfactual_class)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import HookScope, model_device, model_session, resolve_layer
from xailab.core.targets import TargetSpec
from xailab.counterfactual.base import (
    ALREADY,
    OTHER,
    Clock,
    Counterfactuals,
    PixelMap,
    check_images,
    pixel_distances,
    resolve_counterfactual_targets,
)


def head_layer(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (its input is the feature space)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise LayerError("the model has no nn.Linear head: name the feature layer (layer=...)")
    return names[-1]


@torch.no_grad()
def features(model: nn.Module, x: Tensor, layer: str | None = None, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """``(features [N, D], logits [N, K])`` of inputs ``x``: the input of ``layer`` (default the
    head, :func:`head_layer`), flattened."""
    _, module = resolve_layer(model, layer or head_layer(model))
    feats: list[Tensor] = []
    logits: list[Tensor] = []

    def hook(mod: nn.Module, inputs: Any) -> None:
        feats.append(inputs[0].detach().flatten(1).float())

    device = model_device(model)
    with model_session(model), HookScope() as hooks:
        hooks.add(module.register_forward_pre_hook(hook))
        for lo in range(0, len(x), batch_size):
            out = model(x[lo:lo + batch_size].to(device))
            logits.append((out[0] if isinstance(out, (tuple, list)) else out).detach())
    return torch.cat(feats), torch.cat(logits)


@dataclass(frozen=True)
class Reference:
    """Reference (training) images in ``model``'s feature space, with labels and predictions."""

    model: nn.Module
    pixels: Tensor
    features: Tensor
    labels: Tensor
    predictions: Tensor
    typical: Tensor
    layer: str
    k: int

    @classmethod
    def of(cls, model: nn.Module, images: Tensor, labels: Tensor, *, k: int = 5, layer: str | None = None,
           batch_size: int = 256) -> Reference:
        """The reference of ``images`` (as the model takes them) with their ``labels``."""
        x = check_images(images)
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(y) != len(x):
            raise InputError(f"got {len(y)} labels for {len(x)} reference images")
        if k < 1:
            raise InputError(f"k (nearest neighbours) must be >= 1, got {k}")
        f, lg = features(model, x, layer, batch_size)
        f, y = f.cpu(), y.cpu()
        typical = torch.full((lg.shape[1],), float("nan"))
        for c in y.unique().tolist():
            fc = f[y == c]
            if len(fc) > 1:
                d = torch.cdist(fc, fc).fill_diagonal_(float("inf"))
                kk = min(k, len(fc) - 1)
                typical[c] = d.topk(kk, largest=False).values.mean(1).median()
        pixels = PixelMap.for_model(model).to_pixels(x).clamp(0, 1).cpu()
        return cls(model, pixels, f, y, lg.argmax(1).cpu(), typical, layer or head_layer(model), k)

    def nearest(self, f: Tensor, allowed: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(distances [N, k], indices [N, k])`` of the nearest reference images where
        ``allowed [N, M]``; ``inf`` / ``-1`` where fewer than ``k`` are allowed."""
        d = torch.cdist(f.cpu().float(), self.features).masked_fill(~allowed, float("inf"))
        kk = min(k, d.shape[1])
        dist, idx = d.topk(kk, largest=False)
        return dist, idx.masked_fill(~torch.isfinite(dist), -1)


def plausibility(reference: Reference, pixels: Tensor, classes: Tensor, batch_size: int = 256) -> Tensor:
    """Per image (pixels ``[N, C, H, W]``, claimed ``classes [N]``): mean feature distance to the
    ``k`` nearest reference images of its class over the class's typical value (see the module)."""
    x = PixelMap.for_model(reference.model).to_inputs(pixels.to(model_device(reference.model)))
    f, _ = features(reference.model, x, reference.layer, batch_size)
    cls = classes.cpu().long().clamp_min(0)
    allowed = reference.labels[None, :] == cls[:, None]
    dist, _ = reference.nearest(f, allowed, reference.k)
    return dist.mean(1).double() / reference.typical[cls].double()


def prototype_counterfactuals(model: nn.Module, images: Tensor, target: TargetSpec, reference: Reference, *,
                              labels: Tensor | None = None, k: int = 3, batch_size: int = 256) -> Counterfactuals:
    """The nearest reference images of the target class the model also gives that class (the
    first is the counterfactual), and the nearest of each image's predicted class (extras)."""
    clock = Clock()
    x = check_images(images)
    f, logits = features(model, x, reference.layer, batch_size)
    original = logits.argmax(1).cpu()
    tgt = resolve_counterfactual_targets(target, logits, labels).cpu()
    agree = reference.labels == reference.predictions  # the model's own members of each class
    want = torch.where(tgt == OTHER, original, tgt)
    in_target = (reference.labels[None, :] == want[:, None]) ^ (tgt == OTHER)[:, None]
    t_dist, t_idx = reference.nearest(f, in_target & agree[None, :], k)
    p_dist, p_idx = reference.nearest(f, (reference.labels[None, :] == original[:, None]) & agree[None, :], k)
    p0 = PixelMap.for_model(model).to_pixels(x).clamp(0, 1).cpu()
    already = tgt == original
    valid = (t_idx[:, 0] >= 0) & ~already
    cf = torch.where(valid[:, None, None, None], reference.pixels[t_idx[:, 0].clamp_min(0)], p0)
    cf_class = torch.where(valid, reference.predictions[t_idx[:, 0].clamp_min(0)], original)
    status = [ALREADY if a else "found" if v else "no reference image of the target class (as the model sees it)"
              for a, v in zip(already.tolist(), valid.tolist(), strict=True)]
    seconds = clock.seconds()
    measures = {**pixel_distances(cf - p0), "feature_distance": t_dist[:, 0].double(),
                "evaluations": torch.ones(len(x), dtype=torch.long),
                "seconds": torch.full((len(x),), seconds / len(x), dtype=torch.float64)}
    extras = {"target_neighbours": t_idx, "target_distances": t_dist, "predicted_neighbours": p_idx,
              "predicted_distances": p_dist}
    params = {"k": k, "layer": reference.layer, "reference_images": len(reference.labels)}
    return Counterfactuals("prototype", p0, cf, original, cf_class, tgt, valid, measures, status, params, seconds,
                           extras)
