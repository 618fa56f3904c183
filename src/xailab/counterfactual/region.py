"""Region counterfactuals: the fewest superpixels whose replacement flips the decision (SEDC).

Martens & Provost (2014) explain a document classifier by the smallest set of words whose
removal changes its decision; SEDC for images (Vermeire et al. 2022) removes superpixels. Here
each image is cut into superpixels by the size-aware segmentation LIME uses
(:mod:`xailab.methods.perturbation.segmentation`, ~23 at 28x28, ~25 at 32x32) and a set of
superpixels is "removed" by showing a fill there instead:

* ``blur``: the image blurred (sigma = side / 8), so shapes go and colours stay;
* ``mean``: the image's mean colour;
* ``donor``: another image's pixels (one per image, e.g. the nearest training image of the
  target class, see :mod:`.prototype`).

The search is a beam search over sets of superpixels (``beam=1``: greedy). Candidates are
ranked by an attribution: by default each superpixel's own removal effect on the target's
margin (SEDC's first step, one evaluation per superpixel), or the sum over the superpixel of a
registered method's map (``attribution="saliency"``); ``candidates`` keeps only the best-ranked
ones. Depth ``d`` extends every set in the beam by one candidate, scores all of them in batched
forward passes, and stops at the first depth where some set reaches the target (the one that
changes the fewest pixels, then the largest margin); otherwise the ``beam`` sets of largest
margin go on. Not reached within ``max_regions``: "not found within N regions".

    cf = region_counterfactuals(model, x, "other", fill="blur", beam=3)
    cf.measures["regions"], cf.extras["region_mask"]
"""

from __future__ import annotations

import math
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
from xailab.methods.perturbation.segmentation import segment, segmentation_params

FILLS = ("blur", "mean", "donor")


def fill_pixels(p: Tensor, fill: str, donors: Tensor | None = None) -> Tensor:
    """What removed superpixels show, pixels ``[N, C, H, W]`` (see the module docstring)."""
    from xailab.metrics.perturb import gaussian_blur

    if fill == "blur":
        sigma = max(1.0, min(p.shape[-2:]) / 8)
        return gaussian_blur(p, sigma=sigma, kernel_size=2 * math.ceil(2 * sigma) + 1)
    if fill == "mean":
        return p.mean((2, 3), keepdim=True).expand_as(p).clone()
    if fill == "donor":
        if donors is None:
            raise InputError("fill 'donor' needs donor images (one per image, pixels in [0, 1])")
        d = donors.to(p.device, p.dtype)
        d = d.expand_as(p) if d.dim() == 3 or len(d) == 1 else d
        if d.shape != p.shape:
            raise InputError(f"donors {tuple(donors.shape)} do not match the images {tuple(p.shape)}")
        return d
    raise InputError(f"unknown fill {fill!r}: use one of {', '.join(FILLS)}")


def region_counterfactuals(
    model: nn.Module,
    images: Tensor,
    target: TargetSpec = "top2",
    *,
    labels: Tensor | None = None,
    fill: str = "blur",
    donors: Tensor | None = None,
    beam: int = 1,
    max_regions: int = 8,
    candidates: int | None = None,
    attribution: str | None = None,
    segmentation: str = "slic",
    batch_size: int = 64,
    seed: int = 0,
) -> Counterfactuals:
    """The fewest superpixels of each image whose ``fill`` flips the decision to ``target``.

    Args:
        beam: sets kept per depth (1: greedy). max_regions: the most superpixels in a set.
        candidates: only the best-ranked superpixels are tried (None: all).
        attribution: None (each superpixel's removal effect) or a registered method's name.
        donors: for ``fill="donor"``, pixels ``[N, C, H, W]`` (or one ``[C, H, W]`` for all).
    """
    if beam < 1 or max_regions < 1 or (candidates is not None and candidates < 1):
        raise InputError(f"beam, max_regions and candidates must be >= 1 (an impossible budget), got "
                         f"{beam}, {max_regions} and {candidates}")
    clock = Clock()
    x = check_images(images).to(model_device(model))
    space = PixelMap.for_model(model)
    p = space.to_pixels(x).clamp(0, 1)
    filled = fill_pixels(p, fill, donors)
    counted = CountedModel(model, len(x))
    rows: list[dict[str, Any]] = []
    with model_session(model), torch.no_grad():
        logits = torch.cat([counted(x[i:i + batch_size], torch.arange(i, min(i + batch_size, len(x))))
                            for i in range(0, len(x), batch_size)])
        original = logits.argmax(1)
        tgt = resolve_counterfactual_targets(target, logits, labels)
        ranks = _attribution_ranks(model, x, original, attribution, batch_size)
        for i in range(len(x)):
            seg = segment(x[i], segmentation, segmentation_params(segmentation, *x.shape[-2:]), seed=seed).to(x.device)
            rows.append(_one_image(counted, space, p[i], filled[i], seg, int(original[i]), int(tgt[i]), i,
                                   None if ranks is None else ranks[i], beam, max_regions, candidates, batch_size))
    cf = torch.stack([r["image"] for r in rows])
    final = torch.stack([r["logits"] for r in rows])
    already = tgt == original
    valid = reached(final, original, tgt) & ~already
    status = [ALREADY if a else "found" if v else f"not found within {max_regions} regions"
              for a, v in zip(already.tolist(), valid.tolist(), strict=True)]
    cf = torch.where(valid[:, None, None, None], cf, p)
    seconds = clock.seconds()
    measures = _measures(rows, valid, cf - p, counted)
    masks = torch.stack([r["mask"] for r in rows]) & valid[:, None, None].cpu()
    params: dict[str, Any] = {"fill": fill, "beam": beam, "max_regions": max_regions, "candidates": candidates,
                              "attribution": attribution or "removal", "segmentation": segmentation,
                              "batch_size": batch_size, "seed": seed, "pixels": space.describe()}
    return Counterfactuals("region", p.cpu(), cf.cpu(), original.cpu(), final.argmax(1).cpu(), tgt.cpu(), valid.cpu(),
                           measures, status, params, seconds,
                           extras={"segments": torch.stack([r["seg"] for r in rows]), "region_mask": masks})


