"""Integrated Gradients (Sundararajan et al. 2017, arXiv:1703.01365).

    IG_i(x) = (x_i - b_i) * integral_0^1  d S_t(b + a (x - b)) / d x_i  da
            ~ (x_i - b_i) * sum_s w_s  d S_t(b + a_s (x - b)) / d x_i

Completeness: ``sum_i IG_i = S_t(x) - S_t(b)``; the error of the quadrature is reported per image
and target in ``extras["delta"] = sum_i IG_i - (S_t(x) - S_t(b))``.

Rules (nodes ``a_s`` and weights ``w_s`` on ``[0, 1]``, ``n`` steps):

* ``riemann_left`` / ``riemann_right`` / ``riemann_middle``: ``a_s = (s + 0, 1, 1/2) / n``, ``w = 1/n``;
* ``riemann_trapezoid``: ``a_s = s / (n - 1)``, ``w = h, .., h`` with ``h/2`` at both ends,
  ``h = 1 / (n - 1)`` (weights sum to 1; Captum's sum to ``1 - 1/n``, see docs);
* ``gausslegendre`` (default, as in Captum): Gauss-Legendre nodes and weights, exact for
  polynomials of degree ``2n - 1``. On smooth networks (smooth activations, average pooling) it
  reaches a given completeness error with several times fewer steps than any Riemann rule. On
  ReLU or max-pool networks the gradient along the path is piecewise constant, every rule's
  error falls like ``1/n`` and no rule has a clear edge (the midpoint rule is marginally best):
  check ``extras["delta"]`` and raise ``n_steps`` (see docs/methods/gradient.md for the curves),
  or use the adaptive rule;
* ``adaptive``: composite trapezoid nodes placed per image and target where the error is. Each
  node's forward pass gives the score ``f(a_k)``, hence the exact integral over every interval;
  the intervals whose trapezoid estimate misses it most are bisected until
  ``|delta| <= tol * |f(x) - f(b)|`` (default 1 %) or ``n_steps`` nodes (default 256) are used;
  the nodes used are in ``extras["steps"]`` and each row's ``|delta| / |f(x) - f(b)|`` in
  ``extras["relative_delta"]``; rows that reach ``n_steps`` above ``tol`` are named in a warning
  (see :mod:`.adaptive_quadrature`). On ReLU networks
  it reaches 1 % with several times fewer steps than any fixed rule; on smooth ones it needs a
  few more than Gauss-Legendre (6-8 steps instead of 4 on the benchmark's SiLU CNN).

All steps of all images and targets stream through the model in passes of ``batch_size``.

    ig = create("integrated_gradients", model, n_steps=16, baseline="black",
                mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    result = ig.explain(images, target="top1")
    result.extras["delta"]          # [N, 1] completeness error
    ada = create("integrated_gradients", model, rule="adaptive", tol=0.01).explain(images)
    ada.extras["steps"]             # [N, 1] gradient evaluations each image needed
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.methods.gradient.adaptive_quadrature import AdaptiveRows
from xailab.methods.gradient.base import GradientExplainer, flat_sum, gradient_card
from xailab.methods.gradient.baselines import Baseline, PixelSpace, make_baselines

RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
#: the rule that places its nodes by the completeness error it sees (not a fixed node set)
ADAPTIVE = "adaptive"
_RULE_ALIASES = {
    "gauss_legendre": "gausslegendre", "gl": "gausslegendre", "gauss": "gausslegendre",
    "left": "riemann_left", "right": "riemann_right", "middle": "riemann_middle",
    "midpoint": "riemann_middle", "trapezoid": "riemann_trapezoid",
    "trapezoidal": "riemann_trapezoid", "riemann_trapezoidal": "riemann_trapezoid",
}


def canonical_rule(rule: str) -> str:
    key = rule.strip().lower().replace("-", "_")
    key = _RULE_ALIASES.get(key, key)
    if key not in (*RULES, ADAPTIVE):
        raise InputError(f"unknown integration rule '{rule}': use one of {', '.join((*RULES, ADAPTIVE))}")
    return key


def quadrature(rule: str, n: int) -> tuple[Tensor, Tensor]:
    """Nodes ``a [n]`` and weights ``w [n]`` (float64) of ``rule`` on ``[0, 1]``."""
    rule = canonical_rule(rule)
    if rule == ADAPTIVE:
        raise InputError("the adaptive rule has no fixed nodes: see adaptive_quadrature.AdaptiveRows")
    if n < (2 if rule == "riemann_trapezoid" else 1):
        raise InputError(f"{rule} needs n_steps >= {2 if rule == 'riemann_trapezoid' else 1}, got {n}")
    k = np.arange(n, dtype=np.float64)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        a, w = (nodes + 1) / 2, weights / 2
    elif rule == "riemann_trapezoid":
        h = 1.0 / (n - 1)
        a, w = k * h, np.full(n, h)
        w[0] = w[-1] = h / 2
    else:
        shift = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
        a, w = (k + shift) / n, np.full(n, 1.0 / n)
    return torch.from_numpy(a), torch.from_numpy(w)


@dataclass
class _State:
    base: Tensor  # [B, C, H, W]
    alpha: Tensor  # [S]
    weight: Tensor  # [S]


@register("integrated_gradients", family="gradient", aliases=("ig", "integrated_gradient"))
class IntegratedGradients(GradientExplainer):
    """Integrated Gradients along the straight path from a baseline to the input.

    Args:
        n_steps: quadrature nodes (gradient evaluations per image and target; default 32); with
            ``rule="adaptive"`` the most nodes one image and target may use (default 256).
        rule: ``gausslegendre`` (default), ``riemann_left``, ``riemann_right``,
            ``riemann_middle``, ``riemann_trapezoid`` or ``adaptive`` (trapezoid nodes placed
            where the known integral says the error is, until ``|delta| <= tol |f(x) - f(b)|``;
            see :mod:`~xailab.methods.gradient.adaptive_quadrature`).
        tol: the adaptive rule's target completeness error, relative to ``|f(x) - f(b)|``.
        init_steps: the adaptive rule's first, equally spaced nodes (both ends included).
        baseline: ``black`` (default), ``white``, ``zeros``, ``uniform``, ``gaussian[:sigma]``,
            ``blur[:sigma]``, ``adversarial[:input|noise]``, a tensor or a
            :class:`~xailab.methods.gradient.baselines.Baseline`.
        mean, std, pixel_range: how inputs relate to pixels (what "black" is); see
            :class:`~xailab.methods.gradient.baselines.PixelSpace`.
        fast_passes: run the gradient passes through a BatchNorm-folded copy of the model,
            channels-last on the CPU (the same gradients up to float rounding; see
            :mod:`~xailab.methods.gradient.fast`); ``False``: through the model as it is.
    """

    card = gradient_card(
        "Integrated Gradients",
        summary="Gradients averaged along the straight path from a baseline x' to the input, "
                "times (x − x'): IG_i = (x_i − x'_i) ∫₀¹ ∂S_c(x' + α(x − x'))/∂x_i dα, "
                "approximated by a quadrature rule (Gauss-Legendre by default). Satisfies "
                "completeness: the map sums to S_c(x) − S_c(x').",
        paper="Sundararajan, Taly, Yan (2017), \"Axiomatic Attribution for Deep Networks\", ICML.",
        where="ICML 2017; any differentiable classifier.",
        cost="One forward and one backward pass per image, target and step: adaptive by default "
             "(steps are added until the completeness gap is under tol, 1 %), n_steps fixes the "
             "number.",
        limits=(
            "The baseline choice decides the answer: a black baseline cannot credit black pixels;"
            " blurred, uniform or noise baselines give different maps.",
            "Needs enough steps: the completeness gap (delta) shows when the quadrature is too "
            "coarse.",
            "Cost grows with the number of steps (one gradient per step).",
        ),
    )

    uses_pixel_space = True
    quick_params: ClassVar[dict[str, Any]] = {"n_steps": 4}
    ranges: ClassVar[dict[str, Limit]] = {"n_steps": (1, None), "tol": (0, None), "init_steps": (2, None)}

    def __init__(
        self,
        model: nn.Module,
        *,
        n_steps: int | None = None,
        rule: str = "gausslegendre",
        baseline: str | Tensor | Baseline = "black",
        mean: Any = None,
        std: Any = None,
        pixel_range: Any = None,
        tol: float = 0.01,
        init_steps: int = 5,
        fast_passes: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.fast_passes = bool(fast_passes)
        self.rule = canonical_rule(rule)
        self.n_steps = int(n_steps if n_steps is not None else (256 if self.rule == ADAPTIVE else 32))
        self.tol = float(tol)
        self.init_steps = int(init_steps)
        if self.rule == ADAPTIVE:
            if self.n_steps < 2 or self.init_steps < 2:
                raise InputError(f"the adaptive rule needs n_steps >= 2 and init_steps >= 2, got {n_steps}, {init_steps}")
            if not self.tol >= 0:
                raise InputError(f"tol must be >= 0, got {tol}")
            self.alpha = self.weight = torch.zeros(0, dtype=torch.float64)
        else:
            self.alpha, self.weight = quadrature(self.rule, self.n_steps)
        self.baseline = Baseline.parse(baseline)
        self.space = PixelSpace.for_model(model, mean, std, pixel_range)
        self._parts: dict[str, list[Tensor]] = {}
        self._logits: Tensor | None = None

    def params(self) -> dict[str, Any]:
        extra = {"tol": self.tol, "init_steps": self.init_steps} if self.rule == ADAPTIVE else {}
        return {
            **super().params(), "n_steps": self.n_steps, "rule": self.rule, **extra,
            "fast_passes": self.fast_passes,
            "baseline": self.baseline.describe(), **self.space.describe(),
        }

    def n_points(self) -> int:
        return self.n_steps

    def samples_per_image(self, n_targets: int) -> int:
        if self.rule == ADAPTIVE:  # the first round, the one every row runs
            return n_targets * min(self.init_steps, self.n_steps)
        return n_targets * self.n_steps + 1  # + the baseline's score, for the delta

    def images_per_chunk(self, n_targets: int) -> int:
        full = super().images_per_chunk(n_targets)
        if self.rule != ADAPTIVE:
            return full
        # the adaptive rule keeps each node's input gradient until its weight is final: at most
        # 16 * batch_size of them in a chunk (16 passes' worth of inputs), whatever the budget
        return max(1, min(full, 16 * self.batch_size // (n_targets * self.n_steps)))

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        self._logits = logits
        self._parts = {}

    def _chunk_state(self, x: Tensor) -> _State:
        base, info = make_baselines(self.baseline, x, self.space, self, first=self.chunk_start)
        for k, v in info.items():
            self._parts.setdefault(k, []).append(v.detach().cpu())
        return _State(base, self.alpha.to(x), self.weight.to(x))

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.rule != ADAPTIVE:
            return super()._explain_batch(x, targets)
        state = self._chunk_state(x)
        maps, delta, steps, gap = adaptive_integrated_gradients(self, x, state.base, targets)
        self._parts.setdefault("delta", []).append(delta.cpu())
        self._parts.setdefault("steps", []).append(steps.cpu())
        rel = delta.abs().to(torch.float64).cpu() / gap.abs().cpu().clamp_min(1e-12)
        self._parts.setdefault("relative_delta", []).append(rel.to(delta.dtype))
        return maps

    def _points(self, xs: Tensor, state: _State, img: Tensor, step: Tensor) -> tuple[Tensor, Tensor]:
        if self.rule == ADAPTIVE:
            raise InputError("rule='adaptive' places its nodes per image and cannot be streamed by a "
                             "wrapper (smoothgrad): pass a fixed rule such as rule='gausslegendre'")
        b = state.base[img]
        d = xs - b
        a = state.alpha[step].reshape(-1, *([1] * (xs.dim() - 1)))
        w = state.weight[step].reshape(a.shape)
        return b + a * d, w * d

    def _after_chunk(self, x: Tensor, targets: Tensor, state: _State, maps: Tensor) -> None:
        assert self._logits is not None
        base, t = state.base, targets.shape[1]
        if len(base) > 1 and torch.equal(base, base[:1].expand_as(base)):  # one baseline for all (black)
            one = self.forward(base[:1], grad=False)  # scored once, not once per image
            fb = self.score(one.expand(targets.numel(), -1), targets.reshape(-1)).reshape(-1, t)
        else:
            fb = self._target_scores(base, targets)
        logits = self._logits[self.chunk_start : self.chunk_start + len(x)]
        fx = self.score(logits.repeat_interleave(t, dim=0), targets.reshape(-1)).reshape(-1, t)
        self._parts.setdefault("delta", []).append((flat_sum(maps) - (fx - fb)).detach().cpu())

    def _extras(self) -> dict[str, Tensor]:
        extras = {k: torch.cat(v) for k, v in self._parts.items()}
        if self.rule == ADAPTIVE and "relative_delta" in extras:
            warn_unconverged(extras["relative_delta"], extras["steps"], self.n_steps, self.tol)
        return extras


def warn_unconverged(rel: Tensor, steps: Tensor, n_steps: int, tol: float) -> None:
    """Warn when (image, target) rows stopped at the step budget above ``tol``: their maps do not
    add up to the score difference (the per-row errors are in ``extras["relative_delta"]``)."""
    bad = (steps >= n_steps) & (rel > tol)
    if bool(bad.any()):
        where = [tuple(int(i) for i in ix) for ix in bad.nonzero()[:3]]
        warnings.warn(
            f"integrated_gradients (adaptive): {int(bad.sum())} of {bad.numel()} (image, target) rows stopped at "
            f"the step budget n_steps={n_steps} with a completeness error up to {100 * float(rel[bad].max()):.1f} % "
            f"of f(x) - f(b) (tol {100 * tol:g} %; first rows {where}); raise n_steps. Per-row errors: "
            "extras['relative_delta']", stacklevel=4)


def adaptive_integrated_gradients(
    ig: IntegratedGradients, x: Tensor, base: Tensor, targets: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(maps [B, T, C, H, W], delta [B, T], steps [B, T], f(x) - f(b) [B, T])`` of the adaptive
    rule for a chunk.

    Every round gathers the new nodes of all unfinished rows (image, target) and runs them in
    passes of at most ``batch_size``; each row then decides its next nodes from its own data.
    """
    b, t = targets.shape
    flat_targets = targets.reshape(-1)
    img_of_row = torch.arange(b * t, device=x.device) // t
    d = x - base
    d64 = d.to(torch.float64)
    rows = AdaptiveRows(b * t, ig.init_steps, ig.n_steps, ig.tol)
    while (todo := rows.pending()) is not None:
        row, alpha = todo
        grads, proj, scores = [], [], []
        for lo in range(0, len(row), ig.batch_size):
            r = row[lo : lo + ig.batch_size].to(x.device)
            img = img_of_row[r]
            a = alpha[lo : lo + ig.batch_size].to(x).reshape(-1, *([1] * (x.dim() - 1)))
            g, s = ig.target_gradients(base[img] + a * d[img], flat_targets[r])
            grads.append(g)
            proj.append((g.to(torch.float64) * d64[img]).flatten(1).sum(1))
            scores.append(s)
        rows.add(row, alpha, torch.cat(grads), torch.cat(proj), torch.cat(scores))
    maps = torch.stack([d[r // t] * rows.weighted_gradient(r) for r in range(b * t)])
    maps = maps.reshape(b, t, *x.shape[1:])
    f0 = torch.tensor([rows.f_path(r)[0] for r in range(b * t)], dtype=torch.float64).reshape(b, t)
    # the input's score from the first pass, as the fixed rules use (f(1) of the path equals it)
    assert ig._logits is not None
    logits = ig._logits[ig.chunk_start : ig.chunk_start + b]
    fx = ig.score(logits.repeat_interleave(t, dim=0), flat_targets).reshape(b, t)
    delta = flat_sum(maps).to(torch.float64) - (fx.to(torch.float64).cpu() - f0).to(maps.device)
    steps = torch.tensor([rows.steps(r) for r in range(b * t)], dtype=torch.float64).reshape(b, t)
    return maps, delta.to(maps.dtype), steps, fx.to(torch.float64).cpu() - f0
