"""The chunk loop LRP and AttnLRP share: (image, target) rows, one forward pass per backward pass.

A relevance method's rules keep state between a forward pass and its backward pass, so each
slice of at most ``batch_size`` rows gets its own pair. The loop records every row's input
relevance sum and explained score: the explanation's extras ``relevance_sum`` and ``score``
(conservation: the two agree when every layer's rule conserves relevance).
"""

from __future__ import annotations

import torch
from torch import Tensor

from xailab.core.explainer import Explainer, RowTargets, cat, repeat_rows


class RelevanceRows(Explainer):
    """A one-pass explainer whose subclass computes the relevance of a slice of rows
    (:meth:`_relevance`); the chunk loop, the sums and the extras are here."""

    one_pass = True
    _sums: list[Tensor]
    _scores: list[Tensor]

    def _relevance(self, rows: Tensor, targets: RowTargets, first_row: int) -> tuple[Tensor, Tensor]:
        """Input relevance ``[M, ...]`` and explained score ``[M]`` for the rows ``first_row ..``."""
        raise NotImplementedError

    def _rows_done(self, rel_sum: Tensor, score: Tensor) -> None:
        """Called with a chunk's relevance sums and scores ``[B, T]`` (e.g. to warn when they differ)."""

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        return self._explain_rows(x, RowTargets.known(targets))

    def _explain_rows(self, x: Tensor, rows: RowTargets) -> Tensor:
        b, t = rows.shape
        xs = repeat_rows(x, t)  # (image, target) rows
        maps, sums, scores = [], [], []
        for lo in range(0, len(xs), self.batch_size):  # one forward per backward: rules keep state
            rel, score = self._relevance(xs[lo : lo + self.batch_size], rows, lo)
            maps.append(rel)
            sums.append(rel.flatten(1).sum(1))
            scores.append(score)
        rel_sum, score = torch.cat(sums).reshape(b, t), torch.cat(scores).reshape(b, t)
        self._sums.append(rel_sum.detach().cpu())
        self._scores.append(score.detach().cpu())
        self._rows_done(rel_sum, score)
        return cat(maps).reshape(b, t, *x.shape[1:])

    def _extras(self) -> dict[str, Tensor]:
        if not self._sums:
            return {}
        return {"relevance_sum": torch.cat(self._sums), "score": torch.cat(self._scores)}
