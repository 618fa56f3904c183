"""SmoothGrad, SmoothGrad-squared and VarGrad around any streamed gradient method.

SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) averages a method's maps over noisy copies
of the input; SmoothGrad-squared and VarGrad (Adebayo et al. 2018, arXiv:1810.03307) take the
mean square and the variance instead. With ``e_k ~ N(0, (noise_level * range)^2)``:

    smoothgrad     (1/K) sum_k A(x + e_k)
    smoothgrad_sq  (1/K) sum_k A(x + e_k)^2
    vargrad        (1/K) sum_k A(x + e_k)^2 - ((1/K) sum_k A(x + e_k))^2

``range`` is the pixel range from ``mean``/``std`` or ``pixel_range`` when given, else each
image's ``max - min`` (as in the paper). The wrapped method ``A`` is any method of this family
built on the gradient engine (saliency, input_x_gradient, integrated_gradients, gradient_shap),
as Captum's NoiseTunnel wraps any attribution; every noisy sample and every inner step streams
through the model in passes of ``batch_size``. The noise of each image comes from its own
generator, so :meth:`SmoothGrad.noise` returns exactly the noise an ``explain`` call adds.

    sg = create("smoothgrad", model, method="integrated_gradients", n_steps=8,
                variant="vargrad", n_samples=32, noise_level=0.15)
    maps = sg.explain(images, target="top1").maps
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.core.registry import METHODS, register
from xailab.methods.gradient.base import GradientExplainer, gradient_card
from xailab.methods.gradient.baselines import PixelSpace

VARIANTS = ("smoothgrad", "smoothgrad_sq", "vargrad")


@register("smoothgrad", family="gradient", aliases=("smooth_grad", "noise_tunnel"))
class SmoothGrad(GradientExplainer):
    """A gradient method averaged over noisy copies of the input (SmoothGrad / VarGrad).

    Args:
        method: the wrapped method's registered name (default ``saliency``); its own parameters
            are passed as further keyword arguments (e.g. ``n_steps=16`` for IG) or as the dict
            ``method_params`` (the form the CLI's ``--set smoothgrad.method_params=...`` takes).
        variant: ``smoothgrad`` (mean), ``smoothgrad_sq`` (mean square) or ``vargrad`` (variance).
        n_samples: noisy copies per image.
        noise_level: noise std as a fraction of the input range (the paper suggests 0.1-0.2).
        mean, std, pixel_range: how inputs relate to pixels; see ``PixelSpace``.
        fast_passes: gradient passes through a BatchNorm-folded copy, channels-last on the CPU
            (same gradients up to float rounding; see :mod:`~xailab.methods.gradient.fast`).
    """

    card = gradient_card(
        "SmoothGrad / VarGrad",
        summary="A gradient method averaged over noisy copies of the input: mean of M(x + N(0, "
                "σ²)) over n samples (VarGrad: their variance). Sharpens visual quality by "
                "removing gradient noise.",
        paper="Smilkov, Thorat, Kim, Viégas, Wattenberg (2017), \"SmoothGrad: removing noise by "
              "adding noise\" (arXiv:1706.03825); VarGrad: Adebayo et al. (2018).",
        where="ICML 2017 workshop; any differentiable classifier.",
        cost="n_samples (default 32) times the cost of the method it smooths.",
        limits=(
            "The noise level σ (a fraction of the input range) changes the map a lot; too much "
            "blurs it.",
            "Random: differs with the seed unless the number of samples is large; n times the "
            "base cost.",
            "Smoother does not mean more faithful: the averaging hides where the model is "
            "sensitive.",
        ),
    )

    uses_pixel_space = True
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 3}
    ranges: ClassVar[dict[str, Limit]] = {"n_samples": (1, None), "noise_level": (0, None)}

    def __init__(
        self,
        model: nn.Module,
        *,
        method: str = "saliency",
        variant: str = "smoothgrad",
        n_samples: int = 32,
        noise_level: float = 0.15,
        mean: Any = None,
        std: Any = None,
        pixel_range: Any = None,
        batch_size: int = 64,
        output: Any = "logit",
        eval_mode: bool = True,
        seed: int = 0,
        fast_passes: bool = True,
        method_params: dict[str, Any] | None = None,
        **more_method_params: Any,
    ) -> None:
        common = {"batch_size": batch_size, "output": output, "eval_mode": eval_mode}
        super().__init__(model, seed=seed, **common)
        self.fast_passes = bool(fast_passes)
        if variant not in VARIANTS:
            raise InputError(f"unknown SmoothGrad variant '{variant}': use one of {', '.join(VARIANTS)}")
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        if noise_level < 0:
            raise InputError(f"noise_level must be >= 0, got {noise_level}")
        cls = METHODS.get(method)
        if not (isinstance(cls, type) and issubclass(cls, GradientExplainer)) or issubclass(cls, SmoothGrad):
            wrappable = [n for n in METHODS.available(family="gradient")
                         if issubclass(METHODS.get(n), GradientExplainer) and n != self.name]
            raise InputError(f"SmoothGrad cannot wrap '{method}'; it wraps {', '.join(wrappable)}")
        method_params = {**(method_params or {}), **more_method_params}
        space = {"mean": mean, "std": std, "pixel_range": pixel_range}
        if cls.uses_pixel_space:
            method_params = {**space, **method_params}
        # the inner method draws its own randomness from a different stream than the noise
        self.inner: GradientExplainer = cls(model, seed=seed + 7919, **common, **method_params)
        self.method = cls.name
        self.variant = variant
        self.n_samples = int(n_samples)
        self.noise_level = float(noise_level)
        self.space = PixelSpace.for_model(model, mean, std, pixel_range)

    def params(self) -> dict[str, Any]:
        # the wrapper runs every pass itself: the inner method's fast_passes plays no part
        skip = ("batch_size", "output", "seed", "fast_passes")
        inner = {k: v for k, v in self.inner.params().items() if k not in skip}
        return {
            **super().params(), "method": self.method, "variant": self.variant,
            "n_samples": self.n_samples, "noise_level": self.noise_level, "fast_passes": self.fast_passes,
            **self.space.describe(), "method_params": inner,
        }

    def n_points(self) -> int:
        return self.n_samples * self.inner.n_points()

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        self.inner._prepare(x, logits)

    # -- noise --------------------------------------------------------------------------------
    def _seeds(self, n_images: int) -> Tensor:
        gens = [self.generator(i) for i in range(n_images)]
        return torch.stack([torch.randint(0, 2**62, (self.n_samples,), generator=g) for g in gens])

    def _one_noise(self, seed: int, like: Tensor, sigma: Tensor) -> Tensor:
        g = torch.Generator(device=like.device)
        g.manual_seed(seed)
        return torch.randn(like.shape, generator=g, device=like.device, dtype=like.dtype) * sigma

    def noise(self, x: Tensor) -> Tensor:
        """``[N, n_samples, C, H, W]``: the noise an ``explain(x)`` call adds to each image."""
        with self.at_chunk(0):
            seeds = self._seeds(len(x))
        sigma = self.noise_level * self.space.span(x)
        return torch.stack([
            torch.stack([self._one_noise(int(s), x[i], sigma[i]) for s in seeds[i]])
            for i in range(len(x))
        ])

    # -- the stream ---------------------------------------------------------------------------
    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        inner = self.inner
        inner.evaluations = 0
        with inner.at_chunk(self.chunk_start):  # the inner method's draws: those of this chunk
            state = inner._chunk_state(x)
        seeds = self._seeds(len(x)).tolist()
        sigma = self.noise_level * self.space.span(x)
        b, t = targets.shape
        n = self.n_samples
        total = x.new_zeros(b * t, *x.shape[1:])
        squares = x.new_zeros(b * t, *x.shape[1:]) if self.variant != "smoothgrad" else None

        def row_inputs(x: Tensor, img: Tensor, var: Tensor) -> Tensor:
            pair = img * n + var
            keys, counts = torch.unique_consecutive(pair, return_counts=True)
            noise = torch.stack([
                self._one_noise(seeds[int(k) // n][int(k) % n], x[int(k) // n], sigma[int(k) // n])
                for k in keys.tolist()
            ])
            return x[img] + noise.repeat_interleave(counts, dim=0)

        def sink(r0: int, vals: Tensor) -> None:
            vals = inner._post(vals)
            rows = torch.arange(r0, r0 + len(vals)) // n
            keys, counts = torch.unique_consecutive(rows, return_counts=True)
            for key, part in zip(keys.tolist(), torch.split(vals, counts.tolist()), strict=True):
                total[key] += part.sum(0)
                if squares is not None:
                    squares[key] += (part * part).sum(0)

        def points(xs: Tensor, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor | float]:
            return inner._points(xs, state, img, step)

        self._stream(x, targets, sink, points, inner.n_points(), variants=n, row_inputs=row_inputs)
        self.evaluations += inner.evaluations
        mean = total / n
        if self.variant == "smoothgrad":
            out = mean
        else:
            assert squares is not None
            out = squares / n if self.variant == "smoothgrad_sq" else squares / n - mean * mean
        return out.reshape(b, t, *x.shape[1:])
