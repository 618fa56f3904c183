"""Layer-wise relevance propagation (LRP) on zennit's rules, composites and canonizers.

LRP (Bach et al. 2015, PLoS ONE 10(7); Montavon et al. 2019, "Layer-wise relevance
propagation: an overview") starts from the explained score ``R = S_t(x)`` at the target logit
and redistributes it backwards, layer by layer: a layer with inputs ``a_i`` and outputs ``j``
hands on ``R_i = sum_j z_ij / sum_i' z_i'j * R_j``, where the contribution ``z_ij`` (e.g.
``a_i w_ij`` for the ε-rule) is set by the layer's rule (see
:mod:`~xailab.methods.propagation.composites`). The result is one relevance value per input
channel and pixel, ``maps [N, T, C, H, W]``; ``pixel_maps()`` sums the channels. Relevance is
*conserved*: with biases left out (``zero_bias=True``) the input relevance sums to ``S_t(x)``
up to the stabilisers; with biases, each bias absorbs its share.

Every call records ``extras["relevance_sum"]`` and ``extras["score"]`` (``[N, T]``), so the
conservation ``relevance_sum / score`` can be checked per explanation. Before explaining, the
model is canonized (BatchNorm merged, residual additions routed through ``Add`` modules) and
checked (:mod:`~xailab.methods.propagation.checks`); a model LRP would silently get wrong is
refused with :class:`~xailab.core.errors.UnsupportedModelError` saying what to change. The model
is restored exactly afterwards.

    result = create("lrp_epsilon_gamma_box", model, mean=CIFAR_MEAN, std=CIFAR_STD).explain(x)
    result.maps.shape                       # [N, 1, 3, H, W]
    result.extras["relevance_sum"] / result.extras["score"]   # conservation per image
    create("lrp", model, composite="epsilon_plus", zero_bias=True)
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.card import MethodCard
from xailab.core.errors import InputError
from xailab.core.explainer import RowTargets, row_targets
from xailab.core.params import Limit
from xailab.core.pixels import recorded_pixel_space
from xailab.core.registry import register

from .choices import COMPOSITES, Bound, box_bounds, check_composite_name
from .rows import RelevanceRows

#: |relevance_sum - score| beyond this many times max(|score|, 1) means relevance exploded
EXPLOSION = 1e3

LRP_PAPER = ("Bach, Binder, Montavon, Klauschen, Müller, Samek (2015), \"On Pixel-Wise Explanations "
             "for Non-Linear Classifier Decisions by Layer-Wise Relevance Propagation\", PLOS ONE; "
             "Montavon, Binder, Lapuschkin, Samek, Müller (2019), \"Layer-Wise Relevance Propagation: "
             "An Overview\", in Explainable AI (Springer LNCS 11700).")
LRP_LIMITS = (
    "Needs a hook-friendly model: every ReLU a module of its own (not reused, not functional), no "
    "in-place additions in residual blocks; xailab refuses models it would get wrong.",
    "The map depends on the rule chosen for each layer; different composites give visibly different "
    "maps for the same prediction.",
    "BatchNorm must be merged into the preceding layer (canonised) first; unusual layers need a rule.",
)


def lrp_card(title: str, rules: str) -> MethodCard:
    """The card of LRP with the composite whose ``rules`` are described."""
    return MethodCard(
        title=title, family="propagation",
        summary="Layer-wise relevance propagation: the class score is redistributed backwards, layer by "
                f"layer, so that each layer's relevances sum (approximately) to the score. Rules: {rules}",
        paper=LRP_PAPER, limits=LRP_LIMITS,
        cost="One forward and one backward pass (with the rules' modified gradients) per image and "
             "target; a check of the model's structure on first use.",
        what="The computational graph layer by layer: relevance is passed backwards through each "
             "module with a rule chosen for its type.",
        where="PLOS ONE 2015 and follow-ups; any ReLU CNN built from standard modules (via zennit).",
    )


@register("lrp", family="propagation", aliases=("layerwise_relevance_propagation",))
class LRP(RelevanceRows):
    """Layer-wise relevance propagation with a named composite (see the module docstring).

    Args:
        composite: which rule each layer gets: ``"epsilon"``, ``"zplus"``, ``"alpha2_beta1"``,
            ``"epsilon_plus"`` (default), ``"epsilon_plus_flat"``, ``"epsilon_alpha2_beta1"``,
            ``"epsilon_gamma_box"`` (table in :mod:`~xailab.methods.propagation.composites`).
        epsilon: ε of the ε-rule (dense layers; every layer for ``"epsilon"``).
        gamma: γ of the γ-rule (``"epsilon_gamma_box"``).
        stabilizer: the small constant other rules add to their denominators.
        zero_bias: leave biases out of the rules, so relevance is conserved exactly.
        low, high: bounds of the model's input for the z^B first-layer rule (a float or one per
            channel, in the normalised space the model sees).
        mean, std: the normalisation applied to [0, 1] images; gives ``low = -mean / std``,
            ``high = (1 - mean) / std`` when ``low``/``high`` are not given. With neither, the
            preprocessing the model carries (:mod:`xailab.core.pixels`); without that, each
            image's own per-channel minimum and maximum are the box.
        check: check the canonized model before explaining (refuse unsupported structures).
            A successful check is remembered for the model (three one-image passes saved on
            later calls) until its modules, their training flags, its parameters (in-place
            updates included), the input shape or the composite change.
        **kwargs: ``batch_size``, ``output``, ``eval_mode``, ``seed`` of :class:`Explainer`.
            With ``output="probability"`` (or log) the relevance that starts at the target logit
            is that score; the softmax itself is not decomposed.
    """

    ranges: ClassVar[dict[str, Limit]] = {"epsilon": (0, None), "gamma": (0, None), "stabilizer": (0, None)}

    card = lrp_card("Layer-wise relevance propagation (composite)",
                    "a named zennit composite picks a rule per layer type (see the parameters below).")
    per_channel = True
    one_pass = True  # targets and logits from the explaining forward pass itself
    default_composite: ClassVar[str] = "epsilon_plus"
    fixed_composite: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        *,
        composite: str | None = None,
        epsilon: float = 1e-6,
        gamma: float = 0.25,
        stabilizer: float = 1e-6,
        zero_bias: bool = False,
        low: Bound | None = None,
        high: Bound | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        check: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if composite is not None and self.fixed_composite and check_composite_name(composite) != self.default_composite:
            raise InputError(
                f"{self.name} always uses composite {self.default_composite!r}; use create('lrp', model, "
                f"composite={composite!r}) for another"
            )
        self.composite = check_composite_name(composite or self.default_composite)
        for label, value in (("epsilon", epsilon), ("stabilizer", stabilizer)):
            if not (value >= 0 and math.isfinite(value)):
                raise InputError(f"{label} must be a finite number >= 0, got {value}")
        if not (gamma >= 0 and math.isfinite(gamma)):
            raise InputError(f"gamma must be a finite number >= 0, got {gamma}")
        self.epsilon, self.gamma, self.stabilizer = float(epsilon), float(gamma), float(stabilizer)
        self.zero_bias = bool(zero_bias)
        if low is None and high is None and mean is None and std is None:
            recorded = recorded_pixel_space(model) or {}  # the model's preprocessing, as the CLI uses
            mean, std = recorded.get("mean"), recorded.get("std")
        self.low, self.high, self.mean, self.std = low, high, mean, std
        self.check = check
        self._plan: dict[str, int] = {}
        self._sums: list[Tensor] = []
        self._scores: list[Tensor] = []

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {
            **super().params(),
            "composite": self.composite,
            "epsilon": self.epsilon,
            "stabilizer": self.stabilizer,
            "zero_bias": self.zero_bias,
        }
        if self.composite == "epsilon_gamma_box":
            p["gamma"] = self.gamma
            p["bounds"] = _jsonable(
                {"low": self.low, "high": self.high} if self.low is not None
                else {"mean": self.mean, "std": self.std} if self.mean is not None
                else "per_image"
            )
        return p

    def samples_per_image(self, n_targets: int) -> int:
        return n_targets

    # -- the model: canonizers and the check, once per explain call -----------------------------
    def _composite(self, rows: Tensor, plan: dict[str, int] | None = None) -> Any:
        from .canonizers import ResidualSumCanonizer, model_canonizers  # zennit: only when LRP runs
        from .composites import build_composite

        low = high = None
        if COMPOSITES[self.composite][1]:
            low, high = box_bounds(rows, low=self.low, high=self.high, mean=self.mean, std=self.std)
        canonizers = [*model_canonizers(self.model)]
        plan = self._plan if plan is None else plan
        if plan:
            canonizers.append(ResidualSumCanonizer(plan))
        return build_composite(
            self.composite, epsilon=self.epsilon, gamma=self.gamma, stabilizer=self.stabilizer,
            zero_bias=self.zero_bias, low=low, high=high, canonizers=canonizers,
        )

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._setup(x, logits[:1])

    def _prepare_one_pass(self, x: Tensor) -> None:
        self._setup(x, None)

    def _setup(self, x: Tensor, reference: Tensor | None) -> None:
        from .checks import prepare_model, warn_all

        self._sums, self._scores = [], []
        example = x[:1]
        key = _model_key(self.model, example, self.composite, self.check)
        cached = _CHECKED.setdefault(self.model, {}).get(key)
        if cached is not None:  # this model, unchanged, was checked before (same shape, composite)
            self._plan, messages = dict(cached[0]), list(cached[1])
        else:
            with _frozen(self.model):
                self._plan, messages = prepare_model(
                    self.model, example, reference, lambda plan: self._composite(example, plan),
                    forward=self.forward, method=self.name, check=self.check,
                )
            if self.check:
                self.evaluations += 1  # inspect_structure's pass (self.forward counts the others)
            seen = _CHECKED.setdefault(self.model, {})
            if len(seen) >= 8:  # a few settings per model are enough
                seen.pop(next(iter(seen)))
            seen[key] = (dict(self._plan), list(messages))
        warn_all(messages, self.name)

    # -- one slice of rows (the loop: RelevanceRows) -----------------------------------------
    def _rows_done(self, rel_sum: Tensor, score: Tensor) -> None:
        _warn_if_exploded(rel_sum, score, self.name)

    def _relevance(self, rows: Tensor, targets: Tensor | RowTargets, first_row: int = 0) -> tuple[Tensor, Tensor]:
        """Input relevance ``[M, C, H, W]`` and explained score ``[M]`` for ``rows`` and ``targets``
        (``[M]``, or one-pass :class:`RowTargets` whose rows ``first_row ..`` these are)."""
        from .checks import freeze

        composite = self._composite(rows)
        with _frozen(self.model):
            try:
                composite.register(self.model)
                freeze(self.model)  # also the bias parameters BatchNorm merging created
                xi = rows.detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = self.forward(xi)
                    tg = row_targets(targets, 0, len(xi), logits, first_row)
                    score = self.score(logits, tg).detach()
                    start = torch.zeros_like(logits).scatter(1, tg.reshape(-1, 1), score.reshape(-1, 1))
                    (rel,) = torch.autograd.grad(logits, xi, grad_outputs=start)
            finally:
                composite.remove()
        return rel.detach(), score


#: per model: {key: (residual-sum plan, warnings)} of its successful checks (see _model_key)
_CHECKED: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], tuple[dict[str, int], list[str]]]] = (
    weakref.WeakKeyDictionary()
)


def _model_key(model: nn.Module, example: Tensor, composite: str, check: bool) -> tuple[Any, ...]:
    """What the check's outcome depends on: the modules (name, type, identity) and their
    training flags, the parameters (identity and in-place version: an optimizer step or a
    weight load invalidates), the forward code, the input's shape/dtype/device, the composite.

    A model checked once is not traced again while this key stays the same (the check costs
    three one-image passes a call: on ResNet-18 x4 about a tenth of the explanation)."""
    return (
        tuple((n, type(m), id(m), m.training) for n, m in model.named_modules()),
        tuple((id(p), p._version) for p in model.parameters()),
        type(model).forward, id(model.__dict__.get("forward")),
        tuple(example.shape[1:]), example.dtype, example.device, composite, check,
    )


def _warn_if_exploded(rel_sum: Tensor, score: Tensor, method: str) -> None:
    bad = ~torch.isfinite(rel_sum) | ((rel_sum - score).abs() > EXPLOSION * score.abs().clamp(min=1.0))
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0])
        warnings.warn(
            f"{method}: relevance is not conserved: an input relevance sum of {float(rel_sum.reshape(-1)[i]):.4g} "
            f"for a score of {float(score.reshape(-1)[i]):.4g}. Biases or a tiny stabilizer can amplify "
            "relevance; try zero_bias=True or a larger epsilon, and check the model for operations "
            "without LRP rules",
            stacklevel=5,
        )


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters ``requires_grad=False`` inside (only the input needs a gradient), restored after."""
    from .checks import freeze

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        freeze(model)
        yield
    finally:
        for p, f in zip(params, flags, strict=True):
            p.requires_grad_(f)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().cpu().reshape(-1).tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _fixed(composite: str, doc: str, card: MethodCard) -> type[LRP]:
    """A subclass of :class:`LRP` bound to one composite (its own registry name and card)."""
    cls = type(
        f"LRP_{composite}",
        (LRP,),
        {"default_composite": composite, "fixed_composite": True, "__doc__": doc, "__module__": __name__,
         "card": card},
    )
    return cls


