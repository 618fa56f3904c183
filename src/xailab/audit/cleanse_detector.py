"""Neural Cleanse under the one detector contract (:mod:`xailab.audit.detectors`): it needs no
training data, only clean images (``images=``, pixels in [0, 1]).

Per class: ``score`` is the robust z of a mask *smaller* than the median (the MAD anomaly index;
0 for a mask at or above it: a large mask is no shortcut), of ``log(l1 / reference)`` when
clean models' ``reference`` norms are given (:func:`xailab.audit.cleanse.relative_flags`),
``threshold`` the anomaly threshold (2), ``p_value`` the one-sided normal tail of the robust z
(the null: the classes' statistics are draws of one normal), no suspected items, ``region`` the box of the reconstructed mask
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
def cleanse_detector(data: AuditData, *, images: Any = None, preprocessing: Any = "model", reference: Any = None,
                     **settings: Any) -> DetectorResult:
    """Neural Cleanse on the clean ``images``; ``settings``: the fields of :class:`CleanseSettings`."""
    if images is None:
        raise InputError("Neural Cleanse needs clean images (images=pixels in [0, 1]; the CLI's --images)")
    known = {k: v for k, v in settings.items() if k in CleanseSettings.__dataclass_fields__}
    res = neural_cleanse(data.model, images, settings=CleanseSettings(**known), preprocessing=preprocessing,
                         reference=reference)
    if len(res.l1) != len(data.names):
        raise InputError(f"the model has {len(res.l1)} outputs, the audit names {len(data.names)} classes")
    z = res.z if res.z is not None else np.zeros(len(res.l1))
    p = res.p_value if res.p_value is not None else np.full(len(res.l1), math.nan)
    findings = tuple(
        ClassFinding(c, data.names[c], max(float(z[c]), 0.0), res.cutoff,
                     c in res.flagged, float(p[c]), region=mask_region(res.masks[c]) if c in res.flagged else None,
                     extra={"l1": float(res.l1[c]), "success": float(res.success[c]), "reached": bool(res.reached[c])})
        for c in data.labels)
    return DetectorResult("neural_cleanse", findings,
                          "robust z (MAD) of the class's reconstructed trigger size, below the median"
                          + (", relative to clean reference models" if reference is not None else ""),
                          needs_data=False, params=res.params(), seconds=res.seconds)
