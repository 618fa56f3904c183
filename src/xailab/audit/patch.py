"""A local patch attack: only a small square of each image may change.

Inside a ``size`` x ``size`` square the pixels are free in ``[0, 1]`` (or within ``eps`` of the
clean ones); outside, nothing changes. The square's values follow the masked PGD of
:mod:`xailab.audit.adversarial` (signed gradient steps of the cross-entropy, the gradient zeroed
outside the square), as in the per-image "localized and visible" patches of Karmon et al. 2018
(LaVAN, arXiv:1801.02608) rather than the universal patch of Brown et al. 2017.

Where the square goes (``position``):

* ``(top, left)`` (or a tensor ``[N, 2]``, one place per image), or ``"center"``;
* ``"saliency"``: where the window sum of ``|d loss / d x|`` is largest (one gradient; cheap);
* ``"search"``: every place of a grid with step ``stride`` (default ``size``) is attacked with
  ``search_steps`` steps, all places of an image in one batch; each image keeps the place that
  succeeded (else reached the highest loss) and goes on from there for ``steps`` more steps.
  Cost per image: ``places * search_steps + steps`` forward-backward passes.

    res = patch_attack(model, pixels, labels, size=5, position="search", steps=100)
    res.success_rate, res.mask            # [N, H, W] the square of each image
    res.extras["positions"]               # [N, 2] top-left corners
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.audit.descent import ClassSpec, Setup, best_of_restarts, descend, image_generator
from xailab.audit.pixel import check_patch, grid_positions, square_masks
from xailab.audit.result import AttackResult
from xailab.core.errors import InputError
from xailab.core.hooks import model_session
from xailab.data.transforms import Preprocessing

Position = Literal["search", "saliency", "center"] | tuple[int, int] | Sequence[int] | Tensor


def _patch_start(x0: Tensor, mask: Tensor, eps: float, seed: int, first: int, restart: int) -> Tensor:
    """Random values in the square: uniform in [0, 1] (eps >= 1) or x0 + U(-eps, eps)."""
    noise = []
    for i in range(len(x0)):
        g = image_generator(seed, first + i, restart)
        noise.append(torch.rand(x0[0].shape, generator=g, dtype=torch.float64))
    u = torch.stack(noise).to(device=x0.device, dtype=x0.dtype)
    start = u if eps >= 1 else x0 + (u * 2 - 1) * eps
    return (x0 + (start - x0) * mask).clamp(0.0, 1.0)


def _fixed_positions(position: Position, n: int, hw: tuple[int, int], size: int) -> Tensor | None:
    h, w = hw
    if isinstance(position, str):
        if position == "center":
            return torch.tensor([[(h - size) // 2, (w - size) // 2]]).expand(n, 2).clone()
        if position in ("search", "saliency"):
            return None
        raise InputError(f"position must be 'search', 'saliency', 'center' or (top, left), not {position!r}")
    pos = torch.as_tensor(position, dtype=torch.long)
    if pos.dim() == 1:
        if pos.numel() != 2:
            raise InputError(f"a patch position is (top, left), got {position!r}")
        pos = pos[None].expand(n, 2).clone()
    if pos.shape != (n, 2):
        raise InputError(f"patch positions must be (top, left) or [N, 2], got shape {tuple(pos.shape)}")
    if int(pos.min()) < 0 or int(pos[:, 0].max()) > h - size or int(pos[:, 1].max()) > w - size:
        raise InputError(f"a {size}x{size} patch at {pos[0].tolist()} (top, left) leaves the {h}x{w} image; "
                         f"top must lie in 0..{h - size} and left in 0..{w - size}")
    return pos


def _saliency_positions(s: Setup, x0: Tensor, cls: Tensor, size: int) -> Tensor:
    xg = x0.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(s.px(xg), cls, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    window = F.avg_pool2d(g.abs().sum(dim=1, keepdim=True), size, stride=1)[:, 0]  # [B, H-s+1, W-s+1]
    flat = window.flatten(1).argmax(dim=1)
    return torch.stack([flat // window.shape[-1], flat % window.shape[-1]], dim=1)


def _search_positions(s: Setup, x0: Tensor, cls: Tensor, lo: int, *, size: int, stride: int, eps: float,
                      steps: int, step_size: float, seed: int, random_start: bool) -> tuple[Tensor, Tensor]:
    """Best grid place per image and the patched images found there."""
    hw = (x0.shape[-2], x0.shape[-1])
    grid = grid_positions(hw, size, stride).to(x0.device)  # [P, 2]
    p = len(grid)
    b = len(x0)
    xs = x0.repeat_interleave(p, dim=0)
    pos = grid.repeat(b, 1)
    cs = cls.repeat_interleave(p)
    mask = square_masks(len(xs), hw, size, pos)[:, None].to(x0.dtype)
    if random_start:  # one draw per image, shared by its places (same start, fair comparison)
        start = _patch_start(x0, torch.ones_like(x0[:, :1]), eps, seed, lo, 0).repeat_interleave(p, dim=0)
        start = (xs + (start - xs) * mask).clamp(0.0, 1.0)
    else:
        start = None
    adv = descend(s.px, xs, cs, sign=s.sign, eps=eps, norm="linf", steps=steps, step_size=step_size,
                  start=start, mask=mask)
    with torch.no_grad():
        logits = s.px(adv)
    pred = logits.argmax(dim=1)
    if s.target is not None:
        ok = pred == s.target[lo : lo + b].repeat_interleave(p)
    else:
        ok = pred != s.labels[lo : lo + b].repeat_interleave(p)
    obj = s.objective(logits, cs)
    score = ok.double() * 1e6 + obj.double().clamp(-1e5, 1e5)  # success first, then loss
    best = score.reshape(b, p).argmax(dim=1)
    chosen = best + torch.arange(b, device=x0.device) * p
    return pos[chosen], adv[chosen]


def _find_place(s: Setup, x0: Tensor, cls: Tensor, lo: int, position: Position,
                **search: Any) -> tuple[Tensor, Tensor | None]:
    """Per image the (top, left) of its square, and the patched images found while searching."""
    if position == "saliency":
        return _saliency_positions(s, x0, cls, search["size"]), None
    return _search_positions(s, x0, cls, lo, **search)


def _attack_at(s: Setup, x0: Tensor, cls: Tensor, lo: int, pos: Tensor, warm: Tensor | None, *, size: int,
               steps: int, step_size: float, eps: float, seed: int, random_start: bool, restarts: int) -> Tensor:
    """The best patched images of the chunk ``x0`` (images ``lo..``) with their squares at ``pos``;
    the first restart starts from ``warm`` (the search's result) when there is one."""
    mask = square_masks(len(x0), (x0.shape[-2], x0.shape[-1]), size, pos)[:, None].to(x0.dtype)

    def attempt(r: int) -> Tensor:
        if r == 0 and warm is not None:
            start: Tensor | None = warm
        elif random_start:
            start = _patch_start(x0, mask, eps, seed, lo, r + 1)
        else:
            start = None
        adv = descend(s.px, x0, cls, sign=s.sign, eps=eps, norm="linf", steps=steps,
                      step_size=step_size, start=start, mask=mask) if steps else start
        return x0.clone() if adv is None else adv

    return best_of_restarts(s, x0, cls, lo, restarts, random_start, attempt)


def _check_settings(steps: int, search_steps: int, eps: float, step_size: float, restarts: int) -> None:
    if steps < 0 or search_steps < 1:
        raise InputError(f"steps must be >= 0 and search_steps >= 1, got {steps} and {search_steps}")
    if not 0 < eps <= 1:
        raise InputError(f"eps of a patch must lie in (0, 1], got {eps}")
    if not step_size > 0 or restarts < 1:
        raise InputError("step_size must be > 0 and restarts >= 1")


def patch_attack(
    model: nn.Module,
    images: Tensor,
    labels: ClassSpec = None,
    *,
    size: int = 5,
    position: Position = "search",
    stride: int | None = None,
    steps: int = 100,
    step_size: float = 0.05,
    search_steps: int = 10,
    eps: float = 1.0,
    random_start: bool = True,
    restarts: int = 1,
    target: ClassSpec = None,
    preprocessing: Preprocessing | str | None = "model",
    batch_size: int = 256,
    seed: int = 0,
) -> AttackResult:
    """Attack a ``size`` x ``size`` square of each image (see the module docstring).

    Args:
        size: side of the square in pixels.
        position: ``"search"`` (default), ``"saliency"``, ``"center"``, ``(top, left)`` or ``[N, 2]``.
        stride: grid step of ``"search"`` (default ``size``).
        steps, step_size: the signed-gradient steps at the chosen place.
        search_steps: steps tried at each grid place.
        eps: largest change of a pixel inside the square (1: any value in [0, 1]).
        random_start: start the square from random values (else from the clean pixels).
        restarts: further random starts at the chosen place; each image keeps its best.
        Other arguments as :func:`xailab.audit.adversarial.pgd`.
    """
    _check_settings(steps, search_steps, eps, step_size, restarts)
    t0 = time.perf_counter()
    s = Setup(model, images, labels, target, preprocessing, batch_size)
    n, _, h, w = s.x.shape
    check_patch(size, (h, w))
    fixed = _fixed_positions(position, n, (h, w), size)
    stride_ = stride if stride is not None else size
    per_chunk = max(1, batch_size // (len(grid_positions((h, w), size, stride_)) if fixed is None and position == "search" else 1))
    outs, places = [], []
    with model_session(model):
        for lo in range(0, n, per_chunk):
            x0, cls = s.x[lo : lo + per_chunk], s.cls[lo : lo + per_chunk]
            if fixed is not None:
                pos, warm = fixed[lo : lo + len(x0)].to(s.device), None
            else:
                pos, warm = _find_place(s, x0, cls, lo, position, size=size, stride=stride_, eps=eps,
                                        steps=search_steps, step_size=step_size, seed=seed,
                                        random_start=random_start)
            outs.append(_attack_at(s, x0, cls, lo, pos, warm, size=size, steps=steps, step_size=step_size,
                                   eps=eps, seed=seed, random_start=random_start, restarts=restarts))
            places.append(pos)
    positions = torch.cat(places)
    params = {"size": size, "position": position if isinstance(position, str) else "given",
              "stride": stride_ if position == "search" else None, "steps": steps, "step_size": step_size,
              "search_steps": search_steps if position == "search" else None, "eps": eps,
              "random_start": random_start, "restarts": restarts, "seed": seed, "batch_size": batch_size}
    masks = square_masks(n, (h, w), size, positions)
    return s.result(torch.cat(outs), "patch", params, t0, mask=masks, extras={"positions": positions})
