"""Deep k-NN label consistency, read per class (after Peri et al. 2020, "Deep k-NN defense against
clean-label data poisoning attacks", arXiv:1909.13374): which class's items look like *other*
classes to an early layer, more than those classes look like it?

A dirty-label backdoor relabels images of other classes as the target. Late layers learn the
trigger and put those items with the target (so spectral signatures, SCAn and activation
clustering, which read the penultimate layer, miss faint or warping triggers); an **early layer**
still sees what the image shows. Each analysed item's ``k`` nearest neighbours (cosine, leave one
out, among the items of every analysed class) vote on its class; ``C[a, b]`` counts the items
labelled ``a`` whose vote is ``b``. Classes that look alike (shirt, T-shirt) lose items to each
other in both directions; poisoned items flow one way only, from every source class into the
target. So a class's **excess** is ``sum_b max(0, C[a, b] - C[b, a]) / n_a``, the share of its
items outvoted by other classes beyond what those classes lose to it.

The **score** is the robust z of the class's excess against the model's other classes,
``(e_a - median(e_-a)) / (1.4826 MAD(e_-a))`` (leave one out, so the target does not widen its
own null): a per-model null that needs no clean reference and carries over between models
(the bench_backdoor calibration). Flagged at ``threshold`` (default 3.5, the calibration split's
choice); the **p-value** is the one-sided normal tail of that z (the null: the classes' excesses
are draws of one normal law; not corrected for the number of classes). The **suspected items**
of a flagged class are those its neighbours vote into another class.

The features: the output of ``layer``; ``"auto"``, the first module whose output is at most half
the input's height (the first downsampling: the first pooled conv block of a small CNN, the
first stride-2 stage of a ResNet), flattened, L2-normalised and reduced to ``dims`` principal
components.

    result = run_detector("knn", AuditData(model, train_set))
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xailab.audit.cleanse import MAD_SCALE, normal_tail
from xailab.audit.detection import penultimate
from xailab.audit.detectors import AuditData, ClassFinding, DetectorResult, register_detector
from xailab.core.errors import InputError
from xailab.core.hooks import module_output_shapes


def first_downsampling(model: nn.Module, x: Tensor) -> str:
    """The name of the first leaf module whose output is at most half the height of the input ``x``."""
    leaves = {name for name, mod in model.named_modules() if name and not list(mod.children())}
    for name, shape in module_output_shapes(model, x[:1]).items():  # in the order they ran
        if name in leaves and len(shape) == 4 and shape[-2] * 2 <= x.shape[-2]:
            return name
    raise InputError("the knn detector found no layer that downsamples the image; pass layer= a layer name")


def neighbour_votes(feats: Tensor, labels: np.ndarray, k: int, dims: int, seed: int) -> np.ndarray:
    """Each item's majority class among its ``k`` nearest other items (cosine, after PCA to ``dims``)."""
    f = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    f = f - f.mean(dim=0, keepdim=True)
    if f.shape[1] > dims:
        torch.manual_seed(seed)
        _, _, v = torch.pca_lowrank(f, q=min(dims, *f.shape), center=False)
        f = f @ v
    f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
    d = torch.cdist(f, f)
    d.fill_diagonal_(math.inf)
    nn_idx = d.topk(min(k, len(f) - 1), largest=False).indices.numpy()
    votes = labels[nn_idx]
    n_cls = int(labels.max()) + 1
    counts = np.stack([np.bincount(r, minlength=n_cls) for r in votes])
    return counts.argmax(axis=1)


def excess_outflow(labels: np.ndarray, votes: np.ndarray, classes: list[int], skip: int = 0) -> np.ndarray:
    """Per class ``a`` of ``classes``: ``sum_b max(0, C[a, b] - C[b, a]) / n_a`` over the classes
    ``b`` but the ``skip`` that share the most items with ``a`` either way (``C[a, b] + C[b, a]``)."""
    pos = {c: i for i, c in enumerate(classes)}
    li = np.array([pos[int(v)] for v in labels])
    vi = np.array([pos[int(v)] for v in votes])
    conf = np.zeros((len(classes), len(classes)))
    np.add.at(conf, (li, vi), 1)
    np.fill_diagonal(conf, 0)
    flow = np.maximum(conf - conf.T, 0)
    for a in range(len(classes)):
        flow[a, np.argsort(-(conf[a] + conf[:, a]), kind="stable")[:skip]] = 0
    return flow.sum(axis=1) / np.bincount(li, minlength=len(classes)).clip(min=1)


def leave_one_out_z(values: np.ndarray, mad_floor: float = 0.0) -> np.ndarray:
    """Each value's robust z against the others: ``(v_i - median(v_-i)) / max(1.4826 MAD(v_-i), mad_floor)``
    (``+-inf`` when that is 0 and the value differs, 0 when it equals their median)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.zeros(len(v))
    for i in range(len(v)):
        rest = np.delete(v, i)
        med = float(np.median(rest))
        mad = max(MAD_SCALE * float(np.median(np.abs(rest - med))), mad_floor)
        d = v[i] - med
        out[i] = d / mad if mad > 0 else (math.copysign(math.inf, d) if d != 0 else 0.0)
    return out


@register_detector("knn", needs_data=True,
                   summary="deep k-NN label consistency (after Peri et al. 2020) at an early layer: one-way outflow")
def knn_consistency(data: AuditData, *, threshold: float = 3.5, k: int = 10, dims: int = 64,
                    layer: str = "auto", skip: int = 2, mad_floor: float = 0.01, **_: Any) -> DetectorResult:
    """The k-NN label-consistency detector on the classes of ``data`` (see the module docstring)."""
    t0 = time.perf_counter()
    labels = [c for c in data.labels if len(data.indices[c]) >= 4]
    if len(labels) < 3:
        raise InputError("the knn detector compares classes: it needs at least 3 classes of at least 4 items")
    x = torch.cat([data.inputs(c) for c in labels])
    name = first_downsampling(data.model, x) if layer == "auto" else layer
    y = np.concatenate([np.full(len(data.indices[c]), c) for c in labels])
    votes = neighbour_votes(penultimate(data.model, x, layer=name).float(), y, k, dims, data.seed)
    excess = excess_outflow(y, votes, labels, skip)
    z = leave_one_out_z(excess, mad_floor)
    p = normal_tail(z)
    findings = []
    for i, c in enumerate(labels):
        flagged = bool(z[i] >= threshold)
        out = votes[y == c] != c
        findings.append(ClassFinding(c, data.names[c], float(z[i]), threshold, flagged, float(p[i]),
                                     data.indices[c], out if flagged else np.zeros(len(out), dtype=bool),
                                     extra={"excess": float(excess[i]), "outvoted": out, "layer": name}))
    return DetectorResult("knn", tuple(findings),
                          f"robust z (against the other classes) of the share of a class's items that their "
                          f"{k} nearest neighbours at layer {name!r} put in another class, beyond the reverse flow",
                          params={"threshold": threshold, "k": k, "dims": dims, "layer": name, "skip": skip,
                                  "mad_floor": mad_floor},
                          seconds=time.perf_counter() - t0)
