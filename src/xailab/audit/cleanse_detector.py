"""Neural Cleanse under the one detector contract (:mod:`xailab.audit.detectors`): it needs no
training data, only clean images (``images=``, pixels in [0, 1]).

Per class: ``score`` is the MAD anomaly index of a mask *smaller* than the median (0 for a mask
at or above it: a large mask is no shortcut), ``threshold`` the anomaly threshold (2), no
p-value, no suspected items, ``region`` the box of the reconstructed mask
(:func:`xailab.audit.trigger_regions.mask_region`), ``extra`` the mask's L1 norm, the attack
success of its trigger and whether the optimisation reached the target success.

    res = run_detector("neural_cleanse", AuditData(model, class_names=names), images=pixels)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from xailab.audit.cleanse import CleanseSettings, neural_cleanse
from xailab.audit.detectors import AuditData, ClassFinding, DetectorResult, register_detector
from xailab.audit.trigger_regions import mask_region
from xailab.core.errors import InputError


@register_detector("neural_cleanse", needs_data=False,
                   summary="MAD anomaly index of the smallest trigger that sends clean images to the class")
def cleanse_detector(data: AuditData, *, images: Any = None, preprocessing: Any = "model", **settings: Any
                     ) -> DetectorResult:
    """Neural Cleanse on the clean ``images``; ``settings``: the fields of :class:`CleanseSettings`."""
    if images is None:
        raise InputError("Neural Cleanse needs clean images (images=pixels in [0, 1]; the CLI's --images)")
    known = {k: v for k, v in settings.items() if k in CleanseSettings.__dataclass_fields__}
    res = neural_cleanse(data.model, images, settings=CleanseSettings(**known), preprocessing=preprocessing)
    if len(res.l1) != len(data.names):
        raise InputError(f"the model has {len(res.l1)} outputs, the audit names {len(data.names)} classes")
    below = res.l1 < np.median(res.l1)
    findings = tuple(
        ClassFinding(c, data.names[c], float(res.anomaly[c]) if below[c] else 0.0, res.settings.threshold,
                     c in res.flagged, math.nan, region=mask_region(res.masks[c]) if c in res.flagged else None,
                     extra={"l1": float(res.l1[c]), "success": float(res.success[c]), "reached": bool(res.reached[c])})
        for c in data.labels)
    return DetectorResult("neural_cleanse", findings,
                          "anomaly index (MAD) of the class's reconstructed trigger size, below the median",
                          needs_data=False, params=res.params(), seconds=res.seconds)
