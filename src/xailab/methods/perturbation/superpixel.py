"""What LIME and KernelSHAP share: superpixels, coalitions, their scores, one weight per superpixel.

For each image: segment it into ``S`` superpixels, draw coalitions ``z in {0,1}^S`` (which
superpixels are kept), score the image with the dropped superpixels replaced by ``hide_color``,
fit a linear surrogate ``g(z) = b + z . c`` and paint each pixel with its superpixel's ``c_s``.
The subclass says how coalitions are drawn (:meth:`SuperpixelExplainer.coalitions`) and how the
surrogate is fitted (:meth:`SuperpixelExplainer.fit`). The coalition that keeps everything is
the image itself, whose scores the first pass already gave: it costs no evaluation.

Extras of the Explanation: ``segments [N, H, W]`` (labels ``0 .. S-1``), ``weights [N, T, S_max]``
(signed superpixel weights, zero-padded beyond each image's ``n_segments [N]``) and
``intercept [N, T]``; with ``num_samples="auto"`` also ``samples [N]`` (coalitions in each
image's fit), ``sample_evaluations [N]`` (forward passes it cost), ``rank_error [N]`` (the
estimated rank error it stopped at) and ``weights_se [N, T, S_max]`` (standard errors of the
weights). Users can select top superpixels::

    res = create("lime", model).explain(images)
    top = res.extras["weights"][0, 0].argsort(descending=True)[:5]
    mask = torch.isin(res.extras["segments"][0], top)      # the five most positive superpixels
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.methods.perturbation.adaptive import ImageSamples, Schedule, sample_in_rounds
from xailab.methods.perturbation.base import PerturbationExplainer, plain_value
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
            repeat), whatever the number of targets. ``"auto"``: sample in rounds until the
            superpixel ranking is stable (see :mod:`~xailab.methods.perturbation.adaptive`).
        tol: ``"auto"`` stops an image when the estimated rank error (``1 -`` the expected
            Spearman rho of its weights between two seeds, or with ``top_k`` ``1 -`` the expected
            top-k overlap) is at most ``tol``.
        max_samples: ``"auto"`` stops an image at this many samples whatever its error.
        top_k: ``"auto"`` judges the stability of the ``top_k`` largest weights only (None: all).
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
        num_samples: int | Literal["auto"] = 1000,
        tol: float = 0.05,
        max_samples: int = 2000,
        top_k: int | None = None,
        segmentation: Segmentation = "slic",
        segmentation_params: dict[str, Any] | None = None,
        hide_color: HideColor = None,
        sampler: Sampler = "paired",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if num_samples != "auto" and (isinstance(num_samples, str) or int(num_samples) < 2):
            raise InputError(f"num_samples must be an int >= 2 or 'auto', got {num_samples!r}")
        if not 0 < tol < 1:
            raise InputError(f"tol must be in (0, 1), got {tol}")
        if max_samples < 8:
            raise InputError(f"max_samples must be >= 8, got {max_samples}")
        if top_k is not None and top_k < 1:
            raise InputError(f"top_k must be >= 1 or None, got {top_k}")
        if sampler not in SAMPLERS:
            raise InputError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        if isinstance(segmentation, str) and segmentation not in SEGMENTATIONS:
            raise InputError(
                f"unknown segmentation {segmentation!r}: use one of {', '.join(SEGMENTATIONS)}, "
                "an integer mask [H, W] / [N, H, W], or a function image -> labels"
            )
        if segmentation_params and not isinstance(segmentation, str):
            raise InputError("segmentation_params only apply to a named segmentation (slic, quickshift, felzenszwalb)")
        self.num_samples: int | Literal["auto"] = "auto" if num_samples == "auto" else int(num_samples)
        self.tol = float(tol)
        self.max_samples = int(max_samples)
        self.top_k = top_k
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

    def coalition_stream(self, n_segments: int, g: torch.Generator) -> Iterator[Tensor]:
        """``num_samples="auto"``: coalitions ``[m, S]`` bool in chunks, a lead row then
        complement pairs (see :mod:`~xailab.methods.perturbation.adaptive`)."""
        raise NotImplementedError

    def sample_weights(self, z: Tensor) -> Tensor:
        """``num_samples="auto"``: the weight ``[m]`` of each streamed coalition in the fit."""
        raise NotImplementedError

    def fit_with_covariance(self, z: Tensor, w: Tensor, y: Tensor, clean: Tensor,
                            clusters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``num_samples="auto"``: :meth:`fit` and the weights' covariance ``[T, S, S]``."""
        raise NotImplementedError

    # -- the shared work ---------------------------------------------------------------------------
    @property
    def budget(self) -> int:
        """The most samples an image can take: ``num_samples``, or ``max_samples`` for ``"auto"``."""
        return self.max_samples if self.num_samples == "auto" else self.num_samples

    def samples_per_image(self, n_targets: int) -> int:
        return self.budget - 1

    def params(self) -> dict[str, Any]:
        seg = self.segmentation
        name = seg if isinstance(seg, str) else ("mask" if isinstance(seg, Tensor) else "function")
        return {
            **super().params(),
            "num_samples": self.num_samples,
            **({"tol": self.tol, "max_samples": self.max_samples, "top_k": self.top_k}
               if self.num_samples == "auto" else {}),
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
            return user_mask(seg, self.chunk_start + index, self._n_images, img.shape[-2:])
        if isinstance(seg, str):
            seed = int(torch.randint(2**31 - 1, (1,), generator=g)) if seg == "quickshift" else 0
            return segment(img, seg, self._seg_params, seed)
        fn: Callable[[np.ndarray], np.ndarray] = seg
        return segment(img, fn, {})

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        clean = self.clean_scores(targets).to("cpu", torch.float64)
        gens = [self.generator(b) for b in range(len(x))]
        segs = [self.segments(x[b], b, gens[b]) for b in range(len(x))]
        counts = [int(seg.max()) + 1 for seg in segs]
        fills = [superpixel_fill(x[b], segs[b].to(x.device), counts[b], self.hide_color) for b in range(len(x))]
        flat = [s.reshape(-1).to(x.device) for s in segs]

        def build_from(z: Tensor, b: int, rows: Tensor) -> Tensor:
            keep = z.to(x.device)[rows.to(x.device)][:, flat[b]].reshape(len(rows), 1, *x.shape[-2:])
            return torch.where(keep, x[b], fills[b])

        if self.num_samples == "auto":
            fits, extra = self._fit_auto(counts, gens, clean, targets, build_from)
        else:
            fits, extra = self._fit_fixed(counts, gens, clean, targets, build_from), {}
        maps = [coef[:, seg] for (coef, _), seg in zip(fits, segs, strict=True)]  # [T, H, W] each
        s_max = max(counts)
        self.add_extras(
            segments=torch.stack(segs),
            weights=torch.stack([torch.nn.functional.pad(c, (0, s_max - c.shape[1])) for c, _ in fits]),
            n_segments=torch.tensor(counts),
            **{self.intercept_name: torch.stack([i for _, i in fits])},
            **extra,
        )
        return torch.stack(maps).to(device=x.device, dtype=x.dtype)

    def _fit_fixed(self, counts: list[int], gens: list[torch.Generator], clean: Tensor, targets: Tensor,
                   build_from: Callable[[Tensor, int, Tensor], Tensor]) -> list[tuple[Tensor, Tensor]]:
        """``num_samples`` coalitions per image, drawn at once."""
        zs, ws, rows, ys = [], [], [], []
        for b, s in enumerate(counts):
            z, w = self.coalitions(s, gens[b])
            full = z.all(dim=1)
            y = torch.zeros(len(z), targets.shape[1], dtype=torch.float64)
            y[full] = clean[b]
            zs.append(z)
            ws.append(w)
            rows.append((~full).nonzero().reshape(-1))  # keep-everything rows are the image: free
            ys.append(y)

        def consume(b: int, lo: int, hi: int, scores: Tensor) -> None:
            ys[b][rows[b][lo:hi]] = scores.detach().to("cpu", torch.float64)

        self.evaluate([len(r) for r in rows], lambda b, lo, hi: build_from(zs[b], b, rows[b][lo:hi]),
                      consume, targets)
        return [self.fit(zs[b], ws[b], ys[b], clean[b]) for b in range(len(counts))]

    def _fit_auto(self, counts: list[int], gens: list[torch.Generator], clean: Tensor, targets: Tensor,
                  build_from: Callable[[Tensor, int, Tensor], Tensor]
                  ) -> tuple[list[tuple[Tensor, Tensor]], dict[str, Tensor]]:
        """Rounds of samples until the ranking is stable (:mod:`~xailab.methods.perturbation.adaptive`)."""
        # the rank error's Monte Carlo draws come from their own generator: the coalitions an
        # image draws do not depend on the round sizes
        checks = [torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=g))) for g in gens]
        states = [ImageSamples(self.coalition_stream(s, gens[b]), self.sample_weights, clean[b],
                               torch.zeros(0, s, dtype=torch.bool)) for b, s in enumerate(counts)]

        def evaluate(todo: list[Tensor]) -> None:
            def consume(b: int, lo: int, hi: int, scores: Tensor) -> None:
                states[b].y[todo[b][lo:hi]] = scores.detach().to("cpu", torch.float64)

            self.evaluate([len(t) for t in todo], lambda b, lo, hi: build_from(states[b].z, b, todo[b][lo:hi]),
                          consume, targets)

        schedule = Schedule(self.tol, self.max_samples, self.top_k)
        sample_in_rounds(states, checks, schedule, self.fit_with_covariance, evaluate)
        fits = [(st.fitted[0], st.fitted[1]) for st in states if st.fitted is not None]
        s_max = max(counts)
        se = [torch.diagonal(st.fitted[2], dim1=1, dim2=2).clamp_min(0).sqrt() for st in states if st.fitted]
        extra = {
            "samples": torch.tensor([len(st.z) for st in states]),
            "sample_evaluations": torch.tensor([st.evaluated for st in states]),
            "rank_error": torch.tensor([st.error for st in states], dtype=torch.float64),
            "weights_se": torch.stack([torch.nn.functional.pad(v, (0, s_max - v.shape[1])) for v in se]),
        }
        return fits, extra
