"""What the pixel-space attacks share: the setup of a call, per-image random starts, the
projected gradient step loop, and keeping each image's best restart (see :mod:`.adversarial`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.audit.pixel import PixelModel, check_pixels, resolve_preprocessing
from xailab.audit.result import AttackResult
from xailab.core.errors import InputError, TargetError
from xailab.core.hooks import model_device
from xailab.data.transforms import Preprocessing

Norm = Literal["linf", "l2"]
ClassSpec = int | Sequence[int] | Tensor | None


# -- the setup of a call ------------------------------------------------------------------------------
@torch.no_grad()
def predict_logits(px: nn.Module, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([px(x[lo : lo + batch_size]) for lo in range(0, len(x), batch_size)])


def _classes(spec: ClassSpec, n: int, k: int, what: str, device: torch.device) -> Tensor | None:
    if spec is None:
        return None
    if isinstance(spec, bool):
        raise TargetError(f"{what} cannot be a bool")
    if isinstance(spec, int):
        t = torch.full((n,), spec, dtype=torch.long)
    else:
        t = torch.as_tensor(spec, dtype=torch.long).reshape(-1)
    if t.numel() != n:
        raise TargetError(f"got {t.numel()} {what} for {n} images (one per image, or one for all)")
    if int(t.min()) < 0 or int(t.max()) >= k:
        raise TargetError(f"{what} out of range: the model has {k} classes (0..{k - 1})")
    return t.to(device)


class Setup:
    """The pixel model, the clean images on the model's device, labels, targets, clean logits."""

    def __init__(self, model: nn.Module, images: Tensor, labels: ClassSpec, target: ClassSpec,
                 preprocessing: Preprocessing | str | None, batch_size: int) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.device = model_device(model)
        self.px = PixelModel(model, resolve_preprocessing(model, preprocessing))
        self.x = check_pixels(images).to(self.device)
        self.batch_size = batch_size
        self.clean_logits = predict_logits(self.px, self.x, batch_size)
        n, k = self.clean_logits.shape
        given = _classes(labels, n, k, "labels", self.device)
        self.labels = given if given is not None else self.clean_logits.argmax(dim=1)
        self.target = _classes(target, n, k, "target classes", self.device)
        # the class whose cross-entropy is followed, and the direction
        self.cls = self.target if self.target is not None else self.labels
        self.sign = -1.0 if self.target is not None else 1.0

    def objective(self, logits: Tensor, cls: Tensor) -> Tensor:
        """Per image, larger is better for the attacker: ``CE(label)`` or ``-CE(target)``."""
        return self.sign * F.cross_entropy(logits, cls, reduction="none")

    def succeeded(self, logits: Tensor, lo: int, hi: int) -> Tensor:
        pred = logits.argmax(dim=1)
        if self.target is not None:
            return pred == self.target[lo:hi]
        return pred != self.labels[lo:hi]

    def result(self, adv: Tensor, attack: str, params: dict[str, Any], start: float,
               mask: Tensor | None = None, extras: dict[str, Tensor] | None = None) -> AttackResult:
        adv_logits = predict_logits(self.px, adv, self.batch_size)
        return AttackResult(
            clean=self.x.detach().cpu(), adversarial=adv.detach().cpu(), labels=self.labels.cpu(),
            target=self.target.cpu() if self.target is not None else None,
            clean_logits=self.clean_logits.detach().cpu(), adv_logits=adv_logits.detach().cpu(),
            attack=attack, params=params, seconds=time.perf_counter() - start,
            mask=mask.cpu() if mask is not None else None,
            extras={k: v.cpu() for k, v in (extras or {}).items()},
        )


