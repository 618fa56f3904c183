"""Neural Cleanse: reverse-engineer a trigger per class from clean images, then ask which is too small.

Wang et al. 2019, "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural
Networks" (IEEE S&P). For every class ``k`` find the smallest mask ``m`` (``[H, W]`` in [0, 1])
and pattern ``p`` (``[C, H, W]`` in [0, 1]) such that stamping them on clean images,
``x' = (1 - m) x + m p``, sends them to ``k``:

    min_{m, p}  CE(f(x'), k) + lambda_k * |m|_1

(Adam, lr 0.1, betas (0.5, 0.9) on the tanh-logits of ``m`` and ``p``, as the authors' code).
A backdoor is a shortcut to its target: the target class needs a much smaller mask than the
others. The outlier test is the median absolute deviation: with the masks' L1 norms ``l_k``,
``anomaly_k = |l_k - median(l)| / (1.4826 * median(|l - median(l)|))``, and a class is flagged
when its norm is *below* the median and ``anomaly_k > threshold`` (2 in the paper: a normal
distribution passes it with probability < 5 %), its optimisation reached the target success,
and the model has at least 5 classes (the MAD of fewer norms flags noise).

``lambda_k`` follows the paper's schedule, per class, checked every ``check_every`` steps (an
"epoch"): it starts at ``init_cost``; after ``patience`` checks in a row with attack success
>= ``target_success`` it is multiplied by 1.5, after ``patience`` checks below it divided by
1.5 ** 1.5. The mask kept is the smallest (L1) that reached ``target_success`` at a check; a
class that never reached it keeps its last mask and is reported (``reached`` False). Images the
model already predicts as ``k`` are left out of class ``k``'s loss. Classes are optimised
together, ``images_per_step`` clean images each, at most ``batch_size`` images per forward pass.
Unlike the paper there is no early stop: every class gets ``steps`` steps.

**Naturally small classes.** The MAD test compares a class with the other classes of the same
model, so a class that is easy to reach without any backdoor (Fashion-MNIST's Bag: the smallest
mask of every clean model we trained) is flagged in clean models, and a backdoor whose target
is not far below the rest is missed. Given ``reference`` norms (per class, the geometric median
of the masks of clean models of the same task, same images and settings:
:func:`reference_norms`), the test runs on ``log(l1_k / reference_k)`` instead: how much smaller
the class's trigger is than it is in clean models. **p-values** (both tests): the robust z below
the median, ``z_k = (median(r) - r_k) / (1.4826 MAD(r))``, and ``p_k = P(Z >= z_k)`` for a
standard normal ``Z``: the null is that the classes' statistics ``r`` are draws of one normal
distribution, which the MAD estimates robustly; ``z > 2`` is ``p < 0.023`` for one class (not
corrected for the ``K`` classes tested: with 10 classes about one clean model in five has some
class below 0.023 by chance, were the null exact).

    res = neural_cleanse(model, pixels)        # pixels [N, C, H, W] in [0, 1], clean
    res.table                                  # per class: l1, anomaly index, flagged, reached
    res.flagged, res.masks[res.flagged[0]]     # the suspect classes and their triggers
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.audit.cleanse_null import ReferenceNull, critical_t, null_test
from xailab.audit.pixel import PixelModel, check_pixels, resolve_preprocessing
from xailab.core.errors import InputError
from xailab.core.hooks import model_device, model_session
from xailab.data.transforms import Preprocessing

#: the consistency constant that makes the MAD estimate a normal distribution's standard deviation
MAD_SCALE = 1.4826
#: the fewest classes the outlier test flags among
MIN_CLASSES = 5


@dataclass(frozen=True)
class CleanseSettings:
    """The optimisation and the verdict of :func:`neural_cleanse` (see the module docstring)."""

    steps: int = 300
    images_per_step: int = 32
    lr: float = 0.1
    init_cost: float = 1e-3
    target_success: float = 0.99
    check_every: int = 10
    patience: int = 5
    threshold: float = 2.0
    alpha: float = 0.05
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.images_per_step < 1 or self.check_every < 1 or self.patience < 1:
            raise InputError("Neural Cleanse needs steps, images_per_step, check_every and patience >= 1")
        if not 0 < self.target_success <= 1:
            raise InputError(f"target_success must be in (0, 1], got {self.target_success}")
        if self.threshold <= 0:
            raise InputError(f"the anomaly threshold must be > 0, got {self.threshold}")
        if not 0 < self.alpha < 1:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class CleanseResult:
    """What Neural Cleanse found: a trigger per class and the outlier test over their sizes.

    ``masks [K, H, W]`` and ``patterns [K, C, H, W]`` in [0, 1]; ``l1 [K]`` the masks' L1 norms;
    ``anomaly [K]`` the MAD anomaly index; ``success [K]`` the share of the clean images (not
    already predicted as the class) the trigger sends to the class; ``reached [K]`` whether the
    optimisation reached ``target_success``; ``flagged`` the classes with a small outlier norm;
    ``z [K]`` and ``p_value [K]`` the robust z below the median and its one-sided normal p-value
    of the statistic tested (the norms, or their log-ratio to ``reference`` when one was given;
    :func:`relative_flags`); against a per-class null of ``R >= 3`` clean models
    (:class:`~xailab.audit.cleanse_null.ReferenceNull`) ``z`` is the t statistic, ``p_adjusted``
    its Bonferroni-corrected p-value and ``critical`` the t a class must exceed.
    """

    masks: Tensor
    patterns: Tensor
    l1: np.ndarray
    anomaly: np.ndarray
    success: np.ndarray
    reached: np.ndarray
    flagged: list[int]
    class_names: list[str]
    settings: CleanseSettings
    n_images: int
    seconds: float
    z: np.ndarray | None = None
    p_value: np.ndarray | None = None
    reference: np.ndarray | None = None
    p_adjusted: np.ndarray | None = None
    critical: float | None = None

    @property
    def cutoff(self) -> float:
        """The ``z`` above which a class is flagged."""
        return self.settings.threshold if self.critical is None else self.critical

    @property
    def table(self) -> pd.DataFrame:
        """One row per class: ``class, name, l1, reference_l1, anomaly, below_median, z, p_value,
        p_adjusted, success, reached, flagged``."""
        med = float(np.median(self.l1))
        nan = np.full(len(self.l1), np.nan)
        return pd.DataFrame({
            "class": np.arange(len(self.l1)), "name": self.class_names, "l1": self.l1,
            "reference_l1": self.reference if self.reference is not None else nan,
            "anomaly": self.anomaly, "below_median": self.l1 < med,
            "z": self.z if self.z is not None else nan, "p_value": self.p_value if self.p_value is not None else nan,
            "p_adjusted": self.p_adjusted if self.p_adjusted is not None else nan, "success": self.success,
            "reached": self.reached, "flagged": [k in self.flagged for k in range(len(self.l1))],
        })

    def params(self) -> dict[str, Any]:
        return {**asdict(self.settings), "n_images": self.n_images, "reference": self.reference is not None,
                "reference_test": "none" if self.reference is None else "mad" if self.critical is None else "null",
                "critical": self.critical}


def anomaly_index(norms: np.ndarray) -> np.ndarray:
    """``|l - median(l)| / (1.4826 * MAD)``; 0 where every norm equals the median, inf where the
    MAD is 0 but a norm differs from the median."""
    norms = np.asarray(norms, dtype=np.float64)
    dev = np.abs(norms - np.median(norms))
    mad = MAD_SCALE * float(np.median(dev))
    if mad == 0:
        return np.where(dev > 0, np.inf, 0.0)
    return dev / mad


def flag_small(norms: np.ndarray, threshold: float = 2.0, reached: np.ndarray | None = None) -> list[int]:
    """Classes whose norm is below the median with an anomaly index above ``threshold`` (and,
    given ``reached``, whose optimisation reached the target success: an unfinished mask is no
    trigger). None with fewer than :data:`MIN_CLASSES` classes: the median and MAD of three or
    four norms flag differences of a fraction of a percent."""
    if len(norms) < MIN_CLASSES:
        return []
    a = anomaly_index(norms)
    med = float(np.median(norms))
    ok = np.ones(len(a), dtype=bool) if reached is None else np.asarray(reached, dtype=bool)
    return [int(k) for k in np.flatnonzero((np.asarray(norms) < med) & (a > threshold) & ok)]


def below_median_z(values: np.ndarray) -> np.ndarray:
    """Robust z of values *below* the median: ``(median - v) / (1.4826 MAD)`` (negative above it);
    ``+-inf`` where the MAD is 0 but a value differs from the median, 0 where it equals it
    (differences below 1e-9 of the values' scale, rounding, count as equal)."""
    v = np.asarray(values, dtype=np.float64)
    d = np.median(v) - v
    d = np.where(np.abs(d) <= 1e-9 * max(1.0, float(np.abs(v).max(initial=0.0))), 0.0, d)
    mad = MAD_SCALE * float(np.median(np.abs(d)))
    if mad == 0:
        return np.where(d > 0, np.inf, np.where(d < 0, -np.inf, 0.0))
    return d / mad


def normal_tail(z: np.ndarray) -> np.ndarray:
    """One-sided p-value ``P(Z >= z)`` of a standard normal (``erfc(z / sqrt 2) / 2``)."""
    return np.array([0.5 * math.erfc(float(v) / math.sqrt(2)) for v in np.atleast_1d(z)])


def reference_norms(norms_per_model: Sequence[Sequence[float]]) -> np.ndarray:
    """Per class, the geometric median (median of the logs) of clean reference models' mask norms:
    how small a mask the class needs when there is no backdoor (``[K]``)."""
    arr = np.asarray(norms_per_model, dtype=np.float64)
    if arr.ndim != 2 or len(arr) == 0 or (arr <= 0).any():
        raise InputError("reference norms: one row of positive mask norms per reference model")
    return np.exp(np.median(np.log(arr), axis=0))


def relative_flags(norms: np.ndarray, reference: np.ndarray | None, threshold: float = 2.0,
                   reached: np.ndarray | None = None) -> tuple[list[int], np.ndarray, np.ndarray]:
    """``(flagged, z, p)``: the MAD outlier test on ``log(norm / reference)`` (on the norms
    themselves without a reference: the paper's test, as :func:`flag_small`): ``z`` the robust z below the median (:func:`below_median_z`), ``p`` its
    one-sided normal tail (the null: the classes' log-ratios are draws of one normal), flagged
    where ``z > threshold``, the optimisation reached the target success and there are at least
    :data:`MIN_CLASSES` classes. A class that is naturally easy to reach (its reference mask is
    small too) is no outlier of the ratio; a backdoor's target, whose mask shrank against its
    own reference, is."""
    n = np.asarray(norms, dtype=np.float64)
    if reference is not None and len(reference) != len(n):
        raise InputError(f"{len(reference)} reference norms for {len(n)} classes")
    r = n if reference is None else np.log(np.maximum(n, 1e-12) / np.maximum(np.asarray(reference, np.float64), 1e-12))
    z = below_median_z(r)
    p = normal_tail(z)
    if len(n) < MIN_CLASSES:
        return [], z, p
    ok = np.ones(len(n), dtype=bool) if reached is None else np.asarray(reached, dtype=bool)
    return [int(k) for k in np.flatnonzero((z > threshold) & ok)], z, p


def stamp(x: Tensor, mask: Tensor, pattern: Tensor) -> Tensor:
    """``(1 - m) x + m p`` for pixels ``x [N, C, H, W]``, ``mask [H, W]`` and ``pattern [C, H, W]``."""
    return (1 - mask) * x + mask * pattern


def neural_cleanse(model: nn.Module, images: Tensor, *, settings: CleanseSettings | None = None,
                   preprocessing: Preprocessing | str | None = "model",
                   class_names: list[str] | None = None,
                   reference: Sequence[float] | ReferenceNull | None = None) -> CleanseResult:
    """Reverse-engineer a trigger for every class of ``model`` from clean ``images`` (pixels in [0, 1]).

    ``reference``: per class, the mask norm clean models of the same task need
    (:func:`reference_norms` of their :attr:`CleanseResult.l1`, same images and settings); the
    outlier test then runs on ``log(l1 / reference)`` (:func:`relative_flags`); or a
    :class:`~xailab.audit.cleanse_null.ReferenceNull` of ``R >= 3`` clean models: each class is
    tested against its own spread among them (:func:`~xailab.audit.cleanse_null.null_test`)."""
    s = settings or CleanseSettings()
    pixels = check_pixels(images, "clean images")
    px = PixelModel(model, resolve_preprocessing(model, preprocessing))
    t0 = time.perf_counter()
    dev = model_device(model)
    with model_session(px):  # eval mode and the parameters' requires_grad restored afterwards
        for p in px.parameters():
            p.requires_grad_(False)
        pred = _predict(px, pixels, s.batch_size, dev)
        k_all = int(pred.shape[1])
        pred = pred.argmax(dim=1)
        names = list(class_names) if class_names is not None else [str(k) for k in range(k_all)]
        if len(names) != k_all:
            raise InputError(f"{len(names)} class names for a model with {k_all} outputs")
        n_ref = len(reference.l1) if isinstance(reference, ReferenceNull) else None if reference is None else len(reference)
        if n_ref is not None and n_ref != k_all:
            raise InputError(f"{n_ref} reference mask norms for a model with {k_all} outputs")
        group = max(1, s.batch_size // s.images_per_step)
        parts = [_optimise(px, pixels, pred, torch.arange(lo, min(k_all, lo + group)), s, dev)
                 for lo in range(0, k_all, group)]
        mask_t, pattern_t = torch.cat([q[0] for q in parts]), torch.cat([q[1] for q in parts])
        l1, reached = [q[2] for q in parts], [q[3] for q in parts]
        success = _success(px, pixels, pred, mask_t, pattern_t, s.batch_size, dev)
    norms, done = np.concatenate(l1), np.concatenate(reached)
    p_adj: np.ndarray | None = None
    critical: float | None = None
    ref: np.ndarray | None = None
    if isinstance(reference, ReferenceNull):
        flagged, z, pv, p_adj = null_test(norms, reference, s.alpha, done)
        ref, critical = reference.l1, critical_t(reference, s.alpha, len(norms))
    else:
        ref = None if reference is None else np.asarray(reference, dtype=np.float64)
        flagged, z, pv = relative_flags(norms, ref, s.threshold, done)
    return CleanseResult(mask_t, pattern_t, norms, anomaly_index(norms), success, done, flagged, names, s,
                         len(pixels), time.perf_counter() - t0, z, pv, ref, p_adj, critical)


def unit(logit: Tensor) -> Tensor:
    """``(tanh(v) + 1) / 2``: a parameter in [0, 1] with a gradient everywhere."""
    return (torch.tanh(logit) + 1) / 2


@torch.no_grad()
def _predict(px: nn.Module, x: Tensor, batch_size: int, dev: torch.device) -> Tensor:
    return torch.cat([px(x[lo : lo + batch_size].to(dev)).float().cpu() for lo in range(0, len(x), batch_size)])


def _optimise(px: nn.Module, pixels: Tensor, pred: Tensor, ks: Tensor, s: CleanseSettings,
              dev: torch.device) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """Masks ``[G, H, W]``, patterns ``[G, C, H, W]``, L1 norms and ``reached`` for the classes ``ks``."""
    g = torch.Generator().manual_seed(s.seed * 7919 + int(ks[0]))
    n, c, h, w = pixels.shape
    nk = len(ks)
    # the authors' code starts from uniform noise, through atanh; the tanh keeps both in [0, 1]
    m_logit = torch.atanh((torch.rand(nk, 1, h, w, generator=g) - 0.5) * 1.98).to(dev).requires_grad_(True)
    p_logit = torch.atanh((torch.rand(nk, c, h, w, generator=g) - 0.5) * 1.98).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([m_logit, p_logit], lr=s.lr, betas=(0.5, 0.9))
    cost = torch.full((nk,), s.init_cost, dtype=torch.float64)
    up, down = np.zeros(nk, dtype=int), np.zeros(nk, dtype=int)
    best_l1 = np.full(nk, np.inf)
    best_m = torch.zeros(nk, h, w)
    best_p = torch.zeros(nk, c, h, w)
    hits, counts = torch.zeros(nk), torch.zeros(nk)
    target = ks.to(dev)[:, None].expand(nk, s.images_per_step)
    for step in range(1, s.steps + 1):
        idx = torch.randint(0, n, (s.images_per_step,), generator=g)
        x = pixels[idx].to(dev)
        keep = (pred[idx][None, :] != ks[:, None]).to(dev).float()  # [G, B]: not already class k
        mask = unit(m_logit)
        pattern = unit(p_logit)
        xs = (1 - mask[:, None]) * x[None] + mask[:, None] * pattern[:, None]   # [G, B, C, H, W]
        logits = px(xs.reshape(nk * s.images_per_step, c, h, w)).reshape(nk, s.images_per_step, -1)
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")     # [G, B]
        ce = (ce * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        l1 = mask.flatten(1).sum(dim=1)
        loss = (ce + cost.to(dev, l1.dtype) * l1).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            hits += ((logits.argmax(dim=2) == target).float() * keep).sum(dim=1).cpu()
            counts += keep.sum(dim=1).cpu()
        if step % s.check_every == 0:
            acc = (hits / counts.clamp_min(1)).numpy()
            l1_now = l1.detach().cpu().double().numpy()
            ok = acc >= s.target_success
            better = ok & (l1_now < best_l1)
            if better.any():
                sel = torch.from_numpy(better)
                best_m[sel] = mask.detach().cpu()[sel, 0]
                best_p[sel] = pattern.detach().cpu()[sel]
                best_l1[better] = l1_now[better]
            up, down = np.where(ok, up + 1, 0), np.where(ok, 0, down + 1)
            cost = torch.where(torch.from_numpy(up >= s.patience), cost * 1.5, cost)
            cost = torch.where(torch.from_numpy(down >= s.patience), cost / 1.5 ** 1.5, cost)
            up, down = np.where(up >= s.patience, 0, up), np.where(down >= s.patience, 0, down)
            hits.zero_(), counts.zero_()
    reached = np.isfinite(best_l1)
    last_m = unit(m_logit).detach().cpu()[:, 0]
    last_p = unit(p_logit).detach().cpu()
    lost = torch.from_numpy(~reached)
    best_m[lost], best_p[lost] = last_m[lost], last_p[lost]
    norms = best_m.flatten(1).sum(dim=1).double().numpy()
    return best_m, best_p, norms, reached


@torch.no_grad()
def _success(px: nn.Module, pixels: Tensor, pred: Tensor, masks: Tensor, patterns: Tensor, batch_size: int,
             dev: torch.device) -> np.ndarray:
    """Share of the images not predicted as ``k`` that class ``k``'s trigger sends to ``k``."""
    out = np.zeros(len(masks))
    for k in range(len(masks)):
        others = pixels[pred != k]
        if len(others) == 0:
            out[k] = float("nan")
            continue
        hit = 0
        for lo in range(0, len(others), batch_size):
            xs = stamp(others[lo : lo + batch_size].to(dev), masks[k].to(dev), patterns[k].to(dev))
            hit += int((px(xs).argmax(dim=1) == k).sum())
        out[k] = hit / len(others)
    return out
