"""Audits: can a small change fool the model, and has it learned a hidden trigger?

* Adversarial: :func:`fgsm`, :func:`pgd` (L-inf, L2), :func:`patch_attack` on pixels in [0, 1]
  (the model's normalisation applied inside), :class:`AttackResult`, and
  :func:`explanation_shift` (how the maps change, and whether they point at the patch).
* Backdoors: triggers (:func:`parse_trigger`), :func:`poison_dataset` / :class:`PoisonedDataset`,
  :func:`train_poisoned`, :func:`evaluate_backdoor`, and detection without knowing the trigger,
  :func:`detect_backdoor`: detectors under one contract (:class:`DetectorResult`; spectral
  signatures, SCAn, activation clustering, SpRAy) combined by a rule into a verdict per class.

    from xailab.audit import pgd, explanation_shift
    res = pgd(model, pixels, labels, eps=8 / 255)
    shift = explanation_shift(model, res, ["saliency"], targets=["top1"])

See docs/audit.md.
"""

from xailab.audit.adversarial import ATTACKS, fgsm, pgd, run_attack
from xailab.audit.backdoor import (
    BackdoorEvaluation,
    PoisonedDataset,
    evaluate_backdoor,
    poison_dataset,
    poisoned_from_run,
    resolve_class,
    train_poisoned,
)
from xailab.audit.detectors import (
    AuditData,
    ClassFinding,
    DetectorResult,
    available_detectors,
    run_detector,
)
from xailab.audit.patch import patch_attack
from xailab.audit.pixel import PixelModel, perturbation_norms
from xailab.audit.result import AttackResult
from xailab.audit.shift import ShiftResult, explanation_shift
from xailab.audit.triggers import Trigger, parse_trigger
from xailab.audit.verdict import ClassEvidence, DetectionReport, detect_backdoor

__all__ = [
    "ATTACKS",
    "AttackResult",
    "AuditData",
    "BackdoorEvaluation",
    "ClassEvidence",
    "ClassFinding",
    "DetectionReport",
    "DetectorResult",
    "PixelModel",
    "PoisonedDataset",
    "ShiftResult",
    "Trigger",
    "available_detectors",
    "detect_backdoor",
    "evaluate_backdoor",
    "explanation_shift",
    "fgsm",
    "parse_trigger",
    "patch_attack",
    "perturbation_norms",
    "pgd",
    "poison_dataset",
    "poisoned_from_run",
    "resolve_class",
    "run_attack",
    "run_detector",
    "train_poisoned",
]
