"""Coalition samplers: which superpixels are kept (``True``) in each perturbed sample.

LIME and KernelSHAP fit a linear model to the scores of ``n`` random coalitions ``z in {0,1}^S``;
the spread of that fit over seeds is what costs samples. Each method has two samplers: the
reference one (``"plain"``) and a variance-reduced one with the same target (``"paired"``, the
default), which reaches the stability of 1,000 plain samples with about half as many (see
``bench/bench_perturbation.py`` and docs/methods/perturbation.md).

LIME (the target: lime's weighted ridge fit under ``z ~ Uniform{0,1}^S``):

* ``plain``: every bit a fair coin (lime's ``randint(0, 2)``), the first row all ones.
* ``paired``: the same uniform marginal, drawn from a randomised orthogonal array of strength 3:
  blocks of ``2^p >= 2S`` rows of a Sylvester-Hadamard matrix on ``S`` random odd columns, each
  column's bits flipped by a fair coin. Every row is uniform on ``{0,1}^S`` (lime's distribution,
  so the fit has lime's target), rows come in complement pairs ``(z, 1 - z)``, and in a block
  every superpixel is kept in exactly half the rows and every two superpixels together in exactly
  a quarter. The pairs cancel the even part of the score (pairwise interactions) in the fit, up to
  the small difference of the two kernel weights; the pairwise balance removes the leak of
  third-order interactions through uneven co-occurrence, which pairs alone leave (on the trained
  CIFAR ResNet-20, 12 images: seed-to-seed rank correlation 0.953 with 500 pairs alone, 0.960
  with the array, 0.961 with 1,000 plain samples).

KernelSHAP (the target: the Shapley kernel ``pi(z) = (S-1) / (C(S,|z|) |z| (S-|z|))``):

* ``plain``: sizes drawn independently from ``p(k) ~ (S-1) / (k (S-k))``, a uniform subset of
  that size, equal weights (Captum's KernelShap).
* ``paired``: shap's KernelExplainer scheme: the sizes whose coalitions all fit in the budget
  (smallest and largest first) are enumerated with their exact kernel weights; the rest of the
  budget goes to complement pairs ``(z, 1 - z)`` with stratified sizes, duplicates merged (their
  weights added, no second evaluation) and the budget they free drawn again. When the budget
  covers all ``2^S - 2`` coalitions the result is the exact Shapley value. The Shapley kernel is
  symmetric (``pi(z) = pi(1 - z)``), so here the pairs cancel the even part of the score exactly.

Every draw comes from the given ``torch.Generator``, so a seed fixes the coalitions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor

Sampler = Literal["paired", "plain"]
SAMPLERS = ("paired", "plain")
_F64 = torch.float64


def random_subsets(sizes: Tensor, n_features: int, g: torch.Generator) -> Tensor:
    """``[m, S]`` bool rows, row ``i`` a uniformly random subset of ``sizes[i]`` features."""
    r = torch.rand(len(sizes), n_features, generator=g, dtype=_F64)
    ranks = r.argsort(dim=1).argsort(dim=1)
    return ranks < sizes.reshape(-1, 1)


def stratified(probs: Tensor, m: int, g: torch.Generator) -> Tensor:
    """``m`` indices into ``probs`` by systematic sampling: index ``k`` appears ``m p_k`` times, rounded."""
    cdf = probs.to(_F64).cumsum(0)
    u = (torch.arange(m, dtype=_F64) + torch.rand(1, generator=g, dtype=_F64)) / m * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp(max=len(probs) - 1)


def _log_binom(n: int, k: Tensor) -> Tensor:
    k = k.to(_F64)
    return math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)


def lime_coalitions(n: int, n_features: int, g: torch.Generator, sampler: Sampler = "paired") -> Tensor:
    """``[n, S]`` bool coalitions for LIME; row 0 keeps everything (the image itself), as in lime."""
    s = n_features
    if sampler == "plain":
        z = torch.rand(n, s, generator=g, dtype=_F64) < 0.5
    else:
        z = torch.cat([torch.ones(1, s, dtype=torch.bool), orthogonal_pairs(n - 1, s, g)])
    z[0] = True
    return z


def orthogonal_pairs(n: int, n_features: int, g: torch.Generator) -> Tensor:
    """``[n, S]`` rows of randomised strength-3 orthogonal arrays, in complement pairs.

    Block of ``R = 2^p`` rows (the least ``p`` with ``2^(p-1) >= S``): row ``u``, column ``j`` is the
    parity of ``u & v_j`` XOR ``flip_j``, with ``v_j`` distinct random odd numbers below ``R`` and
    ``flip_j`` fair coins. Odd ``v_j`` make rows ``u`` and ``u ^ 1`` complements; distinct ``v_j``
    make every two columns balanced (the Hadamard matrix's orthogonality). Pairs are taken in a
    random order, so a last partial block is a random subset of whole pairs.
    """
    s = n_features
    p = 1
    while 2 ** (p - 1) < s:
        p += 1
    rows = torch.arange(2**p)
    odd = torch.arange(2 ** (p - 1)) * 2 + 1
    blocks = []
    for _ in range(math.ceil(n / 2**p)):
        v = odd[torch.randperm(len(odd), generator=g)[:s]]
        flip = torch.rand(s, generator=g, dtype=_F64) < 0.5
        both = rows[:, None] & v[None, :]
        parity = torch.zeros_like(both)
        for bit in range(p):
            parity ^= (both >> bit) & 1
        z = (parity == 1) ^ flip
        order = torch.randperm(2 ** (p - 1), generator=g)
        blocks.append(torch.stack([z[2 * order], z[2 * order + 1]], dim=1).reshape(2**p, s))
    return torch.cat(blocks)[:n] if blocks else torch.zeros(0, s, dtype=torch.bool)


def shapley_kernel_coalitions(budget: int, n_features: int, g: torch.Generator,
                              sampler: Sampler = "paired") -> tuple[Tensor, Tensor]:
    """At most ``budget`` coalitions (never empty, never full) and their kernel weights (sum 1)."""
    s = n_features
    if s < 2 or budget < 1:
        return torch.zeros(0, s, dtype=torch.bool), torch.zeros(0, dtype=_F64)
    sizes = torch.arange(1, s, dtype=_F64)
    size_mass = (s - 1) / (sizes * (s - sizes))  # kernel mass of all coalitions of each size
    if sampler == "plain":
        k = torch.multinomial(size_mass, budget, replacement=True, generator=g) + 1
        return random_subsets(k, s, g), torch.full((budget,), 1.0 / budget, dtype=_F64)
    if s <= 24 and budget >= 2**s - 2:
        return _all_coalitions(s)
    return _paired(budget, s, g)


def _all_coalitions(s: int) -> tuple[Tensor, Tensor]:
    codes = torch.arange(1, 2**s - 1, dtype=torch.long)
    z = (codes.reshape(-1, 1) >> torch.arange(s)) & 1 == 1
    k = z.sum(1).to(_F64)
    w = torch.exp(math.log(s - 1) - _log_binom(s, k) - torch.log(k * (s - k)))
    return z, w / w.sum()


def _paired(budget: int, s: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """shap's KernelExplainer sampling: enumerate what fits, complement pairs for the rest."""
    n_sizes = math.ceil((s - 1) / 2)  # sizes 1..n_sizes stand for themselves and s - size
    n_paired = (s - 1) // 2  # sizes whose complement has another size
    weight = torch.tensor([(s - 1) / (k * (s - k)) for k in range(1, n_sizes + 1)], dtype=_F64)
    weight[:n_paired] *= 2
    weight /= weight.sum()
    rows: list[Tensor] = []
    weights: list[Tensor] = []
    left = budget
    remaining = weight.clone()
    full = 0
    for size in range(1, n_sizes + 1):
        paired = size <= n_paired
        n_subsets = math.comb(s, size) * (2 if paired else 1)
        if left * float(remaining[size - 1]) / n_subsets < 1.0 - 1e-8:
            break
        full += 1
        left -= n_subsets
        if remaining[size - 1] < 1.0:
            remaining /= 1.0 - remaining[size - 1]
        z = torch.zeros(math.comb(s, size), s, dtype=torch.bool)
        for i, idx in enumerate(itertools.combinations(range(s), size)):
            z[i, list(idx)] = True
        if paired:
            z = torch.cat([z, ~z])
        rows.append(z)
        w = float(weight[size - 1]) / n_subsets
        weights.append(torch.full((len(z),), w, dtype=_F64))
    if full < n_sizes and left > 0:
        # complement pairs with stratified sizes; a coalition drawn twice is evaluated once and
        # weighs twice; rounds refill the budget that duplicates left unused (as shap does)
        drawn: list[Tensor] = []
        unique = 0
        for _ in range(4):
            want = left - unique
            if want <= 0:
                break
            draws = (want + 1) // 2
            sizes = stratified(weight[full:], draws, g) + full + 1
            half = random_subsets(sizes, s, g)
            drawn.append(torch.stack([half, ~half], dim=1).reshape(2 * draws, s)[:want])
            unique = len(torch.unique(torch.cat(drawn), dim=0))
        z, inverse = torch.unique(torch.cat(drawn), dim=0, return_inverse=True)
        counts = torch.zeros(len(z), dtype=_F64).index_add_(0, inverse, torch.ones(len(inverse), dtype=_F64))
        rows.append(z)
        weights.append(counts * float(weight[full:].sum()) / len(inverse))
    return torch.cat(rows), torch.cat(weights)


def lime_stream(n_features: int, g: torch.Generator) -> Iterator[Tensor]:
    """LIME's paired coalitions for sampling in rounds: the all-ones row, then whole blocks of
    :func:`orthogonal_pairs` (complement pairs, each block balanced), one block at a time."""
    s = n_features
    yield torch.ones(1, s, dtype=torch.bool)
    p = 1
    while 2 ** (p - 1) < s:
        p += 1
    while True:
        yield orthogonal_pairs(2**p, s, g)


def shapley_stream(n_features: int, g: torch.Generator, pairs: int = 64) -> Iterator[Tensor]:
    """KernelSHAP's coalitions for sampling in rounds: the edges enumerated, the rest drawn.

    With ``S >= 4`` superpixels the stream starts with the ``2 S`` coalitions of one superpixel
    and of all but one (:func:`edge_coalitions`: the sizes that carry the most kernel weight per
    coalition, a fifth of the kernel's mass at ``S = 50``; shap's fixed budget enumerates them
    too), as complement pairs ``({i}, 1 - {i})`` in a random order. Then chunks of ``pairs``
    complement pairs ``(z, 1 - z)`` of the other sizes: the sizes of a chunk are allocated to the
    kernel's mass of each size exactly (systematic sampling, :func:`stratified`, the pair of sizes
    ``k`` and ``S - k`` counted together), each ``z`` a uniform subset of its size, the pairs in a
    random order (so a round that takes part of a chunk is not biased to some sizes). Drawn in
    proportion to the kernel, every drawn row weighs the same in the fit; the enumerated rows
    share the mass of their sizes (:func:`shapley_stream_weights`). With ``S < 4`` every size is
    an edge, and all rows are drawn.
    """
    s = n_features
    n_sizes = math.ceil((s - 1) / 2)
    weight = torch.tensor([(s - 1) / (k * (s - k)) for k in range(1, n_sizes + 1)], dtype=_F64)
    weight[: (s - 1) // 2] *= 2  # sizes k < S/2 stand for k and S - k
    first = 1 if s >= 4 else 0  # the sizes drawn start after the enumerated edge
    if first:
        order = torch.randperm(s, generator=g)
        single = torch.zeros(s, s, dtype=torch.bool)
        single[torch.arange(s), order] = True
        yield torch.stack([single, ~single], dim=1).reshape(2 * s, s)
    while True:
        sizes = stratified(weight[first:], pairs, g) + 1 + first
        half = random_subsets(sizes[torch.randperm(pairs, generator=g)], s, g)
        yield torch.stack([half, ~half], dim=1).reshape(2 * pairs, s)


def is_edge(z: Tensor) -> Tensor:
    """``[n]`` bool: the rows :func:`shapley_stream` enumerates (one superpixel kept or hidden; ``S >= 4``)."""
    s = z.shape[1]
    k = z.sum(1)
    return ((k == 1) | (k == s - 1)) if s >= 4 else torch.zeros(len(z), dtype=torch.bool)


def shapley_stream_weights(z: Tensor) -> Tensor:
    """``[n]`` fit weights of :func:`shapley_stream`'s rows (summing to 1): the enumerated edge
    rows share the kernel mass of sizes ``1`` and ``S - 1`` equally, the drawn rows (already in
    proportion to the kernel) share the rest equally."""
    s = z.shape[1]
    edge = is_edge(z)
    if s < 4 or not bool(edge.any()) or bool(edge.all()):
        return torch.full((len(z),), 1.0 / max(len(z), 1), dtype=_F64)
    sizes = torch.arange(1, s, dtype=_F64)
    mass = (s - 1) / (sizes * (s - sizes))
    edge_mass = float((mass[0] + mass[-1]) / mass.sum())
    n_edge = int(edge.sum())
    # a partial enumeration (a budget below 2 S) is a random subset of the edge pairs: still
    # in proportion, each present edge row carries its share of the edge mass
    w = torch.full((len(z),), (1.0 - edge_mass) / (len(z) - n_edge), dtype=_F64)
    w[edge] = edge_mass / n_edge
    return w
