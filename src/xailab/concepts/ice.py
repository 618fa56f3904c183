"""ICE: invertible concept-based explanations with non-negative concept activation vectors.

Zhang, Madumal, Miller, Ehinger & Rubinstein, "Invertible Concept-based Explanations for CNN
Models with Non-negative Concept Activation Vectors", AAAI 2021 (arXiv:2006.15417).

On a non-negative layer (a ReLU output) the activations of a set of images, flattened to one
row per image position, ``V [N·h·w, C]``, are factorised as ``V ≈ S P`` with non-negative
feature scores ``S [N·h·w, k]`` and concept directions ``P [k, C]`` (unit-norm rows here; the
scale lives in ``S``). The factorisation is streamed (:class:`~xailab.concepts.nmf.OnlineNMF`):
only one batch of activations is in memory at a time.

* Concept maps: ``S`` of an image reshaped to ``[k, h, w]`` (upsample to show it on the image);
  new images get ``S = argmin_{S >= 0} ||V - S P||`` with the fitted ``P`` (invertible: the
  reconstruction ``S P`` can replace the layer's output).
* Per-class importance (the paper's concept weight): the change of the class logit along each
  concept direction, ``sensitivity[c, k] = mean_{x in class k} Σ_p <∂y_k/∂A_p(x), P_c>`` (the
  limit of the reference code's finite difference ``(y_k(A + εP_c) - y_k(A - εP_c)) / 2ε``
  with ``P_c`` added at every position ``p``); ``contribution[c, k]`` weighs each position by the
  concept's score, ``Σ_p S_pc <∂y_k/∂A_p, P_c>``; ``positive_fraction`` is the TCAV-style share of
  the class's images whose derivative along ``P_c`` is positive.
* Presence: the share of a class's images in which a concept counts, i.e. its largest score over
  positions exceeds ``threshold_c = presence · q99_c`` (``q99_c``: the 99th percentile of that
  largest score over the fitted images).
* Fidelity: the model run with the layer's output replaced by ``S P``: top-1 agreement with the
  original predictions and the mean absolute logit error (and ``||V - S P|| / ||V||``).

    basis = fit_ice(model, images, n_concepts=10, layer="layer3")
    result = analyse_ice(model, basis, images, labels)
    result.fidelity["top1_agreement"], result.presence.shape      # 0.97, [10, classes]
    maps = explain_concepts(model, result.basis, new_images).maps   # [N, 10, h, w]
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.concepts.activations import (
    ImageSource,
    batch_indices,
    constant,
    iter_activations,
    labels_of,
    layer_pass,
    model_device,
    num_images,
    take,
)
from xailab.concepts.nmf import EPS, OnlineNMF, nnls
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import model_session, resolve_layer
from xailab.runs.store import Run, RunError

NON_NEGATIVE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.Softmax,
)
SIGNED: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d,
    nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d, nn.Tanh,
    nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.PReLU,
)


# -- the layer ------------------------------------------------------------------------------------
def non_negative_layers(model: nn.Module) -> list[str]:
    """Names of the modules whose output cannot be negative (ReLU and friends)."""
    return [n for n, m in model.named_modules() if n and isinstance(m, NON_NEGATIVE)]


def _layer_advice(model: nn.Module) -> str:
    names = non_negative_layers(model)
    shown = ", ".join(names[-6:]) if names else "none found"
    return f"choose a ReLU output (this model's last ones: {shown}) or pass clamp=True (--clamp)"


def check_signed_module(model: nn.Module, name: str, module: nn.Module, clamp: bool) -> None:
    """Refuse a layer whose type can output negative values (Conv, BatchNorm, Linear...)."""
    if not clamp and isinstance(module, SIGNED):
        raise LayerError(
            f"ICE needs a non-negative layer, but '{name}' is a {type(module).__name__}, whose "
            f"output can be negative: {_layer_advice(model)} to factorise max(0, activations)"
        )


def check_activations(model: nn.Module, name: str, acts: Tensor, clamp: bool) -> Tensor:
    """``acts`` as a float tensor, clamped at 0 with ``clamp``; negative values otherwise refused."""
    if acts.dim() != 4:
        raise LayerError(
            f"layer '{name}' outputs shape {tuple(acts.shape)}; ICE needs a feature map "
            "[N, C, h, w]: choose a convolutional layer"
        )
    acts = acts.float() if not acts.is_floating_point() else acts
    if clamp:
        return acts.clamp_min(0)
    low = float(acts.min())
    if low < 0:
        raise LayerError(
            f"layer '{name}' has negative activations (min {low:.3g}), so it is not a ReLU "
            f"output and NMF cannot factorise it: {_layer_advice(model)}"
        )
    return acts


def to_rows(acts: Tensor) -> Tensor:
    """``[B, C, h, w] -> [B·h·w, C]`` (one row per image position)."""
    return acts.permute(0, 2, 3, 1).reshape(-1, acts.shape[1])


def from_rows(rows: Tensor, b: int, h: int, w: int) -> Tensor:
    """``[B·h·w, k] -> [B, k, h, w]``."""
    return rows.reshape(b, h, w, -1).permute(0, 3, 1, 2)


# -- the basis ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptBasis:
    """Fitted concepts of one layer: ``directions`` ``P [k, C]`` with unit-norm rows.

    ``thresholds [k]`` (set by :func:`analyse_ice`) decide when a concept counts as present in
    an image (its largest score over positions above the threshold). ``info`` records how the
    basis was fitted (images, seed, epochs, reconstruction error).
    """

    layer: str
    directions: Tensor
    clamp: bool = False
    thresholds: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_concepts(self) -> int:
        return int(self.directions.shape[0])

    @property
    def channels(self) -> int:
        return int(self.directions.shape[1])

    def scores(self, acts: Tensor, *, max_iter: int = 100) -> Tensor:
        """Concept maps ``S [B, k, h, w] >= 0`` of layer activations ``[B, C, h, w]``."""
        if acts.dim() != 4 or acts.shape[1] != self.channels:
            raise InputError(f"activations {tuple(acts.shape)} do not fit a basis of {self.channels} channels")
        b, _, h, w = acts.shape
        a = acts.clamp_min(0) if self.clamp else acts
        P = self.directions.to(device=a.device, dtype=a.dtype)
        return from_rows(nnls(to_rows(a), P, max_iter=max_iter), b, h, w)

    def reconstruct(self, maps: Tensor) -> Tensor:
        """``S P`` back in layer space: ``[B, k, h, w] -> [B, C, h, w]``."""
        P = self.directions.to(device=maps.device, dtype=maps.dtype)
        return torch.einsum("bkhw,kc->bchw", maps, P)

    def save(self, run: Run, name: str = "ice") -> None:
        """Store ``P`` as array ``<name>_basis`` (and the thresholds) and the rest in the manifest."""
        run.write_array(f"{name}_basis", self.directions.float())
        if self.thresholds is not None:
            run.write_array(f"{name}_thresholds", self.thresholds.float())
        run.update_manifest(f"{name}_basis", {"layer": self.layer, "clamp": self.clamp,
                                              "n_concepts": self.n_concepts, "channels": self.channels,
                                              "info": self.info})

    @classmethod
    def load(cls, run: Run | str, name: str = "ice") -> ConceptBasis:
        """The basis saved by :meth:`save` in ``run``."""
        run = run if isinstance(run, Run) else Run.open(run)
        meta = run.manifest.get(f"{name}_basis")
        if meta is None:
            raise RunError(f"run {run.path} holds no concept basis '{name}' (fit one with `xailab concepts ice`)")
        P = torch.from_numpy(np.array(run.read_array(f"{name}_basis")))
        thr = torch.from_numpy(np.array(run.read_array(f"{name}_thresholds"))) if f"{name}_thresholds" in run.arrays() else None
        return cls(meta["layer"], P, bool(meta["clamp"]), thr, dict(meta.get("info", {})))


# -- fitting ----------------------------------------------------------------------------------
def _check_counts(ks: Sequence[int], n: int) -> list[int]:
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InputError(f"numbers of concepts must be >= 1, got {list(ks)}")
    if n < ks[-1]:
        raise InputError(
            f"too few images for {ks[-1]} concepts: got {n}; give at least as many images as "
            "concepts (hundreds for stable concepts) or ask for fewer concepts"
        )
    return ks


def fit_concepts(
    model: nn.Module,
    images: ImageSource,
    n_concepts: int | Sequence[int],
    *,
    layer: str | nn.Module | None = None,
    batch_size: int = 64,
    epochs: int = 1,
    seed: int = 0,
    clamp: bool = False,
    forget: float = 0.7,
    nmf_rows: int = 4096,
    progress: bool = False,
) -> dict[int, ConceptBasis]:
    """Fit one basis per number of concepts in ``n_concepts``, all in the same activation stream.

    Args:
        images: the image set (tensor or Dataset, see :mod:`.activations`), visited ``epochs``
            times in a seeded random order (so an online fit does not see one class at a time).
        layer: a non-negative layer (a ReLU output); ``None`` = the last conv block.
        clamp: factorise ``max(0, activations)`` of a layer that can be negative, instead of
            refusing it.
        forget: how much of the statistics of past epochs' rows is kept (see :class:`OnlineNMF`).
        nmf_rows: rows per NMF update (each activation batch is split into updates of this size).
    """
    start = time.perf_counter()
    name, module = resolve_layer(model, layer)
    check_signed_module(model, name, module, clamp)
    n = num_images(images)
    ks = _check_counts([n_concepts] if isinstance(n_concepts, int) else n_concepts, n)
    if epochs < 1:
        raise InputError(f"epochs must be >= 1, got {epochs}")
    models = {k: OnlineNMF(k, seed=seed, forget=forget) for k in ks}
    bar = _bar(n * epochs, f"ICE fit {name}", progress)
    rows_per_epoch = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
        for idx, acts in iter_activations(model, module, images, batch_size, order=order):
            acts = check_activations(model, name, acts, clamp)
            if epoch == 0 and not rows_per_epoch:
                if ks[-1] > acts.shape[1]:
                    raise InputError(
                        f"{ks[-1]} concepts for a layer of {acts.shape[1]} channels: ask for at most "
                        f"{acts.shape[1]} concepts (NMF finds at most as many directions as channels)"
                    )
                rows_per_epoch = n * acts.shape[2] * acts.shape[3]
            for chunk in to_rows(acts).split(max(1, nmf_rows)):
                for nmf in models.values():
                    nmf.partial_fit(chunk, rows_per_epoch=rows_per_epoch)
            bar.update(len(idx))
    bar.close()
    seconds = time.perf_counter() - start
    info = {"n_images": n, "epochs": epochs, "seed": seed, "forget": forget, "fit_seconds": seconds}
    return {k: ConceptBasis(name, nmf.directions().float().cpu(), clamp, None, dict(info)) for k, nmf in models.items()}


def fit_ice(
    model: nn.Module, images: ImageSource, n_concepts: int = 10, **kwargs: Any
) -> ConceptBasis:
    """One basis of ``n_concepts`` concepts (see :func:`fit_concepts` for the options)."""
    return fit_concepts(model, images, [n_concepts], **kwargs)[n_concepts]


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
    mean_s, max_s, argmax, groups, preds, rpreds = [], [], [], [], [], []
    sens, contrib, pos = [], [], []
    err_sq = norm_sq = abs_logit = 0.0
    agree = 0
    map_size = (0, 0)
    n_cls = 0
    bar = _bar(n, f"ICE scores {name}", progress)
    with model_session(model):
        for idx in batch_indices(n, batch_size):
            x, y = take(images, idx)
            x = x.to(device)
            tap, logits = layer_pass(model, module, x, grad=True)
            assert tap.leaf is not None and logits is not None and tap.activations is not None
            acts = check_activations(model, name, tap.activations, basis.clamp)
            S = basis.scores(acts)
            map_size = (int(S.shape[2]), int(S.shape[3]))
            pred = logits.detach().argmax(1)
            n_cls = int(logits.shape[1])
            yb = lab[idx].to(device) if lab is not None else (y.to(device) if y is not None else pred)
            (g,) = torch.autograd.grad(logits.gather(1, yb[:, None]).sum(), tap.leaf)
            gP = torch.einsum("bchw,kc->bkhw", g.to(acts.dtype), P.to(acts.dtype))  # <∂y/∂A_p, P_c>
            d = gP.sum((2, 3))
            sens.append(d.cpu())
            contrib.append((gP * S).sum((2, 3)).cpu())
            pos.append((d > 0).cpu())
            recon = basis.reconstruct(S)
            _, rlogits = layer_pass(model, module, x, replace=constant(recon))
            assert rlogits is not None
            flat = S.flatten(2)
            mean_s.append(flat.mean(2).cpu())
            mx, am = flat.max(2)
            max_s.append(mx.cpu())
            argmax.append(am.cpu())
            groups.append(yb.cpu())
            preds.append(pred.cpu())
            rpreds.append(rlogits.argmax(1).cpu())
            a = acts.clamp_min(0) if basis.clamp else acts
            err_sq += float((a - recon).pow(2).sum())
            norm_sq += float(a.pow(2).sum())
            abs_logit += float((rlogits - logits.detach()).abs().mean(1).sum())
            agree += int((rlogits.argmax(1) == pred).sum())
            bar.update(len(idx))
    bar.close()
    group = torch.cat(groups)
    counts = torch.bincount(group, minlength=n_cls)
    mean_scores, max_scores = torch.cat(mean_s), torch.cat(max_s)
    q99 = torch.quantile(max_scores.double(), 0.99, dim=0).float()
    thresholds = presence * q99.clamp_min(EPS)
    present = max_scores > thresholds
    pred_all = torch.cat(preds)
    recon_all = torch.cat(rpreds)
    fidelity = {
        "top1_agreement": agree / n,
        "mean_abs_logit_error": abs_logit / n,
        "reconstruction_error": (err_sq / max(norm_sq, EPS)) ** 0.5,
    }
    if lab is not None:
        fidelity["accuracy"] = float((pred_all == lab).float().mean())
        fidelity["recon_accuracy"] = float((recon_all == lab).float().mean())
    return ICEAnalysis(
        basis=replace(basis, thresholds=thresholds, info={**basis.info, "presence": presence}),
        map_size=map_size, mean_scores=mean_scores, max_scores=max_scores, argmax=torch.cat(argmax),
        groups=group, predictions=pred_all, recon_predictions=recon_all, labels=lab,
        sensitivity=_class_mean(torch.cat(sens), group, n_cls),
        contribution=_class_mean(torch.cat(contrib), group, n_cls),
        positive_fraction=_class_mean(torch.cat(pos).float(), group, n_cls),
        presence=_class_mean(present.float(), group, n_cls),
        class_counts=counts, fidelity=fidelity, seconds=time.perf_counter() - start,
    )


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
    bar = _bar(n * (len(ks) + 1), "ICE fidelity curve", progress)
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


# -- explaining new images ------------------------------------------------------------------------
@dataclass
class ConceptMaps:
    """Concept maps of some images under a fitted basis.

    ``maps [N, k, h, w]`` (scores per position), ``logits [N, K]``, ``targets [N]`` (the class
    explained, default the prediction), ``contribution [N, k]``: ``Σ_p S_pc <∂y_t/∂A_p, P_c>``,
    how much each concept adds to the target's logit to first order.
    """

    maps: Tensor
    logits: Tensor
    targets: Tensor
    contribution: Tensor
    present: Tensor | None

    @property
    def scores(self) -> Tensor:
        """Largest score of each concept over positions ``[N, k]``."""
        return self.maps.flatten(2).amax(2)

    def upsampled(self, size: tuple[int, int]) -> Tensor:
        """Maps at image resolution ``[N, k, H, W]`` (bilinear)."""
        return F.interpolate(self.maps, size=size, mode="bilinear", align_corners=False)


def explain_concepts(
    model: nn.Module,
    basis: ConceptBasis,
    images: ImageSource,
    target: int | Tensor | None = None,
    *,
    batch_size: int = 64,
) -> ConceptMaps:
    """Concept maps and contributions of ``images`` with a fitted ``basis`` (fit once, apply)."""
    name, module = resolve_layer(model, basis.layer)
    n = num_images(images)
    if n == 0:
        raise InputError("no images to explain")
    device = model_device(model)
    P = basis.directions.to(device)
    maps, logits_all, tg, contrib = [], [], [], []
    with model_session(model):
        for idx in batch_indices(n, batch_size):
            x = take(images, idx)[0].to(device)
            tap, logits = layer_pass(model, module, x, grad=True)
            assert tap.leaf is not None and logits is not None and tap.activations is not None
            acts = check_activations(model, name, tap.activations, basis.clamp)
            if tap.activations.shape[1] != basis.channels:
                raise InputError(f"layer '{name}' has {acts.shape[1]} channels, the basis {basis.channels}")
            S = basis.scores(acts)
            if target is None:
                t = logits.detach().argmax(1)
            elif isinstance(target, int):
                t = torch.full((len(idx),), target, device=device, dtype=torch.long)
            else:
                t = torch.as_tensor(target).reshape(-1)[idx].to(device)
            (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), tap.leaf)
            gP = torch.einsum("bchw,kc->bkhw", g.to(S.dtype), P.to(S.dtype))
            maps.append(S.cpu())
            logits_all.append(logits.detach().cpu())
            tg.append(t.cpu())
            contrib.append((gP * S).sum((2, 3)).cpu())
    M = torch.cat(maps)
    present = M.flatten(2).amax(2) > basis.thresholds if basis.thresholds is not None else None
    return ConceptMaps(M, torch.cat(logits_all), torch.cat(tg), torch.cat(contrib), present)


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


__all__ = [
    "ConceptBasis",
    "ConceptMaps",
    "ICEAnalysis",
    "analyse_ice",
    "explain_concepts",
    "fidelity_curve",
    "fit_concepts",
    "fit_ice",
    "non_negative_layers",
]

