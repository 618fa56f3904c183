"""What LIME and KernelSHAP share: superpixels, coalitions, their scores, one weight per superpixel.

For each image: segment it into ``S`` superpixels, draw coalitions ``z in {0,1}^S`` (which
superpixels are kept), score the image with the dropped superpixels replaced by ``hide_color``,
fit a linear surrogate ``g(z) = b + z . c`` and paint each pixel with its superpixel's ``c_s``.
The subclass says how coalitions are drawn (:meth:`SuperpixelExplainer.coalitions`) and how the
surrogate is fitted (:meth:`SuperpixelExplainer.fit`). The coalition that keeps everything is
the image itself, whose scores the first pass already gave: it costs no evaluation.

Extras of the Explanation: ``segments [N, H, W]`` (labels ``0 .. S-1``), ``weights [N, T, S_max]``
(signed superpixel weights, zero-padded beyond each image's ``n_segments [N]``) and
``intercept [N, T]``, so users can select top superpixels::

    res = create("lime", model).explain(images)
    top = res.extras["weights"][0, 0].argsort(descending=True)[:5]
    mask = torch.isin(res.extras["segments"][0], top)      # the five most positive superpixels
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.methods.perturbation._base import PerturbationExplainer, plain_value
from xailab.methods.perturbation.sampling import SAMPLERS, Sampler
from xailab.methods.perturbation.segmentation import (
    SEGMENTATIONS,
    Segmentation,
    segment,
    segmentation_params,
    superpixel_fill,
    user_mask,
)

HideColor = float | Sequence[float] | None


class SuperpixelExplainer(PerturbationExplainer):
    """Base of LIME and KernelSHAP (see the module docstring).

    Args:
        num_samples: coalitions in the surrogate's data set, the image itself included; the
            model runs on ``num_samples - 1`` perturbed copies per image (fewer if coalitions
            repeat), whatever the number of targets.
        segmentation: ``"slic"`` (default), ``"quickshift"``, ``"felzenszwalb"``, a user mask
            (``[H, W]`` for every image or ``[N, H, W]``, integer labels) or a function from an
            ``[H, W, C]`` image in [0, 1] to labels. Named ones take their scale from the image
            size (see :mod:`~xailab.methods.perturbation.segmentation`).
        segmentation_params: overrides of the named segmentation's parameters.
        hide_color: what a dropped superpixel shows: ``None`` its mean colour (lime's default),
            or a value (one, or one per channel) in the model's input space.
        sampler: ``"paired"`` (default, variance-reduced) or ``"plain"`` (the reference scheme);
            see :mod:`~xailab.methods.perturbation.sampling`.
    """

    ranges: ClassVar[dict[str, Limit]] = {"num_samples": (2, None)}

    #: the extras key of the surrogate's constant term
    intercept_name: ClassVar[str] = "intercept"

    def __init__(
        self,
        model: nn.Module,
        *,
        num_samples: int = 1000,
        segmentation: Segmentation = "slic",
        segmentation_params: dict[str, Any] | None = None,
        hide_color: HideColor = None,
        sampler: Sampler = "paired",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if num_samples < 2:
            raise InputError(f"num_samples must be >= 2, got {num_samples}")
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        if isinstance(segmentation, str) and segmentation not in SEGMENTATIONS:
            raise InputError(
                f"unknown segmentation {segmentation!r}: use one of {', '.join(SEGMENTATIONS)}, "
                "an integer mask [H, W] / [N, H, W], or a function image -> labels"
            )
        if segmentation_params and not isinstance(segmentation, str):
            raise InputError("segmentation_params only apply to a named segmentation (slic, quickshift, felzenszwalb)")
        self.num_samples = int(num_samples)
        self.segmentation = segmentation
        self.segmentation_overrides = dict(segmentation_params or {})
        self.hide_color = hide_color
        self.sampler: Sampler = sampler
        self._seg_params: dict[str, Any] = {}

    # -- what subclasses provide -------------------------------------------------------------------
    def coalitions(self, n_segments: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(z [n, S] bool, sample weights [n] float64)`` for one image."""
        raise NotImplementedError

    def fit(self, z: Tensor, w: Tensor, y: Tensor, clean: Tensor) -> tuple[Tensor, Tensor]:
        """``(weights [T, S], intercept [T])`` from coalitions, their scores ``y [n, T]`` and
        the image's own scores ``clean [T]``."""
        raise NotImplementedError

    # -- the shared work ---------------------------------------------------------------------------
    def samples_per_image(self, n_targets: int) -> int:
        return self.num_samples - 1

    def params(self) -> dict[str, Any]:
        seg = self.segmentation
        name = seg if isinstance(seg, str) else ("mask" if isinstance(seg, Tensor) else "function")
        return {
            **super().params(),
            "num_samples": self.num_samples,
            "sampler": self.sampler,
            "segmentation": name,
            "segmentation_params": self._seg_params or self.segmentation_overrides,
            "hide_color": plain_value(self.hide_color),
        }

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        self._n_images = len(x)
        if isinstance(self.segmentation, str):
            h, w = x.shape[-2:]
            self._seg_params = segmentation_params(self.segmentation, h, w, **self.segmentation_overrides)

    def segments(self, img: Tensor, index: int, g: torch.Generator) -> Tensor:
        """Superpixel labels ``[H, W]`` of the chunk's image ``index``."""
        seg = self.segmentation
        if isinstance(seg, Tensor):
            return user_mask(seg, self._offset + index, self._n_images, img.shape[-2:])
        if isinstance(seg, str):
            seed = int(torch.randint(2**31 - 1, (1,), generator=g)) if seg == "quickshift" else 0
            return segment(img, seg, self._seg_params, seed)
        fn: Callable[[np.ndarray], np.ndarray] = seg
        return segment(img, fn, {})

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        b_count, t = targets.shape
        clean = self.clean_scores(targets)
        segs, fills, zs, ws, rows, ys = [], [], [], [], [], []
        for b in range(b_count):
            g = self.generator(b)
            seg = self.segments(x[b], b, g)
            s = int(seg.max()) + 1
            z, w = self.coalitions(s, g)
            todo = (~z.all(dim=1)).nonzero().reshape(-1)  # keep-everything rows are the image: free
            y = torch.zeros(len(z), t, dtype=torch.float64)
            y[z.all(dim=1)] = clean[b].to("cpu", torch.float64)
            segs.append(seg)
            fills.append(superpixel_fill(x[b], seg.to(x.device), s, self.hide_color))
            zs.append(z)
            ws.append(w)
            rows.append(todo)
            ys.append(y)
        flat = [s.reshape(-1).to(x.device) for s in segs]
        on_device = [z.to(x.device) for z in zs]

        def build(b: int, lo: int, hi: int) -> Tensor:
            keep = on_device[b][rows[b][lo:hi].to(x.device)][:, flat[b]]  # [m, H*W]
            keep = keep.reshape(hi - lo, 1, *x.shape[-2:])
            return torch.where(keep, x[b], fills[b])

        def consume(b: int, lo: int, hi: int, scores: Tensor) -> None:
            ys[b][rows[b][lo:hi]] = scores.detach().to("cpu", torch.float64)

        self.evaluate([len(r) for r in rows], build, consume, targets)

        maps, weights, intercepts = [], [], []
        for b in range(b_count):
            coef, intercept = self.fit(zs[b], ws[b], ys[b], clean[b].to("cpu", torch.float64))
            maps.append(coef[:, segs[b]])  # [T, H, W]
            weights.append(coef)
            intercepts.append(intercept)
        s_max = max(len(c[0]) for c in weights)
        self.add_extras(
            segments=torch.stack(segs),
            weights=torch.stack([torch.nn.functional.pad(c, (0, s_max - c.shape[1])) for c in weights]),
            n_segments=torch.tensor([c.shape[1] for c in weights]),
            **{self.intercept_name: torch.stack(intercepts)},
        )
        return torch.stack(maps).to(device=x.device, dtype=x.dtype)
