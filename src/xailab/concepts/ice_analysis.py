"""ICE's analysis of an image set: per-class importance, presence and fidelity (see :mod:`.ice`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from xailab.concepts.activations import (
    ImageSource,
    batch_indices,
    constant,
    labels_of,
    layer_pass,
    model_device,
    num_images,
    take,
)
from xailab.concepts.ice_basis import ConceptBasis, check_activations, progress_bar
from xailab.concepts.nmf import EPS
from xailab.core.errors import InputError
from xailab.core.hooks import model_session, resolve_layer


# -- analysis ---------------------------------------------------------------------------------
@dataclass
class ICEAnalysis:
    """Per-image concept scores, per-class importance and presence, and fidelity of one basis.

    Arrays over the ``N`` images: ``mean_scores`` / ``max_scores`` ``[N, k]``, ``argmax [N, k]``
    (flat position of the largest score), ``groups [N]`` (the class each image counts for: its
    label, else the model's prediction), ``predictions`` / ``recon_predictions [N]``.
    Per concept and class ``[k, K]``: ``sensitivity``, ``contribution``, ``positive_fraction``,
    ``presence``; ``class_counts [K]``.
    """

    basis: ConceptBasis
    map_size: tuple[int, int]
    mean_scores: Tensor
    max_scores: Tensor
    argmax: Tensor
    groups: Tensor
    predictions: Tensor
    recon_predictions: Tensor
    labels: Tensor | None
    sensitivity: Tensor
    contribution: Tensor
    positive_fraction: Tensor
    presence: Tensor
    class_counts: Tensor
    fidelity: dict[str, float]
    seconds: float

    def importance_table(self, class_names: Sequence[str] | None = None) -> pd.DataFrame:
        """A row per concept and class (classes with at least one image)."""
        k, n_cls = self.sensitivity.shape
        rows = []
        for c in range(k):
            for j in range(n_cls):
                if not self.class_counts[j]:  # a class none of the images belongs to
                    continue
                rows.append({
                    "concept": c, "class": j,
                    "class_name": str(class_names[j]) if class_names is not None and j < len(class_names) else str(j),
                    "n_images": int(self.class_counts[j]),
                    "sensitivity": float(self.sensitivity[c, j]),
                    "contribution": float(self.contribution[c, j]),
                    "positive_fraction": float(self.positive_fraction[c, j]),
                    "presence": float(self.presence[c, j]),
                    "mean_score": float(self.mean_scores[self.groups == j, c].mean()),
                })
        return pd.DataFrame(rows)


def analyse_ice(
    model: nn.Module,
    basis: ConceptBasis,
    images: ImageSource,
    labels: Tensor | Sequence[int] | None = None,
    *,
    batch_size: int = 64,
    presence: float = 0.5,
    progress: bool = False,
) -> ICEAnalysis:
    """Score every image with ``basis`` and measure importance, presence and fidelity.

    Two forward passes a batch: one with the graph cut at the layer (the logits and their
    gradient with respect to the layer, through the rest of the network only), one with the
    layer's output replaced by the reconstruction ``S P``.
    """
    start = time.perf_counter()
    name, module = resolve_layer(model, basis.layer)
    n = num_images(images)
    if n == 0:
        raise InputError("no images to analyse")
    lab = torch.as_tensor(labels, dtype=torch.long).reshape(-1) if labels is not None else labels_of(images)
    if lab is not None and len(lab) != n:
        raise InputError(f"got {len(lab)} labels for {n} images")
    device = model_device(model)
    P = basis.directions.to(device)
    parts: dict[str, list[Any]] = {}
    bar = progress_bar(n, f"ICE scores {name}", progress)
    with model_session(model):
        for idx in batch_indices(n, batch_size):
            x, y = take(images, idx)
            given = lab[idx] if lab is not None else y
            for key, value in _score_batch(model, name, module, basis, P, x.to(device), given).items():
                parts.setdefault(key, []).append(value)
            bar.update(len(idx))
    bar.close()
    return _analysis(basis, parts, lab, presence, n, time.perf_counter() - start)


def _score_batch(model: nn.Module, name: str, module: nn.Module, basis: ConceptBasis, P: Tensor, x: Tensor,
                 given: Tensor | None) -> dict[str, Any]:
    """One batch of :func:`analyse_ice`: its scores, class derivatives along the concepts, and the
    predictions with the layer's output replaced by the reconstruction (tensors on the CPU)."""
    tap, logits = layer_pass(model, module, x, grad=True)
    assert tap.leaf is not None and logits is not None and tap.activations is not None
    acts = check_activations(model, name, tap.activations, basis.clamp)
    S = basis.scores(acts)
    pred = logits.detach().argmax(1)
    yb = given.to(x.device) if given is not None else pred
    (g,) = torch.autograd.grad(logits.gather(1, yb[:, None]).sum(), tap.leaf)
    gP = torch.einsum("bchw,kc->bkhw", g.to(acts.dtype), P.to(acts.dtype))  # <∂y/∂A_p, P_c>
    d = gP.sum((2, 3))
    recon = basis.reconstruct(S)
    _, rlogits = layer_pass(model, module, x, replace=constant(recon))
    assert rlogits is not None
    flat = S.flatten(2)
    mx, am = flat.max(2)
    a = acts.clamp_min(0) if basis.clamp else acts
    return {
        "sens": d.cpu(), "contrib": (gP * S).sum((2, 3)).cpu(), "pos": (d > 0).cpu(),
        "mean": flat.mean(2).cpu(), "max": mx.cpu(), "argmax": am.cpu(), "group": yb.cpu(),
        "pred": pred.cpu(), "rpred": rlogits.argmax(1).cpu(),
        "err_sq": float((a - recon).pow(2).sum()), "norm_sq": float(a.pow(2).sum()),
        "abs_logit": float((rlogits - logits.detach()).abs().mean(1).sum()),
        "agree": int((rlogits.argmax(1) == pred).sum()),
        "map_size": (int(S.shape[2]), int(S.shape[3])), "n_cls": int(logits.shape[1]),
    }


def _analysis(basis: ConceptBasis, parts: dict[str, list[Any]], lab: Tensor | None, presence: float, n: int,
              seconds: float) -> ICEAnalysis:
    """The :class:`ICEAnalysis` of the batches' ``parts`` (see :func:`_score_batch`)."""
    n_cls = parts["n_cls"][-1]
    group = torch.cat(parts["group"])
    counts = torch.bincount(group, minlength=n_cls)
    mean_scores, max_scores = torch.cat(parts["mean"]), torch.cat(parts["max"])
    q99 = torch.quantile(max_scores.double(), 0.99, dim=0).float()
    thresholds = presence * q99.clamp_min(EPS)
    present = max_scores > thresholds
    pred_all = torch.cat(parts["pred"])
    recon_all = torch.cat(parts["rpred"])
    fidelity = {
        "top1_agreement": sum(parts["agree"]) / n,
        "mean_abs_logit_error": _total(parts["abs_logit"]) / n,
        "reconstruction_error": (_total(parts["err_sq"]) / max(_total(parts["norm_sq"]), EPS)) ** 0.5,
    }
    if lab is not None:
        fidelity["accuracy"] = float((pred_all == lab).float().mean())
        fidelity["recon_accuracy"] = float((recon_all == lab).float().mean())
    return ICEAnalysis(
        basis=replace(basis, thresholds=thresholds, info={**basis.info, "presence": presence}),
        map_size=parts["map_size"][-1], mean_scores=mean_scores, max_scores=max_scores,
        argmax=torch.cat(parts["argmax"]), groups=group, predictions=pred_all, recon_predictions=recon_all,
        labels=lab, sensitivity=_class_mean(torch.cat(parts["sens"]), group, n_cls),
        contribution=_class_mean(torch.cat(parts["contrib"]), group, n_cls),
        positive_fraction=_class_mean(torch.cat(parts["pos"]).float(), group, n_cls),
        presence=_class_mean(present.float(), group, n_cls),
        class_counts=counts, fidelity=fidelity, seconds=seconds,
    )


def _total(values: list[float]) -> float:
    """The sum of ``values`` added left to right from 0.0 (as a running ``+=`` gives)."""
    out = 0.0
    for v in values:
        out += v
    return out


def _class_mean(values: Tensor, group: Tensor, n_cls: int) -> Tensor:
    """``[N, k]`` per-image values -> ``[k, K]`` means over each class's images (NaN if none)."""
    k = values.shape[1]
    sums = torch.zeros(n_cls, k, dtype=torch.float64).index_add_(0, group, values.double())
    counts = torch.bincount(group, minlength=n_cls).double()[:, None]
    out = torch.where(counts > 0, sums / counts.clamp_min(1), torch.full_like(sums, float("nan")))
    return out.T.float()


# -- fidelity curve ---------------------------------------------------------------------------
def fidelity_curve(
    model: nn.Module,
    bases: dict[int, ConceptBasis],
    images: ImageSource,
    *,
    batch_size: int = 64,
    progress: bool = False,
) -> pd.DataFrame:
    """Fidelity of each basis (one per number of concepts) on ``images``: a row per basis with
    ``n_concepts``, ``top1_agreement``, ``mean_abs_logit_error``, ``reconstruction_error``."""
    if not bases:
        raise InputError("no bases to evaluate")
    layers = {b.layer for b in bases.values()}
    if len(layers) != 1:
        raise InputError(f"the bases come from different layers: {sorted(layers)}")
    name, module = resolve_layer(model, layers.pop())
    n = num_images(images)
    device = model_device(model)
    ks = sorted(bases)
    stats = {k: {"agree": 0, "logit": 0.0, "err": 0.0} for k in ks}
    norm_sq = 0.0
    bar = progress_bar(n * (len(ks) + 1), "ICE fidelity curve", progress)
    with model_session(model):
        for idx in batch_indices(n, batch_size):
            x = take(images, idx)[0].to(device)
            tap, logits = layer_pass(model, module, x)
            assert tap.activations is not None and logits is not None
            for k in ks:
                basis = bases[k]
                acts = check_activations(model, name, tap.activations, basis.clamp)
                recon = basis.reconstruct(basis.scores(acts))
                _, rl = layer_pass(model, module, x, replace=constant(recon))
                assert rl is not None
                stats[k]["agree"] += int((rl.argmax(1) == logits.argmax(1)).sum())
                stats[k]["logit"] += float((rl - logits).abs().mean(1).sum())
                stats[k]["err"] += float((acts - recon).pow(2).sum())
                bar.update(len(idx))
            norm_sq += float(check_activations(model, name, tap.activations, True).pow(2).sum())
            bar.update(len(idx))
    bar.close()
    return pd.DataFrame([{
        "n_concepts": k, "top1_agreement": stats[k]["agree"] / n,
        "mean_abs_logit_error": stats[k]["logit"] / n,
        "reconstruction_error": (stats[k]["err"] / max(norm_sq, EPS)) ** 0.5, "n_images": n,
    } for k in ks])