def image_generator(seed: int, index: int, restart: int = 0) -> torch.Generator:
    """The generator of image ``index`` (in the whole call) for restart ``restart``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + restart * 10_000_019 + index)


def sample_start(x0: Tensor, eps: float, norm: Norm, seed: int, first: int, restart: int = 0) -> Tensor:
    """A uniform random point of the ``eps``-ball around each image of ``x0`` (not yet clipped).

    L-inf: ``x0 + U(-eps, eps)``. L2: Voelker et al. 2017's sampler, as foolbox's: a standard
    normal vector of ``n + 2`` numbers, divided by its norm, first ``n`` kept, times ``eps``.
    """
    noise = []
    n = x0[0].numel()
    for i in range(len(x0)):
        g = image_generator(seed, first + i, restart)
        if norm == "linf":
            d = (torch.rand(x0[0].shape, generator=g, dtype=torch.float64) * 2 - 1) * eps
        else:
            v = torch.randn(n + 2, generator=g, dtype=torch.float64)
            d = (v / v.norm())[:n].reshape(x0[0].shape) * eps
        noise.append(d)
    return x0 + torch.stack(noise).to(device=x0.device, dtype=x0.dtype)


def normalise_gradient(g: Tensor, norm: Norm) -> Tensor:
    if norm == "linf":
        return g.sign()
    n = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / n.reshape(-1, *([1] * (g.dim() - 1)))


def project(x: Tensor, x0: Tensor, eps: float, norm: Norm) -> Tensor:
    d = x - x0
    if norm == "linf":
        return x0 + d.clamp(-eps, eps)
    n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = torch.clamp(eps / n, max=1.0).reshape(-1, *([1] * (d.dim() - 1)))
    return x0 + d * factor


def descend(px: nn.Module, x0: Tensor, cls: Tensor, *, sign: float, eps: float, norm: Norm, steps: int,
            step_size: float, start: Tensor | None = None, mask: Tensor | None = None) -> Tensor:
    """``steps`` of projected (masked) gradient steps from ``start`` (default ``x0``).

    ``mask [B, 1, H, W]`` (0/1) limits the change to a region: the gradient is zeroed outside it.
    """
    x = (x0 if start is None else start).detach()
    if mask is not None:
        x = x0 + (x - x0) * mask
    x = x.clamp(0.0, 1.0)
    for _ in range(steps):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(px(xg), cls, reduction="sum")
            (g,) = torch.autograd.grad(loss, xg)
        if mask is not None:
            g = g * mask
        x = x.detach() + sign * step_size * normalise_gradient(g, norm)
        x = project(x, x0, eps, norm).clamp(0.0, 1.0)
    return x.detach()


def check_budget(eps: float, steps: int, norm: str) -> None:
    if norm not in ("linf", "l2"):
        raise InputError(f"norm must be 'linf' or 'l2', not {norm!r}")
    if not eps > 0:
        raise InputError(f"eps must be > 0, got {eps}")
    if norm == "linf" and eps > 1:
        raise InputError(f"an L-inf eps above 1 allows any image (pixels lie in [0, 1]), got {eps}")
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")


def keep_better(best: Tensor, best_ok: Tensor, best_obj: Tensor, new: Tensor, new_ok: Tensor,
                new_obj: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per image, keep a success over a failure, else the higher objective."""
    take = (new_ok & ~best_ok) | ((new_ok == best_ok) & (new_obj > best_obj))
    shape = (-1, *([1] * (best.dim() - 1)))
    return (torch.where(take.reshape(shape), new, best), best_ok | new_ok,
            torch.where(take, new_obj, best_obj))


def best_of_restarts(s: Setup, x0: Tensor, cls: Tensor, lo: int, restarts: int, random_start: bool,
                     attempt: Callable[[int], Tensor]) -> Tensor:
    """Per image of the chunk ``x0`` (images ``lo..`` of the call) the best of up to ``restarts``
    attempts (``attempt(r)``: the adversarial images of restart ``r``): the first success, else
    the highest objective. Stops once every image succeeded, or after one non-random attempt."""
    best = best_ok = best_obj = None
    for r in range(restarts):
        adv = attempt(r)
        if restarts == 1:
            return adv
        with torch.no_grad():
            logits = s.px(adv)
        ok, obj = s.succeeded(logits, lo, lo + len(x0)), s.objective(logits, cls)
        if best is None or best_ok is None or best_obj is None:
            best, best_ok, best_obj = adv, ok, obj
        else:
            best, best_ok, best_obj = keep_better(best, best_ok, best_obj, adv, ok, obj)
        if not random_start or bool(best_ok.all()):
            break
    assert best is not None
    return best
