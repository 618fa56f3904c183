"""LIME on superpixels (Ribeiro, Singh & Guestrin 2016, "Why should I trust you?", arXiv:1602.04938).

Coalitions ``z in {0,1}^S`` of superpixels are kept or hidden; the surrogate is lime's weighted
ridge regression of the scores on ``z``::

    min_{b, c}  sum_i pi(z_i) (f(x_{z_i}) - b - z_i . c)^2 + alpha |c|^2
    pi(z) = sqrt(exp(-d(z, 1)^2 / kernel_width^2))

with ``d`` the cosine distance between ``z`` and the all-ones coalition (lime's default,
``1 - sqrt(|z| / S)``), ``kernel_width = 0.25`` and ``alpha = 1`` as in lime's
``LimeImageExplainer`` / ``LimeBase`` (with its default ``num_features=100000`` lime's feature
selection keeps every superpixel, so the fit is this ridge on all of them). The map gives each
pixel its superpixel's signed weight ``c_s``.

    res = create("lime", model, num_samples=1000).explain(images, target="top1")
    res.maps.shape                 # [N, 1, H, W]
    res.extras["weights"][0, 0]    # superpixel weights of image 0 (zero-padded)

Differences from lime: the default segmentation is SLIC at a scale set by the image size (lime's
quickshift gives one or two superpixels on 32x32 images), the default sampler draws antithetic
pairs (same target, about half the samples for the same stability; ``sampler="plain"`` is lime's
scheme), the image itself is not re-evaluated, and every target is fitted from the same samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.methods.perturbation.base import perturbation_card
from xailab.methods.perturbation.regression import weighted_ridge
from xailab.methods.perturbation.sampling import lime_coalitions, lime_stream
from xailab.methods.perturbation.superpixel import SuperpixelExplainer
from xailab.methods.perturbation.uncertainty import ridge_with_covariance

Distance = Literal["cosine", "euclidean", "hamming", "manhattan"]
DISTANCES = ("cosine", "euclidean", "hamming", "manhattan")


def lime_kernel(z: Tensor, kernel_width: float, distance: Distance = "cosine") -> Tensor:
    """lime's sample weights ``sqrt(exp(-d(z, 1)^2 / width^2))`` for coalitions ``z [n, S]``."""
    s = z.shape[1]
    k = z.sum(dim=1).to(torch.float64)
    if distance == "cosine":  # 1 - z.1 / (|z| |1|); a zero row is at distance 1 (as in scikit-learn)
        d = 1.0 - (k / s).sqrt()
    elif distance == "euclidean":
        d = (s - k).sqrt()
    elif distance == "hamming":
        d = (s - k) / s
    else:
        d = s - k
    return torch.exp(-(d**2) / kernel_width**2).sqrt()


@register("lime", family="perturbation")
class Lime(SuperpixelExplainer):
    """LIME: a weighted ridge fit of the score on superpixels kept or hidden (Ribeiro et al. 2016).

    Args:
        num_samples, tol, max_samples, top_k, segmentation, segmentation_params, hide_color,
            sampler: see
            :class:`~xailab.methods.perturbation.superpixel.SuperpixelExplainer`.
        kernel_width: width of the exponential kernel on the distance (lime: 0.25).
        distance: ``"cosine"`` (lime's default), ``"euclidean"``, ``"hamming"`` or ``"manhattan"``
            between a coalition and the all-ones coalition.
        alpha: ridge penalty (lime: 1.0; 0 is weighted least squares).
    """

    card = perturbation_card(
        "LIME",
        summary="Superpixels are switched on and off at random; a weighted ridge regression "
                "(weights from a kernel on the distance to the original) of the class score on "
                "the on/off pattern gives each superpixel a weight.",
        paper="Ribeiro, Singh, Guestrin (2016), \"'Why Should I Trust You?': Explaining the "
              "Predictions of Any Classifier\", KDD.",
        where="KDD 2016; any classifier.",
        cost="num_samples (default 1000) forward passes per image, shared by every target.",
        limits=(
            "Depends on the segmentation: superpixels that cut across the object give misleading "
            "maps, and the map can never be finer than the segments.",
            "Depends on sampling: with few samples the weights change from seed to seed.",
            "The kernel width and regression settings are heuristics with no principled default.",
        ),
    )

    quick_params: ClassVar[dict[str, Any]] = {"num_samples": 48}
    ranges: ClassVar[dict[str, Limit]] = {"alpha": (0, None)}

    def __init__(
        self,
        model: nn.Module,
        *,
        num_samples: int | Literal["auto"] = 1000,
        kernel_width: float = 0.25,
        distance: Distance = "cosine",
        alpha: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, num_samples=num_samples, **kwargs)
        if distance not in DISTANCES:
            raise InputError(f"distance must be one of {', '.join(DISTANCES)}, not {distance!r}")
        if kernel_width <= 0:
            raise InputError(f"kernel_width must be > 0, got {kernel_width}")
        if alpha < 0:
            raise InputError(f"alpha must be >= 0, got {alpha}")
        self.kernel_width = float(kernel_width)
        self.distance: Distance = distance
        self.alpha = float(alpha)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "kernel_width": self.kernel_width, "distance": self.distance,
                "alpha": self.alpha}

    def coalitions(self, n_segments: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
        z = lime_coalitions(self.budget, n_segments, g, self.sampler)
        return z, lime_kernel(z, self.kernel_width, self.distance)

    def fit(self, z: Tensor, w: Tensor, y: Tensor, clean: Tensor) -> tuple[Tensor, Tensor]:
        return weighted_ridge(z, y, w, self.alpha)

    def coalition_stream(self, n_segments: int, g: torch.Generator) -> Iterator[Tensor]:
        if self.sampler == "plain":
            return _plain_stream(n_segments, g)
        return lime_stream(n_segments, g)

    def sample_weights(self, z: Tensor) -> Tensor:
        return lime_kernel(z, self.kernel_width, self.distance)

    def fit_with_covariance(self, z: Tensor, w: Tensor, y: Tensor, clean: Tensor,
                            clusters: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return ridge_with_covariance(z, y, w, self.alpha, clusters)


def _plain_stream(n_features: int, g: torch.Generator) -> Iterator[Tensor]:
    """lime's own scheme in rounds: the all-ones row, then fair coins (rows paired only as
    clusters of the covariance, which independent rows do not need)."""
    yield torch.ones(1, n_features, dtype=torch.bool)
    while True:
        yield torch.rand(64, n_features, generator=g, dtype=torch.float64) < 0.5
