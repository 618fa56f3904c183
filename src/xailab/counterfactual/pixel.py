"""Counterfactuals by optimisation in pixel space (Wachter, Mittelstadt & Russell 2017).

For each image ``x`` (pixels in ``[0, 1]``) and target ``t``, find ``x'`` in ``[0, 1]`` minimising

    hinge(x') + lambda * d(x', x),   hinge = max(0, kappa - (z_t(x') - max_{j != t} z_j(x')))

(the hinge on the logit margin of Carlini & Wagner 2017; for the target "any other class" the
margin is ``max_{j != y} z_j - z_y``), where ``d`` is a sum of ``l1`` (``sum |d|``), ``l2``
(``sum d^2``) and ``tv`` (total variation of the change). Adam takes the smooth terms; the
``l1`` term is a proximal step in Adam's metric (soft-thresholding the change by
``lambda * lr / (sqrt(v) + eps)``, the step size Adam gives each pixel), so a pixel whose
gradient does not pay for its change stays exactly unchanged. ``lambda`` is searched per image, as in Wachter's and C&W's binary search: a round
that reaches the target raises ``lambda`` (ask for less change), one that does not lowers it;
each image keeps its closest valid counterfactual over all rounds and steps. An image that has
not reached the target yet starts its next round where the last one stopped (so a hard image gets
the whole budget as one path), the others restart from the image. Every image of a
chunk of ``batch_size`` images runs in the same forward passes.

    cf = pixel_counterfactuals(model, x, "top2", distance="l1+l2")
    cf.valid.float().mean(), cf.measures["l2"].median()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.hooks import model_device, model_session
from xailab.core.targets import TargetSpec
from xailab.counterfactual.base import (
    ALREADY,
    Clock,
    CountedModel,
    Counterfactuals,
    PixelMap,
    check_images,
    margin,
    pixel_distances,
    reached,
    resolve_counterfactual_targets,
)

DISTANCES = ("l1", "l2", "tv")


def parse_distance(distance: str) -> tuple[str, ...]:
    """``"l1+l2"`` -> ``("l1", "l2")``, each checked."""
    parts = tuple(p.strip().lower() for p in distance.split("+") if p.strip())
    bad = [p for p in parts if p not in DISTANCES]
    if not parts or bad:
        raise InputError(f"distance {distance!r}: use one or more of {', '.join(DISTANCES)} joined by '+', e.g. l1+l2")
    return parts


def smooth_distance(delta: Tensor, parts: tuple[str, ...]) -> Tensor:
    """The differentiable terms (``l2``, ``tv``) of ``d`` per image."""
    out = delta.new_zeros(len(delta))
    if "l2" in parts:
        out = out + delta.pow(2).flatten(1).sum(1)
    if "tv" in parts:
        out = out + (delta[..., 1:, :] - delta[..., :-1, :]).abs().flatten(1).sum(1)
        out = out + (delta[..., :, 1:] - delta[..., :, :-1]).abs().flatten(1).sum(1)
    return out


def total_distance(delta: Tensor, parts: tuple[str, ...]) -> Tensor:
    """``d`` per image: what "the least change" means for this search."""
    out = smooth_distance(delta, parts)
    return out + delta.abs().flatten(1).sum(1) if "l1" in parts else out


def _check(lam: float, search_steps: int, steps: int, lr: float, kappa: float, batch_size: int) -> None:
    if not lam > 0:
        raise InputError(f"lam (the weight of the distance) must be > 0, got {lam}")
    if search_steps < 1 or steps < 1:
        raise InputError(f"search_steps and steps must be >= 1 (an impossible budget), got {search_steps} and {steps}")
    if not lr > 0 or kappa < 0:
        raise InputError(f"lr must be > 0 and kappa >= 0, got lr={lr}, kappa={kappa}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")


def pixel_counterfactuals(
    model: nn.Module,
    images: Tensor,
    target: TargetSpec = "top2",
    *,
    labels: Tensor | None = None,
    distance: str = "l1+l2",
    lam: float = 0.1,
    search_steps: int = 5,
    steps: int = 100,
    lr: float = 0.01,
    kappa: float = 0.05,
    batch_size: int = 64,
) -> Counterfactuals:
    """Wachter counterfactuals of ``images`` (as the model takes them) towards ``target``.

    Args:
        target: ``"top2"``, ``"least"``, a class index, one per image, or ``"other"``.
        distance: ``l1``, ``l2``, ``tv`` or a sum such as ``l1+l2`` (elastic net, the default).
        lam: the first ``lambda`` of every image; ``search_steps`` rounds of ``steps`` Adam steps
            (learning rate ``lr``, in pixels) each.
        kappa: the logit margin past the boundary the hinge asks for.
    """
    _check(lam, search_steps, steps, lr, kappa, batch_size)
    parts = parse_distance(distance)
    clock = Clock()
    x = check_images(images).to(model_device(model))
    space = PixelMap.for_model(model)
    counted = CountedModel(model, len(x))
    with model_session(model):
        with torch.no_grad():
            logits = torch.cat([counted(x[i:i + batch_size], torch.arange(i, min(i + batch_size, len(x))))
                                for i in range(0, len(x), batch_size)])
        original = logits.argmax(1)
        tgt = resolve_counterfactual_targets(target, logits, labels)
        best = space.to_pixels(x).clamp(0, 1)
        p0 = best.clone()
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for lo in range(0, len(x), batch_size):
            sl = slice(lo, min(lo + batch_size, len(x)))
            idx = torch.arange(sl.start, sl.stop)
            b, f = _search(counted, space, p0[sl], original[sl], tgt[sl], idx, parts,
                           lam, search_steps, steps, lr, kappa)
            best[sl], found[sl] = b, f
        with torch.no_grad():
            final = torch.cat([counted(space.to_inputs(best[i:i + batch_size]),
                                       torch.arange(i, min(i + batch_size, len(x))))
                               for i in range(0, len(x), batch_size)])
    already = tgt == original
    valid = reached(final, original, tgt) & ~already
    status = [ALREADY if a else "found" if v else f"not found within {search_steps} x {steps} steps"
              for a, v in zip(already.tolist(), valid.tolist(), strict=True)]
    best = torch.where(valid[:, None, None, None], best, p0)
    seconds = clock.seconds()
    measures = {**pixel_distances(best - p0), "evaluations": counted.evaluations.clone(),
                "seconds": torch.full((len(x),), seconds / len(x), dtype=torch.float64)}
    params: dict[str, Any] = {"distance": "+".join(parts), "lam": lam, "search_steps": search_steps, "steps": steps,
                              "lr": lr, "kappa": kappa, "batch_size": batch_size, "pixels": space.describe()}
    return Counterfactuals("pixel", p0.cpu(), best.detach().cpu(), original.cpu(), final.argmax(1).cpu(), tgt.cpu(),
                           valid.cpu(), measures, status, params, seconds)


def _search(counted: CountedModel, space: PixelMap, p0: Tensor, original: Tensor, tgt: Tensor, idx: Tensor,
            parts: tuple[str, ...], lam: float, rounds: int, steps: int, lr: float,
            kappa: float) -> tuple[Tensor, Tensor]:
    """The lambda search of one chunk: the closest valid counterfactual of each image, and which
    images have one."""
    n = len(p0)
    lam_now = torch.full((n,), lam, dtype=p0.dtype, device=p0.device)
    lam_lo = torch.zeros_like(lam_now)  # largest lambda that reached the target
    lam_hi = torch.full_like(lam_now, float("inf"))  # smallest lambda that did not
    best = p0.clone()
    best_d = torch.full((n,), float("inf"), dtype=p0.dtype, device=p0.device)
    skip = tgt == original
    start = p0.clone()
    for _ in range(rounds):
        hit, last = _descend(counted, space, p0, start, original, tgt, idx, parts, lam_now, steps, lr, kappa, best,
                             best_d)
        hit &= ~skip
        # an image that never reached the target goes on from where it stopped (a longer path), the others restart
        start = torch.where((~hit & (lam_lo == 0))[:, None, None, None], last, p0)
        lam_lo = torch.where(hit, lam_now, lam_lo)
        lam_hi = torch.where(hit, lam_hi, lam_now)
        bracket = torch.isfinite(lam_hi) & (lam_lo > 0)
        lam_now = torch.where(bracket, (lam_lo + lam_hi) / 2, torch.where(hit, lam_now * 10, lam_now / 10))
    return best, torch.isfinite(best_d) & ~skip


def _descend(counted: CountedModel, space: PixelMap, p0: Tensor, start: Tensor, original: Tensor, tgt: Tensor,
             idx: Tensor, parts: tuple[str, ...], lam: Tensor, steps: int, lr: float, kappa: float, best: Tensor,
             best_d: Tensor) -> tuple[Tensor, Tensor]:
    """One round of ``steps`` projected Adam steps from ``start``; updates ``best`` / ``best_d`` in
    place with every valid point closer to ``p0`` than the best so far; which images reached the
    target, and where each round ended."""
    delta = (start - p0).clone().requires_grad_(True)
    opt = torch.optim.Adam([delta], lr=lr)
    hit = torch.zeros(len(p0), dtype=torch.bool, device=p0.device)
    l1 = "l1" in parts
    for _ in range(steps):
        p = (p0 + delta).clamp(0, 1)
        with torch.enable_grad():
            logits = counted(space.to_inputs(p), idx)
            m = margin(logits, original, tgt)
            loss = (torch.relu(kappa - m) + lam * smooth_distance(p - p0, parts)).sum()
            (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            ok = reached(logits, original, tgt)
            d = total_distance(p - p0, parts)
            better = ok & (d < best_d)
            best[better] = p[better].detach()
            best_d[better] = d[better]
            hit |= ok
            delta.grad = g
            opt.step()
            if l1:  # the proximal step of lambda * ||delta||_1, in Adam's own step sizes
                delta.copy_(delta.sign() * (delta.abs() - _adam_steps(opt, delta, lr) * lam.reshape(-1, 1, 1, 1))
                            .clamp_min(0))
            delta.copy_((p0 + delta).clamp(0, 1) - p0)
    return hit, (p0 + delta).detach().clamp(0, 1)


def _adam_steps(opt: torch.optim.Adam, p: Tensor, lr: float) -> Tensor:
    """The per-element step size Adam just used, ``lr / (sqrt(v_hat) + eps)``."""
    state = opt.state[p]
    beta2 = opt.param_groups[0]["betas"][1]
    eps = opt.param_groups[0]["eps"]
    t = float(state["step"])
    v_hat = state["exp_avg_sq"] / (1 - beta2**t)
    return lr / (v_hat.sqrt() + eps)