LRPEpsilon = register("lrp_epsilon", family="propagation")(
    _fixed("epsilon", "LRP-ε on every layer (Bach et al. 2015); see :class:`LRP`.",
           lrp_card("LRP-ε",
                    "ε-rule on every layer: z_ij / (Σ_j z_ij + ε·sign); small ε stays close "
                    "to Input × Gradient."))
)
LRPZPlus = register("lrp_zplus", family="propagation", aliases=("lrp_alpha1_beta0",))(
    _fixed("zplus", "LRP-z+ (α1β0) on every layer (Bach et al. 2015; Montavon et al. 2017); see :class:`LRP`.",
           lrp_card("LRP-z⁺ (α1β0)",
                    "only positive contributions are propagated on every layer."))
)
LRPAlpha2Beta1 = register("lrp_alpha2_beta1", family="propagation")(
    _fixed("alpha2_beta1", "LRP-α2β1 on every layer (Bach et al. 2015); see :class:`LRP`.",
           lrp_card("LRP-α2β1",
                    "positive contributions weighted 2, negative 1, on every layer."))
)
LRPEpsilonPlus = register("lrp_epsilon_plus", family="propagation")(
    _fixed("epsilon_plus", "z+ on convolutions, ε on dense layers (zennit EpsilonPlus); see :class:`LRP`.",
           lrp_card("LRP ε + z⁺",
                    "z⁺ on convolutions, ε on dense layers (zennit EpsilonPlus)."))
)
LRPEpsilonPlusFlat = register("lrp_epsilon_plus_flat", family="propagation", aliases=("lrp_flat",))(
    _fixed("epsilon_plus_flat", "Flat first layer, z+ convolutions, ε dense (zennit EpsilonPlusFlat).",
           lrp_card("LRP ε + z⁺ + flat",
                    "flat rule on the first layer, z⁺ on convolutions, ε on dense layers."))
)
LRPEpsilonAlpha2Beta1 = register("lrp_epsilon_alpha2_beta1", family="propagation")(
    _fixed("epsilon_alpha2_beta1", "α2β1 on convolutions, ε on dense layers (zennit EpsilonAlpha2Beta1).",
           lrp_card("LRP ε + α2β1",
                    "α2β1 on convolutions, ε on dense layers."))
)
LRPEpsilonGammaBox = register("lrp_epsilon_gamma_box", family="propagation", aliases=("lrp_gamma_box",))(
    _fixed("epsilon_gamma_box", "z^B first conv, γ convolutions, ε dense (Montavon et al. 2019's recipe).",
           lrp_card("LRP ε + γ + z^B",
                    "z^B (bounded) on the first convolution, γ on convolutions, ε on dense "
                    "layers (Montavon et al. 2019's recipe)."))
)
