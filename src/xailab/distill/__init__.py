"""Distillation: simple models that mimic the network, globally, per class, or as a small student.

* :mod:`.features`: interpretable features (ICE concept scores, dissected units, pixel statistics);
* :mod:`.surrogate`: a shallow decision tree and a sparse linear model fitted to the network's
  predictions, their fidelity on held-out images, the per-class rule sets;
* :mod:`.rules`: rules read off a tree, scored by coverage and precision;
* :mod:`.student`: a small CNN trained on the teacher's soft labels (Hinton et al. 2015) and the
  agreement of its attribution maps with the teacher's;
* :mod:`.figures`: the tree drawn, fidelity against depth, rules, map agreement.

The job that writes all of it into a run is :func:`xailab.jobs.distill.distill_to_run`
(``xailab distill``); see docs/distillation.md.
"""

from xailab.distill.features import (
    FeatureError,
    Features,
    ice_features,
    pixel_features,
    unit_features,
)
from xailab.distill.rules import Rule, score_rules, tree_rules
from xailab.distill.student import StudentSettings, agreement_of_maps, distill_student, kd_loss
from xailab.distill.surrogate import (
    ClassRules,
    Split,
    SurrogateFit,
    agreement,
    class_rules,
    depth_curve,
    fit_surrogate,
)

__all__ = [
    "ClassRules",
    "FeatureError",
    "Features",
    "Rule",
    "Split",
    "StudentSettings",
    "SurrogateFit",
    "agreement",
    "agreement_of_maps",
    "class_rules",
    "depth_curve",
    "distill_student",
    "fit_surrogate",
    "ice_features",
    "kd_loss",
    "pixel_features",
    "score_rules",
    "tree_rules",
    "unit_features",
]
