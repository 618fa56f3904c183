"""Where a reverse-engineered trigger lies, where the explanations say the model looks, and how
well the two agree.

* :func:`mask_region`: the bounding box (top, left, bottom, right; inclusive) of the connected
  area around a mask's largest value where the mask is at least ``level`` (0.3) times it (the
  rule of :func:`xailab.audit.detection.relied_region`, applied to the mask alone).
* :func:`trigger_explanation`: stamp a class's reconstructed trigger on clean images, explain
  the triggered and the clean images for that class (LRP by default; positive part, each map
  at unit sum) and take the region of the triggered images' mean map (the :func:`mask_region`
  rule): where the model looks when the trigger is there. Its agreement with the mask is the
  IoU of the two boxes (:func:`box_iou`); the share of the mean relevance inside the mask's
  box, triggered against clean images, says how much the trigger draws the model's attention.
* :func:`top_iou`: IoU of the ``n`` largest pixels of a mask with a true trigger mask of ``n``
  pixels (what the benchmark reports against the planted patch).

    agree = trigger_explanation(model, pixels, res.masks[7], res.patterns[7], 7, method="lrp")
    agree.iou, agree.mask_box, agree.explanation_box
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xailab.audit.cleanse import stamp
from xailab.audit.detection import explain_class, map_features, relied_region
from xailab.audit.pixel import resolve_preprocessing
from xailab.data.transforms import Preprocessing

Box = tuple[int, int, int, int]


def mask_region(mask: Tensor, level: float = 0.3) -> Box | None:
    """The box around the mask's largest value where ``mask >= level * max`` (None for a zero mask)."""
    box, _ = relied_region(mask.double(), torch.zeros_like(mask, dtype=torch.float64), level)
    return box


def box_iou(a: Box | None, b: Box | None) -> float:
    """Intersection over union of two inclusive boxes (0 when either is None)."""
    if a is None or b is None:
        return 0.0
    top, left = max(a[0], b[0]), max(a[1], b[1])
    bottom, right = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, bottom - top + 1) * max(0, right - left + 1)
    area = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
    return inter / area


def top_iou(mask: Tensor, truth: Tensor) -> float:
    """IoU of the ``n = truth.sum()`` largest pixels of ``mask [H, W]`` with the bool ``truth [H, W]``."""
    n = int(truth.sum())
    if n == 0:
        return 0.0
    top = torch.zeros(mask.numel(), dtype=torch.bool)
    top[mask.flatten().topk(n).indices] = True
    t = truth.flatten().bool()
    return float((top & t).sum()) / float((top | t).sum())


@dataclass(frozen=True)
class TriggerAgreement:
    """A reconstructed trigger against the explanation of the images it triggers.

    ``mask_box``: :func:`mask_region` of the mask; ``explanation_box``: the same of the triggered
    images' mean map (None when it is zero); ``iou``: IoU of the two boxes; ``share_in_mask`` /
    ``clean_share_in_mask``: share of the triggered / clean images' mean relevance inside
    ``mask_box``; ``mean_triggered`` / ``mean_clean``: the mean maps ``[H, W]``.
    """

    target: int
    method: str
    mask_box: Box | None
    explanation_box: Box | None
    iou: float
    share_in_mask: float
    clean_share_in_mask: float
    mean_triggered: Tensor
    mean_clean: Tensor
    n_images: int


def trigger_explanation(model: nn.Module, pixels: Tensor, mask: Tensor, pattern: Tensor, target: int, *,
                        method: str = "lrp", preprocessing: Preprocessing | str | None = "model",
                        max_images: int = 64, batch_size: int = 64, seed: int = 0) -> TriggerAgreement:
    """Explain clean ``pixels`` and the same with the trigger ``(mask, pattern)`` for class ``target``."""
    prep = resolve_preprocessing(model, preprocessing)
    x = pixels[:max_images]
    trig = stamp(x, mask, pattern).clamp(0, 1)

    def maps(p: Tensor) -> Tensor:
        xn = prep.normalize(p) if prep is not None else p
        return map_features(explain_class(model, xn, target, method, {}, batch_size, seed), downsample=1)[0]

    m_trig, m_clean = maps(trig).mean(dim=0), maps(x).mean(dim=0)
    expl_box, mbox = mask_region(m_trig), mask_region(mask)

    def share(m: Tensor) -> float:
        if mbox is None:
            return float("nan")
        return float(m[mbox[0] : mbox[2] + 1, mbox[1] : mbox[3] + 1].sum() / m.sum().clamp_min(1e-12))

    return TriggerAgreement(target, method, mbox, expl_box, box_iou(mbox, expl_box), share(m_trig), share(m_clean),
                            m_trig, m_clean, len(x))