def _measures(rows: list[dict[str, Any]], valid: Tensor, delta: Tensor, counted: CountedModel) -> dict[str, Tensor]:
    regions = torch.tensor([len(r["set"]) if v else -1 for r, v in zip(rows, valid.tolist(), strict=True)])
    return {**pixel_distances(delta), "regions": regions.double().masked_fill(regions < 0, float("nan")),
            "segments": torch.tensor([r["segments"] for r in rows], dtype=torch.float64),
            "evaluations": counted.evaluations.clone(),
            "seconds": torch.tensor([r["seconds"] for r in rows], dtype=torch.float64)}


def _attribution_ranks(model: nn.Module, x: Tensor, original: Tensor, attribution: str | None,
                       batch_size: int) -> Tensor | None:
    """Pixel maps ``[N, H, W]`` of a registered method for the current class (None: removal effects)."""
    if attribution is None:
        return None
    from xailab.core.registry import create

    with torch.enable_grad():
        maps = create(attribution, model, batch_size=batch_size).explain(x, original).maps[:, 0]
    return maps.sum(1) if maps.dim() == 4 else maps


def _one_image(counted: CountedModel, space: PixelMap, p: Tensor, filled: Tensor, seg: Tensor, original: int,
               target: int, index: int, rank_map: Tensor | None, beam: int, max_regions: int,
               candidates: int | None, batch_size: int) -> dict[str, Any]:
    """The beam search of one image (see the module docstring)."""
    clock = Clock()
    n_seg = int(seg.max()) + 1
    masks = seg[None] == torch.arange(n_seg, device=seg.device)[:, None, None]  # [S, H, W]
    orig_t = torch.tensor([original], device=p.device)
    tgt_t = torch.tensor([target], device=p.device)

    def score(sets: list[frozenset[int]]) -> tuple[Tensor, Tensor, Tensor]:
        out_m, out_l = [], []
        for lo in range(0, len(sets), batch_size):
            chunk = sets[lo:lo + batch_size]
            m = torch.stack([masks[sorted(s)].any(0) for s in chunk])[:, None]
            imgs = torch.where(m, filled[None], p[None])
            lg = counted(space.to_inputs(imgs), index)
            out_l.append(lg)
            out_m.append(margin(lg, orig_t.expand(len(lg)), tgt_t.expand(len(lg))))
        lg = torch.cat(out_l)
        return torch.cat(out_m), reached(lg, orig_t.expand(len(lg)), tgt_t.expand(len(lg))), lg

    best_set, best_logits = (frozenset(), None) if target == original else _beam(
        score, masks, seg, rank_map, beam, max_regions, candidates)
    mask = masks[sorted(best_set)].any(0) if best_set else torch.zeros_like(seg, dtype=torch.bool)
    image = torch.where(mask[None], filled, p)
    if best_logits is None:
        best_logits = counted(space.to_inputs(image[None]), index)[0]
    return {"image": image, "logits": best_logits, "set": best_set, "mask": mask.cpu(), "seg": seg.cpu(),
            "segments": n_seg, "seconds": clock.seconds()}


def _beam(score: Any, masks: Tensor, seg: Tensor, rank_map: Tensor | None, beam: int, max_regions: int,
          candidates: int | None) -> tuple[frozenset[int], Tensor | None]:
    """The smallest set of superpixels that reaches the target, and its logits (None: not found)."""
    n_seg = len(masks)
    singles = [frozenset([s]) for s in range(n_seg)]
    first = None
    if rank_map is None:  # SEDC: each superpixel's own removal effect ranks it
        first = score(singles)
        order = first[0].argsort(descending=True).tolist()
    else:  # the most evidence for the current class first
        sums = torch.zeros(n_seg, dtype=rank_map.dtype, device=seg.device).index_add_(
            0, seg.reshape(-1), rank_map.to(seg.device).reshape(-1))
        order = sums.argsort(descending=True).tolist()
    pool = order[: candidates or n_seg]
    beams: list[frozenset[int]] = [frozenset()]
    for depth in range(1, min(max_regions, n_seg) + 1):
        sets = sorted({b | {s} for b in beams for s in pool if s not in b}, key=sorted)
        if not sets:
            break
        if depth == 1 and first is not None:
            keep = [next(iter(s)) for s in sets]
            m, ok, lg = (t[keep] for t in first)
        else:
            m, ok, lg = score(sets)
        if bool(ok.any()):
            hits = ok.nonzero()[:, 0].tolist()
            sizes = [int(masks[sorted(sets[j])].any(0).sum()) for j in hits]
            j = min(zip(sizes, [-float(m[h]) for h in hits], hits, strict=True))[2]
            return sets[j], lg[j]
        beams = [sets[j] for j in m.argsort(descending=True)[:beam].tolist()]
    return frozenset(), None
