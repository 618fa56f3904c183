"""GradientSHAP / expected gradients (Lundberg & Lee 2017; Erion et al. 2021, arXiv:1906.10670).

Expected gradients average Integrated Gradients over a distribution of baselines, estimating
the path integral by Monte Carlo: for each of ``n`` samples draw a baseline ``b_k`` from the
background set, a point ``a_k ~ U(0, 1)`` on the path and (optionally) input noise ``e_k``:

    A(x) = (1/n) sum_k (x + e_k - b_k) * grad S_t(b_k + a_k (x + e_k - b_k))

In expectation ``sum_i A_i = S_t(x) - E_b[S_t(b)]`` (with ``delta=True`` the error of the estimate
is put in ``extras["delta"]``, at the cost of ``n`` more forward passes per image). This is
Captum's ``GradientShap`` (with ``stdevs = noise_level * range``). The background is a tensor
of images (ideally training images) or a baseline kind from :mod:`.baselines` (random kinds such
as ``uniform`` are drawn anew for every sample). Draws come from each image's generator and are
shared by its targets; :meth:`GradientShap.draws` returns them.

    gs = create("gradient_shap", model, background=train_images[:100], n_samples=32)
    maps = gs.explain(images, target="top1").maps
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.methods.gradient.base import GradientExplainer, flat_sum, gradient_card
from xailab.methods.gradient.baselines import Baseline, PixelSpace, make_baselines


@dataclass
class _State:
    index: Tensor | None  # [B, S] rows of the background tensor
    alpha: Tensor  # [B, S]
    seeds: list[list[int]]  # [B][S] per-sample seeds (noise, random baselines)
    base: Tensor | None  # [B, C, H, W] per-image baseline of a deterministic kind
    sigma: Tensor  # [B, C or 1, 1, 1] noise std


@register("gradient_shap", family="gradient", aliases=("gradshap", "expected_gradients"))
class GradientShap(GradientExplainer):
    """Expected gradients over a background set (Captum's GradientShap).

    Args:
        background: a tensor of images ``[K, C, H, W]`` to draw baselines from, or a baseline
            kind (``uniform``, the default, ``gaussian``, ``black``, ``blur``, ...).
        n_samples: Monte-Carlo samples per image and target (gradient evaluations).
        noise_level: std of noise added to the input, as a fraction of the input range (0).
        delta: also estimate the completeness error (``n_samples`` more forwards per image).
        mean, std, pixel_range: how inputs relate to pixels; see ``PixelSpace``.
        fast_passes: gradient passes through a BatchNorm-folded copy, channels-last on the CPU
            (same gradients up to float rounding; see :mod:`~xailab.methods.gradient.fast`).
    """

    card = gradient_card(
        "GradientSHAP (expected gradients)",
        summary="Integrated gradients with random baselines from a background set and random "
                "points on the path, averaged: an estimate of SHAP values under an independence "
                "assumption.",
        paper="Lundberg, Lee (2017), \"A Unified Approach to Interpreting Model Predictions\", "
              "NeurIPS; Erion et al. (2021), \"Improving performance of deep learning models with "
              "axiomatic attribution priors and expected gradients\", Nature Machine Intelligence.",
        where="NeurIPS 2017; any differentiable classifier.",
        cost="n_samples (default 32) forward and backward passes per image and target.",
        limits=(
            "Depends on the background set: few or unrepresentative baselines give biased maps.",
            "Random and noisy with few samples.",
            "Treats pixels as independent features, which images are not.",
        ),
    )

    uses_pixel_space = True
    quick_params: ClassVar[dict[str, Any]] = {"n_samples": 4}
    ranges: ClassVar[dict[str, Limit]] = {"n_samples": (1, None), "noise_level": (0, None)}

    def __init__(
        self,
        model: nn.Module,
        *,
        background: Tensor | str | Baseline = "uniform",
        n_samples: int = 32,
        noise_level: float = 0.0,
        delta: bool = False,
        mean: Any = None,
        std: Any = None,
        pixel_range: Any = None,
        fast_passes: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.fast_passes = bool(fast_passes)
        if n_samples < 1:
            raise InputError(f"n_samples must be >= 1, got {n_samples}")
        if noise_level < 0:
            raise InputError(f"noise_level must be >= 0, got {noise_level}")
        self.background: Tensor | None = None
        self.kind: Baseline | None = None
        if isinstance(background, Tensor):
            bg = background.detach()
            if bg.dim() == 3:
                bg = bg.unsqueeze(0)
            if bg.dim() != 4 or len(bg) == 0:
                raise InputError(f"background must be images [K, C, H, W], got {tuple(background.shape)}")
            self.background = bg
        else:
            self.kind = Baseline.parse(background)
        self.n_samples = int(n_samples)
        self.noise_level = float(noise_level)
        self.delta = bool(delta)
        self.space = PixelSpace.for_model(model, mean, std, pixel_range)
        self._deltas: list[Tensor] = []
        self._logits: Tensor | None = None

    def params(self) -> dict[str, Any]:
        bg = (f"tensor{list(self.background.shape)}" if self.background is not None
              else self.kind.describe() if self.kind else "")
        return {
            **super().params(), "background": bg, "n_samples": self.n_samples,
            "noise_level": self.noise_level, **self.space.describe(), "fast_passes": self.fast_passes,
        }

    def n_points(self) -> int:
        return self.n_samples

    def samples_per_image(self, n_targets: int) -> int:
        return n_targets * self.n_samples + (self.n_samples if self.delta else 0)

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        if self.background is not None and self.background.shape[1:] != x.shape[1:]:
            raise InputError(f"background images {tuple(self.background.shape[1:])} do not match "
                             f"the inputs {tuple(x.shape[1:])}")
        self._logits, self._deltas = logits, []

    # -- draws ----------------------------------------------------------------------------------
    def _chunk_state(self, x: Tensor) -> _State:
        s = self.n_samples
        index, alpha, seeds = [], [], []
        for i in range(len(x)):
            g = self.generator(i)
            if self.background is not None:
                index.append(torch.randint(0, len(self.background), (s,), generator=g))
            alpha.append(torch.rand(s, generator=g, dtype=torch.float64))
            seeds.append(torch.randint(0, 2**62, (s,), generator=g).tolist())
        base = None
        if self.kind is not None and not self._random_kind:
            base, _ = make_baselines(self.kind, x, self.space, self, first=self.chunk_start)
        return _State(
            index=torch.stack(index).to(x.device) if index else None,
            alpha=torch.stack(alpha).to(x),
            seeds=seeds,
            base=base,
            sigma=self.noise_level * self.space.span(x),
        )

    @property
    def _random_kind(self) -> bool:
        return self.kind is not None and self.kind.kind in ("uniform", "gaussian")

    def _sample(self, x: Tensor, st: _State, img: int, step: int) -> tuple[Tensor, Tensor]:
        """The baseline and the noisy input of one sample (from its own generator)."""
        g = torch.Generator(device=x.device)
        g.manual_seed(st.seeds[img][step])
        if self.background is not None:
            assert st.index is not None
            b = self.background[int(st.index[img, step])].to(x)
        elif st.base is not None:
            b = st.base[img]
        else:  # a random kind, drawn for this sample
            assert self.kind is not None
            lo, hi = self.space.bounds(x[None])
            r = torch.rand if self.kind.kind == "uniform" else torch.randn
            draw = r(x.shape, generator=g, device=x.device, dtype=x.dtype)
            if self.kind.kind == "uniform":
                b = (lo + (hi - lo) * draw)[0]
            else:
                sig = 0.2 if self.kind.sigma is None else self.kind.sigma
                b = self.space.clip((x + sig * self.space.span(x[None])[0] * draw)[None])[0]
        if self.noise_level > 0:
            x = x + st.sigma[img] * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        return b, x

    def draws(self, x: Tensor) -> dict[str, Tensor]:
        """The draws an ``explain(x)`` call makes: ``index`` or ``baselines``, ``alpha``, ``noise``."""
        with self.at_chunk(0):
            st = self._chunk_state(x)
            pairs = [[self._sample(x[i], st, i, k) for k in range(self.n_samples)] for i in range(len(x))]
        out = {"alpha": st.alpha,
               "baselines": torch.stack([torch.stack([b for b, _ in row]) for row in pairs]),
               "noise": torch.stack([torch.stack([xn - x[i] for _, xn in row]) for i, row in enumerate(pairs)])}
        if st.index is not None:
            out["index"] = st.index
        return out

    # -- points ---------------------------------------------------------------------------------
    def _points(self, xs: Tensor, st: _State, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        if self.noise_level == 0 and not self._random_kind:  # no per-sample generator needed
            xn = xs
            if st.index is not None:
                assert self.background is not None
                b = self.background[st.index[img, step].to(self.background.device)].to(xs)
            else:
                assert st.base is not None
                b = st.base[img]
        else:
            pairs = [self._sample(xs[k], st, i, s)
                     for k, (i, s) in enumerate(zip(img.tolist(), step.tolist(), strict=True))]
            b = torch.stack([p[0] for p in pairs])
            xn = torch.stack([p[1] for p in pairs])
        a = st.alpha[img, step].reshape(-1, *([1] * (xs.dim() - 1)))
        d = xn - b
        return b + a * d, d / self.n_samples

    def _after_chunk(self, x: Tensor, targets: Tensor, state: _State, maps: Tensor) -> None:
        if not self.delta:
            return
        assert self._logits is not None
        s, t = self.n_samples, targets.shape[1]
        pairs = [(i, k) for i in range(len(x)) for k in range(s)]
        scores = []
        for lo in range(0, len(pairs), self.batch_size):
            part = pairs[lo : lo + self.batch_size]
            bases = torch.stack([self._sample(x[i], state, i, k)[0] for i, k in part])
            rows = torch.tensor([i for i, _ in part], device=x.device)
            scores.append(self._target_scores(bases, targets[rows]))
        fb = torch.cat(scores).reshape(len(x), s, t).mean(1)
        logits = self._logits[self.chunk_start : self.chunk_start + len(x)]
        fx = self.score(logits.repeat_interleave(t, dim=0), targets.reshape(-1)).reshape(-1, t)
        self._deltas.append((flat_sum(maps) - (fx - fb)).detach().cpu())

    def _extras(self) -> dict[str, Tensor]:
        return {"delta": torch.cat(self._deltas)} if self._deltas else {}
