"""Concepts: what a layer has learned, in terms a person can look at.

* :mod:`.activations`: stream a layer's activations over an image set (hooked, batched,
  bounded memory); shared by every concept tool.
* :mod:`.nmf`: online non-negative matrix factorisation in torch.
* :mod:`.ice`: ICE concept discovery (Zhang et al. 2021): NMF concepts of a ReLU layer, concept
  maps, per-class importance and presence, fidelity (:mod:`xailab.jobs.ice` stores it all in a run).
* :mod:`.tcav`: TCAV with user concepts (Kim et al. 2018): CAVs, scores, significance test.

    basis = fit_ice(model, images, n_concepts=10, layer="layer3")
    res = run_tcav(model, "layer2", {"stripes": stripes}, random_sets, {3: cats})
"""

from xailab.concepts.activations import ActivationBatch, collect_activations, iter_activations
from xailab.concepts.ice import (
    ConceptBasis,
    ConceptMaps,
    ICEAnalysis,
    analyse_ice,
    explain_concepts,
    fidelity_curve,
    fit_concepts,
    fit_ice,
)
from xailab.concepts.nmf import OnlineNMF, nnls
from xailab.concepts.tcav import CAV, TCAVResult, run_tcav, tcav_score, tcav_to_run, train_cav

__all__ = [
    "CAV",
    "ActivationBatch",
    "ConceptBasis",
    "ConceptMaps",
    "ICEAnalysis",
    "OnlineNMF",
    "TCAVResult",
    "analyse_ice",
    "collect_activations",
    "explain_concepts",
    "fidelity_curve",
    "fit_concepts",
    "fit_ice",
    "iter_activations",
    "nnls",
    "run_tcav",
    "tcav_score",
    "tcav_to_run",
    "train_cav",
]
