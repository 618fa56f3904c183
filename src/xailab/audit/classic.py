"""Activation clustering and SpRAy under the detector contract (:mod:`xailab.audit.detectors`).

* ``ac`` (Chen et al. 2018, arXiv:1811.03728): a class's penultimate activations reduced to
  ``dims`` dimensions (PCA; ICA as Chen et al.), split by 2-means
  (:func:`xailab.audit.clustering.two_means`). Score: the split's silhouette, counted when the
  smaller cluster holds at most ``max_share`` of the class (else 0: Chen et al.'s relative-size
  test); flagged at ``threshold`` (0.4). Suspected: the smaller cluster.
* ``spray`` (Lapuschkin et al. 2019, arXiv:1902.10178): the class's explanation maps for the
  class (LRP by default), downsampled, scaled to unit sum, spectrally clustered
  (:func:`xailab.audit.clustering.spectral`). Score: the eigengap score ``1 - l2 / l3`` when the
  eigengap says at least 2 groups and the smaller spectral cluster holds at most ``max_share``
  (else 0); flagged at ``threshold`` (0.9). Suspected: the smaller cluster; region: where its
  mean map exceeds the rest's (:func:`xailab.audit.detection.relied_region`). The maps are kept
  in ``extra["maps"]`` for the figures.

Thresholds were chosen on one Fashion-MNIST backdoor and a clean model (docs/audit.md).

    result = run_detector("ac", AuditData(model, train_set))
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from xailab.audit.clustering import spectral, two_means
from xailab.audit.detection import explain_class, map_features, relied_region
from xailab.audit.detectors import AuditData, ClassFinding, DetectorResult, register_detector


@register_detector("ac", needs_data=True,
                   summary="activation clustering (Chen et al. 2018): a small, separate 2-means cluster")
def activation_clustering(data: AuditData, *, threshold: float = 0.4, max_share: float = 0.25, dims: int = 10,
                          reduce: str = "pca", **_: Any) -> DetectorResult:
    """Activation clustering of every class of ``data`` (see the module docstring)."""
    t0 = time.perf_counter()
    findings = []
    for c in data.labels:
        idx = data.indices[c]
        if len(idx) < 8:
            continue
        tm = two_means(data.activations(c), dims=dims, reduce=reduce, seed=data.seed)
        score = tm.silhouette if tm.small_share <= max_share else 0.0
        flagged = bool(score >= threshold)
        sus = tm.labels.astype(bool) if flagged else np.zeros(len(idx), dtype=bool)
        findings.append(ClassFinding(c, data.names[c], float(score), threshold, flagged, math.nan, idx, sus,
                                     extra={"silhouette": tm.silhouette, "small_share": tm.small_share,
                                            "labels": tm.labels}))
    return DetectorResult("ac", tuple(findings),
                          f"silhouette of the 2-means split of penultimate activations, when the smaller cluster "
                          f"holds at most {max_share:g} of the class",
                          params={"threshold": threshold, "max_share": max_share, "dims": dims, "reduce": reduce},
                          seconds=time.perf_counter() - t0)


@register_detector("spray", needs_data=True,
                   summary="SpRAy (Lapuschkin et al. 2019): a separate group of explanation maps (eigengap)")
def spray(data: AuditData, *, threshold: float = 0.9, max_share: float = 0.25, method: str = "lrp",
          method_params: dict[str, Any] | None = None, mode: str = "positive", downsample: int = 2,
          n_neighbors: int = 10, n_eigen: int = 10, **_: Any) -> DetectorResult:
    """SpRAy on every class of ``data`` (see the module docstring)."""
    t0 = time.perf_counter()
    findings = []
    for c in data.labels:
        idx = data.indices[c]
        if len(idx) < max(8, n_neighbors + 2):
            continue
        maps = explain_class(data.model, data.inputs(c), c, method, dict(method_params or {}), data.batch_size,
                             data.seed)
        full, feats = map_features(maps, mode=mode, downsample=downsample)
        sp = spectral(feats.double().numpy(), n_neighbors=n_neighbors, n_eigen=n_eigen, seed=data.seed)
        ok = sp.k >= 2 and sp.small_share <= max_share
        score = sp.gap_score if ok else 0.0
        flagged = bool(score >= threshold)
        sus = sp.labels.astype(bool) if flagged else np.zeros(len(idx), dtype=bool)
        region = None
        if flagged:
            small = torch.from_numpy(sus)
            region, _share = relied_region(full[small].mean(dim=0), full[~small].mean(dim=0))
        findings.append(ClassFinding(c, data.names[c], float(score), threshold, flagged, math.nan, idx, sus, region,
                                     extra={"spectral": sp, "maps": full, "gap_score": sp.gap_score, "k": sp.k,
                                            "small_share": sp.small_share}))
    return DetectorResult("spray", tuple(findings),
                          f"eigengap score of the {method} maps' nearest-neighbour graph, when it says >= 2 groups "
                          f"and the smaller holds at most {max_share:g} of the class",
                          params={"threshold": threshold, "max_share": max_share, "method": method,
                                  "method_params": dict(method_params or {}), "mode": mode, "downsample": downsample,
                                  "n_neighbors": n_neighbors, "n_eigen": n_eigen},
                          seconds=time.perf_counter() - t0)
