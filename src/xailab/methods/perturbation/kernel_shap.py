"""KernelSHAP on superpixels (Lundberg & Lee 2017, "A unified approach to interpreting model
predictions", arXiv:1705.07874), as shap's ``KernelExplainer`` defines it.

The Shapley values ``phi`` of the ``S`` superpixels (a hidden superpixel shows ``hide_color``)
solve the weighted least squares problem with the Shapley kernel and the efficiency constraint::

    min_phi  sum_z pi(z) (f(x_z) - f(x_0) - z . phi)^2      pi(z) = (S-1) / (C(S,|z|) |z| (S-|z|))
    s.t.     sum_s phi_s = f(x) - f(x_0)

over coalitions ``z`` other than the empty and the full one, ``x_0`` being the image with every
superpixel hidden. With all ``2^S - 2`` coalitions the solution is the exact Shapley value; with
fewer it is shap's estimate. The constraint holds exactly (one superpixel is eliminated, as in
shap), so the map sums, superpixel by superpixel, to ``f(x) - f(x_0)``; ``extras["base_value"]``
holds ``f(x_0)``.

    res = create("kernel_shap", model, num_samples=1000).explain(images)
    res.extras["weights"].sum(-1)      # == logits of the target - extras["base_value"]

Differences from shap: no L1 feature selection (shap's default ``l1_reg="num_features(10)"``
keeps 10 superpixels; here all are kept, as Captum does; pass ``l1_reg=False`` to shap to compare),
and the random part of the budget is stratified by coalition size. Differences from Captum's
KernelShap: the constraint is exact (Captum weights the empty and full coalitions by 1e6), and
``sampler="paired"`` (default) enumerates small and large coalitions and pairs the rest, where
Captum draws independent coalitions (``sampler="plain"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.registry import register
from xailab.methods.perturbation.base import perturbation_card
from xailab.methods.perturbation.regression import constrained_wls
from xailab.methods.perturbation.sampling import (
    is_edge,
    shapley_kernel_coalitions,
    shapley_stream,
    shapley_stream_weights,
)
from xailab.methods.perturbation.shrinkage import edge_prior, shrink_to_edges
from xailab.methods.perturbation.superpixel import SuperpixelExplainer
from xailab.methods.perturbation.uncertainty import shapley_with_covariance


@register("kernel_shap", family="perturbation", aliases=("kernelshap", "shap"))
class KernelShap(SuperpixelExplainer):
    """KernelSHAP: Shapley values of superpixels by constrained least squares (Lundberg & Lee 2017).

    Args:
        num_samples: coalitions in the data set, the full and the empty one included (as Captum
            counts): ``num_samples - 1`` evaluations per image, fewer when coalitions repeat or
            all ``2^S - 2`` fit in the budget (then the values are exact). ``"auto"``: rounds of
            complement pairs whose sizes follow the kernel's mass exactly (stratified), until
            the ranking is stable to ``tol`` (see :mod:`~xailab.methods.perturbation.adaptive`).
        tol, max_samples, top_k: the ``"auto"`` stopping rule, see
            :class:`~xailab.methods.perturbation.superpixel.SuperpixelExplainer`.
        shrinkage: ``"auto"`` only. ``"none"`` (default): the regression's values. ``"edges"``:
            pulled toward the seed-free screening estimate of the enumerated edge coalitions by
            empirical Bayes, as far as their sampling noise warrants (see
            :mod:`~xailab.methods.perturbation.shrinkage`): far more stable from seed to seed
            at few samples, slightly biased toward the screen; stops earlier at the same ``tol``.
        segmentation, segmentation_params, hide_color, sampler: see
            :class:`~xailab.methods.perturbation.superpixel.SuperpixelExplainer`;
            ``hide_color`` is the baseline ``x_0``.
    """

    card = perturbation_card(
        "KernelSHAP",
        summary="Shapley values of superpixels estimated by a weighted least-squares regression "
                "with the Shapley kernel and the efficiency constraint (weights sum to S_c(x) − "
                "S_c(baseline)).",
        paper="Lundberg, Lee (2017), \"A Unified Approach to Interpreting Model Predictions\", "
              "NeurIPS.",
        where="NeurIPS 2017; any classifier.",
        cost="num_samples (default 1000) forward passes per image, shared by every target.",
        limits=(
            "Same segmentation dependence as LIME.",
            "Exact Shapley values need 2^M evaluations; the estimate is noisy with few samples.",
            "Removing a superpixel means filling it with a baseline, which is off-distribution.",
        ),
    )

    quick_params: ClassVar[dict[str, Any]] = {"num_samples": 48}
    intercept_name: ClassVar[str] = "base_value"

    def __init__(self, model: nn.Module, *, num_samples: int | Literal["auto"] = 1000,
                 shrinkage: Literal["none", "edges"] = "none", **kwargs: Any) -> None:
        super().__init__(model, num_samples=num_samples, **kwargs)
        if shrinkage not in ("none", "edges"):
            raise InputError(f"shrinkage must be 'none' or 'edges', not {shrinkage!r}")
        if shrinkage != "none" and self.num_samples != "auto":
            raise InputError("shrinkage='edges' needs num_samples='auto' (its rounds enumerate the edge coalitions)")
        self.shrinkage: Literal["none", "edges"] = shrinkage

    def params(self) -> dict[str, Any]:
        return {**super().params(), **({"shrinkage": self.shrinkage} if self.num_samples == "auto" else {})}

    def coalitions(self, n_segments: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        z, w = shapley_kernel_coalitions(self.budget - 2, n_segments, g, self.sampler)
        empty = torch.zeros(1, n_segments, dtype=torch.bool)  # row 0: x_0, evaluated, weight 0
        return torch.cat([empty, z]), torch.cat([torch.zeros(1, dtype=w.dtype), w])

    def fit(self, z: Tensor, w: Tensor, y: Tensor, clean: Tensor) -> tuple[Tensor, Tensor]:
        f_empty = y[0]
        phi = constrained_wls(z[1:], y[1:], w[1:], f_empty, clean)
        return phi, f_empty

    def coalition_stream(self, n_segments: int, g: torch.Generator) -> Iterator[Tensor]:
        yield torch.zeros(1, n_segments, dtype=torch.bool)  # x_0, evaluated, weight 0
        if n_segments >= 2:
            yield from shapley_stream(n_segments, g)

    def sample_weights(self, z: Tensor) -> Tensor:
        return z.any(dim=1).to(torch.float64)  # placeholders: the fit weighs the whole set

    def fit_with_covariance(self, z: Tensor, w: Tensor, y: Tensor, clean: Tensor,
                            clusters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        f_empty = y[0]
        zs = z[1:]
        w = shapley_stream_weights(zs)
        # the enumerated edge rows are the same for every seed: no sampling noise in the sandwich
        fixed = is_edge(zs) if int(is_edge(zs).sum()) == 2 * z.shape[1] else None
        phi, cov = shapley_with_covariance(zs, y[1:], w, f_empty, clean, clusters[1:], fixed=fixed)
        prior = edge_prior(zs, y[1:], f_empty, clean) if self.shrinkage == "edges" else None
        if prior is not None:
            phi, cov = shrink_to_edges(phi, cov, prior)
        return phi, f_empty, cov
