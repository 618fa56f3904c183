"""Measuring explanations: agreement between methods, faithfulness, sanity, sensitivity and
localisation, and the per-run scoreboard (see docs/metrics.md).

Every metric takes maps as an :class:`~xailab.core.explanation.Explanation` or a tensor
``[N, H, W]`` / ``[N, C, H, W]`` and returns one score per image, computed for all images at once.

    from xailab import metrics
    metrics.iou(saliency, gradcam, top=0.1)                  # [N] overlap of the top 10 %
    metrics.deletion(model, images, saliency).auc            # [N], lower is better
    metrics.road(model, images, saliency).auc                # [N], lower is better (imputed, not filled)
    metrics.infidelity(model, images, saliency)              # [N], lower is better
    metrics.irof(model, images, saliency)                    # [N], higher is better (superpixels)
    metrics.randomisation_test(model, images, "saliency").flagged
    metrics.pointing_game(saliency, masks).mean()
"""

from xailab.metrics.agreement import (
    agreement_matrix,
    image_ranking,
    iou,
    kendall,
    pairwise,
    pearson,
    spearman,
    top_region,
)
from xailab.metrics.calibration_maps import edge_explain, edge_maps, random_explain, random_maps
from xailab.metrics.distribution import Histogram, histogram, scatter_data
from xailab.metrics.faithfulness import Curves, deletion, faithfulness_correlation, insertion
from xailab.metrics.infidelity import infidelity, infidelity_drops
from xailab.metrics.irof import irof
from xailab.metrics.localisation import pointing_game, relevance_mass, relevance_rank
from xailab.metrics.road import road
from xailab.metrics.sanity import SanityResult, randomisation_test
from xailab.metrics.sensitivity import max_sensitivity
from xailab.metrics.sensitivity_n import sensitivity_n
from xailab.metrics.ssim import ssim

__all__ = [
    "Curves",
    "Histogram",
    "SanityResult",
    "agreement_matrix",
    "deletion",
    "edge_explain",
    "edge_maps",
    "faithfulness_correlation",
    "histogram",
    "image_ranking",
    "infidelity",
    "infidelity_drops",
    "insertion",
    "iou",
    "irof",
    "kendall",
    "max_sensitivity",
    "pairwise",
    "pearson",
    "pointing_game",
    "random_explain",
    "random_maps",
    "randomisation_test",
    "relevance_mass",
    "relevance_rank",
    "road",
    "scatter_data",
    "sensitivity_n",
    "spearman",
    "ssim",
    "top_region",
]
