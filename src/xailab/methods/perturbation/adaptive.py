"""``num_samples="auto"``: LIME and KernelSHAP sample in rounds until the ranking is stable.

Each image draws its coalitions from its own stream (its generator, seeded by the image's index,
so the draws do not depend on ``batch_size`` or on the other images of the chunk). A round adds
samples to every image still running; their copies share forward passes as in the fixed mode.
After each round every running image refits its surrogate, estimates the covariance of the
weights and the rank error ``1 - E[rho]`` between two independent re-estimates
(:mod:`~xailab.methods.perturbation.uncertainty`) and stops when that error is at most ``tol``
or it has ``max_samples`` samples. The first round has ``2 (S + 16) + 1`` samples (the sandwich
needs more pairs than weights), later rounds add a quarter of what an image has (at least 32), so
an image stops at most a quarter past the point it needed.

A coalition drawn again is not evaluated again (its score is copied; it still counts as a sample
of the fit, as a duplicate draw does), and the coalition that keeps everything is the image
itself, scored by the first pass. Rows come as a lead row (LIME: the image; KernelSHAP: the
empty coalition) and then complement pairs; each pair is one cluster of the covariance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from xailab.methods.perturbation.uncertainty import rank_error

_F64 = torch.float64

Fit = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
Evaluate = Callable[[list[Tensor]], None]


@dataclass
class ImageSamples:
    """One image's samples so far; ``y`` holds scores ``[n, T]`` once evaluated."""

    stream: Iterator[Tensor]
    weigh: Callable[[Tensor], Tensor]
    clean: Tensor
    z: Tensor
    w: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=_F64))
    y: Tensor = field(default_factory=lambda: torch.zeros(0, 0, dtype=_F64))
    source: list[int] = field(default_factory=list)
    seen: dict[bytes, int] = field(default_factory=dict)
    buffer: Tensor | None = None
    evaluated: int = 0
    error: float = float("inf")
    done: bool = False
    fitted: tuple[Tensor, Tensor, Tensor] | None = None

    def __post_init__(self) -> None:
        self.y = torch.zeros(0, len(self.clean), dtype=_F64)

    def take(self, n: int) -> Tensor:
        """The next ``n`` rows of the stream."""
        parts, have = [], 0
        while have < n:
            if self.buffer is None or len(self.buffer) == 0:
                self.buffer = next(self.stream)
            part = self.buffer[: n - have]
            self.buffer = self.buffer[n - have :]
            parts.append(part)
            have += len(part)
        return torch.cat(parts)

    def add(self, n: int) -> Tensor:
        """Append ``n`` rows; the indices of those that need a forward pass (new coalitions)."""
        z = self.take(n)
        start = len(self.z)
        self.z = torch.cat([self.z, z])
        self.w = torch.cat([self.w, self.weigh(z).to(_F64)])
        self.y = torch.cat([self.y, torch.zeros(n, len(self.clean), dtype=_F64)])
        todo = []
        for i, row in enumerate(z):
            key = row.numpy().tobytes()
            if bool(row.all()):
                self.y[start + i] = self.clean
                self.source.append(start + i)
            elif key in self.seen:
                self.source.append(self.seen[key])
            else:
                self.seen[key] = start + i
                self.source.append(start + i)
                todo.append(start + i)
        self.evaluated += len(todo)
        return torch.tensor(todo, dtype=torch.long)

    def copy_duplicates(self) -> None:
        src = torch.tensor(self.source, dtype=torch.long)
        self.y = self.y[src]


@dataclass(frozen=True)
class Schedule:
    """How many samples a round adds and when an image stops."""

    tol: float
    max_samples: int
    top_k: int | None = None

    def next_round(self, have: int, n_features: int) -> int:
        if have == 0:  # enough pairs for the covariance: 16 degrees of freedom beyond the weights
            return min(self.max_samples, 1 + 2 * (n_features + 16))
        step = 2 * max(16, have // 8)
        return max(0, min(step, self.max_samples - have))


def sample_in_rounds(states: list[ImageSamples], gens: list[torch.Generator], schedule: Schedule,
                     fit: Fit, evaluate: Evaluate) -> None:
    """Run rounds until every image is done; each state's ``fitted`` is ``(coef, intercept, cov)``."""
    while not all(st.done for st in states):
        todo = []
        for st in states:
            n = 0 if st.done else schedule.next_round(len(st.z), st.z.shape[1])
            todo.append(st.add(n) if n else torch.zeros(0, dtype=torch.long))
        evaluate(todo)
        for st, g in zip(states, gens, strict=True):
            if st.done:
                continue
            st.copy_duplicates()
            clusters = (torch.tensor(st.source) + 1) // 2  # the lead row, pairs (a repeat joins its first)
            coef, intercept, cov = fit(st.z, st.w, st.y, st.clean, clusters)
            st.fitted = (coef, intercept, cov)
            st.error = float(rank_error(coef, cov, g, top_k=schedule.top_k).max()) if len(coef) else 0.0
            st.done = st.error <= schedule.tol or len(st.z) >= schedule.max_samples
