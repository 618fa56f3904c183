"""DeepLIFT-SHAP (DeepSHAP; Lundberg & Lee 2017, NeurIPS, sec. 4.2): DeepLIFT averaged over a
background set of baselines, which approximates SHAP values of the model's output.

For each image ``x``, ``K`` baselines ``b_k`` are taken from the background (every background
image with ``n_samples=None``, as Captum's ``DeepLiftShap`` and shap's ``DeepExplainer`` do, or
``n_samples`` of them drawn from the image's generator), and

    A(x) = (1/K) sum_k DeepLIFT(x; b_k),   so   sum_i A_i = f_t(x) - (1/K) sum_k f_t(b_k)

exactly (rescale rule, summation-to-delta for every pair; ``extras["delta"]`` holds the mean
error). Without a background tensor the baselines are uniform noise over the pixel range.
Each (image, baseline) pair costs one baseline pass and one image pass: ``2 K`` model
evaluations per image; the targets share them.

    ds = create("deeplift_shap", model, background=train_images[:64], n_samples=None)
    maps = ds.explain(images, target="top1").maps
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explainer import RowTargets
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.methods.gradient.base import gradient_card
from xailab.methods.gradient.deeplift import DeepLift


@register("deeplift_shap", family="gradient", aliases=("deepshap", "deep_shap"))
class DeepLiftShap(DeepLift):
    """DeepLIFT (rescale rule) averaged over baselines from a background set (DeepSHAP).

    Args:
        background: images ``[K, C, H, W]`` (ideally training images), or ``"uniform"`` (the
            default: noise images over the pixel range, drawn per image).
        n_samples: baselines per image; ``None`` takes every background image (a tensor
            background only), which is Captum's ``DeepLiftShap``.
        eps, mean, std, pixel_range: as for ``deeplift``.
    """

    card = gradient_card(
        "DeepLIFT-SHAP (DeepSHAP)",
        summary="DeepLIFT averaged over baselines drawn from a background set (ideally training "
                "images): A(x) = mean_k DeepLIFT(x; b_k), whose sum is exactly S_c(x) − mean_k "
                "S_c(b_k), an approximation of SHAP values.",
        paper="Lundberg, Lee (2017), \"A Unified Approach to Interpreting Model Predictions\", "
              "NeurIPS (section 4.2, Deep SHAP).",
        where="NeurIPS 2017; ReLU networks built from standard modules, with a background set.",
        cost="Two forward passes and one backward pass per image, target and background baseline "
             "(n_samples, default 16).",
        limits=(
            "Same model requirements as DeepLIFT; costs two passes per image and background "
            "baseline.",
            "The background decides the answer: uniform noise by default, training images "
            "recommended.",
            "Averaging the rescale rule over baselines is Deep SHAP's approximation, not exact "
            "Shapley values.",
        ),
    )

    one_pass = False  # each image is expanded over its baselines: targets are resolved first
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 2}
    ranges: ClassVar[dict[str, Limit]] = {"n_samples": (1, None)}

    def __init__(
        self,
        model: nn.Module,
        *,
        background: Tensor | str = "uniform",
        n_samples: int | None = 16,
        **kwargs: Any,
    ) -> None:
        if "baseline" in kwargs:
            raise InputError("deeplift_shap takes a background set (background=...), not a baseline; "
                             "use deeplift for one baseline")
        super().__init__(model, **kwargs)
        self.background: Tensor | None = None
        if isinstance(background, Tensor):
            bg = background.detach()
            bg = bg.unsqueeze(0) if bg.dim() == 3 else bg
            if bg.dim() != 4 or len(bg) == 0:
                raise InputError(f"background must be images [K, C, H, W], got {tuple(background.shape)}")
            self.background = bg
        elif background != "uniform":
            raise InputError(f"background is a tensor of images or 'uniform', not {background!r}")
        if n_samples is None and self.background is None:
            raise InputError("n_samples=None (every background image) needs a background tensor")
        if n_samples is not None and n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        self.n_samples = n_samples

    @property
    def k(self) -> int:
        """Baselines per image."""
        if self.n_samples is None:
            assert self.background is not None
            return len(self.background)
        return int(self.n_samples)

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in super().params().items() if k != "baseline"}
        bg = f"tensor{list(self.background.shape)}" if self.background is not None else "uniform"
        return {**out, "background": bg, "n_samples": self.n_samples}

    def samples_per_image(self, n_targets: int) -> int:
        return 2 * self.k

    def images_per_chunk(self, n_targets: int) -> int:
        return max(1, self.batch_size // self.k)  # each pass holds images x baselines samples

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        if self.background is not None and self.background.shape[1:] != x.shape[1:]:
            raise InputError(f"background images {tuple(self.background.shape[1:])} do not match "
                             f"the inputs {tuple(x.shape[1:])}")
        super()._prepare(x, logits)

    def baselines(self, x: Tensor) -> Tensor:
        """The ``[B, K, C, H, W]`` baselines of the images ``x`` of the current chunk."""
        k, out = self.k, []
        for i in range(len(x)):
            if self.background is not None and self.n_samples is None:
                out.append(self.background.to(x))
                continue
            g = self.generator(i)
            if self.background is not None:
                idx = torch.randint(0, len(self.background), (k,), generator=g)
                out.append(self.background[idx.to(self.background.device)].to(x))
            else:
                lo, hi = self.space.bounds(x[i : i + 1])
                draw = torch.rand((k, *x.shape[1:]), generator=g, dtype=x.dtype).to(x.device)
                out.append(lo + (hi - lo) * draw)
        return torch.stack(out)

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        b, k = len(x), self.k
        base = self.baselines(x).flatten(0, 1)
        rows = x.repeat_interleave(k, dim=0)
        n_delta = len(self._parts.get("delta", []))
        maps = self._explain_rows(rows, RowTargets.known(targets.repeat_interleave(k, dim=0)), base=base)
        # the per-pair summation errors, averaged over each image's baselines (the average's error)
        for key in ("delta", "_scale"):
            parts = self._parts[key]
            parts[n_delta:] = [torch.cat(parts[n_delta:]).reshape(b, k, -1).mean(1)]
        return maps.reshape(b, k, *maps.shape[1:]).mean(1)
