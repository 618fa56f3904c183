"""ICE concepts over training: one basis fitted on the last epoch's model, its presence per class
at every epoch (``xailab learning --concepts K``).

The basis (``K`` NMF directions of the CAM layer, Zhang et al. 2021) is fitted once on the last
explained epoch and stored (array ``learning-ice-basis``); every epoch's activations are then
scored with it (:func:`xailab.concepts.ice_analysis.analyse_ice`), and table
``learning_concepts`` gets one part per epoch: a row per concept and class with its
presence (share of the class's images where the concept is present), mean score and
sensitivity. A fixed basis asks "when did the final model's concepts appear?"; early epochs
whose channels mean something else score low on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from xailab.runs.store import Run

BASIS = "learning-ice-basis"
TABLE = "learning_concepts"


def concepts_over_epochs(run: Run, model: Any, ckpts: dict[int, Path], epochs: Sequence[int], k: int, x: torch.Tensor,
                         labels: torch.Tensor, layer: str | None, log: Callable[[str], None]) -> None:
    """Fit (or reuse) the basis on the last epoch, then score each epoch not yet in the table."""
    from xailab.concepts.ice_analysis import analyse_ice
    from xailab.concepts.ice_basis import ConceptBasis, fit_ice
    from xailab.train.checkpoint import load_weights

    last = int(epochs[-1])
    info = dict((run.manifest.get("learning") or {}).get("concepts") or {})
    if run.has_chunk(BASIS, 0) and info.get("k") == k and info.get("epoch") == last:
        basis = ConceptBasis(info["layer"], torch.from_numpy(run.read_array(BASIS)), False, None, {})
    else:
        load_weights(ckpts[last], model)
        from xailab.jobs.ice import default_ice_layer

        basis = fit_ice(model.eval(), x, k, layer=layer if layer is not None else default_ice_layer(model)[0], seed=0)
        run.write_array(BASIS, basis.directions.numpy(), chunk=0)
        for part in run.table_parts(TABLE):  # scores of another basis
            (run.table_dir(TABLE) / f"{part}.parquet").unlink(missing_ok=True)
        run.update_manifest("learning", {**(run.manifest.get("learning") or {}),
                                         "concepts": {"k": k, "epoch": last, "layer": basis.layer}})
    from xailab.dynamics.history import class_names

    names = list(class_names(run)) or None
    done = {int(p) for p in run.table_parts(TABLE)}
    for e in epochs:
        if int(e) in done:
            continue
        load_weights(ckpts[int(e)], model)
        a = analyse_ice(model.eval(), basis, x, labels)
        t = a.importance_table(names)
        t.insert(0, "epoch", int(e))
        run.write_table(TABLE, t, part=int(e))
        log(f"epoch {e:3d}  concepts     presence of {k} concepts ({a.seconds:.1f} s)")
