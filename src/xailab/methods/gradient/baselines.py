"""Baselines (references) for path methods: Integrated Gradients, DeepLIFT, GradientSHAP.

A baseline ``b`` is the input that stands for "no information"; path methods explain
``f(x) - f(b)``. Models usually see *normalised* inputs ``(pixel - mean) / std``, so "black" is not
the zero tensor: tell the method how inputs relate to pixels with :class:`PixelSpace` (the
dataset's ``mean``/``std``, or the ``pixel_range`` of the inputs), and "black" becomes the
normalised value of pixel 0. Given neither, the methods take the preprocessing the model carries
(recorded by the zoo and the checkpoint loaders, :mod:`xailab.core.pixels`), so Python and the CLI
agree; a model that carries none takes raw pixels in ``[0, 1]`` (then "black" is the zero tensor,
Captum's default).

Kinds (``Baseline.parse`` reads the strings, an optional ``:value`` sets the main option):

* ``"black"`` / ``"white"``: pixel 0 / pixel 1 everywhere; ``"zeros"``: the zero input tensor (the
  dataset mean colour for normalised inputs);
* ``"uniform"``: uniform noise over the pixel range (one draw per image);
* ``"gaussian[:sigma]"``: ``x + N(0, (sigma * range)^2)``, clipped to the range (sigma 0.2);
* ``"blur[:sigma]"``: the image blurred by a Gaussian of ``sigma`` pixels (default ``size / 16``);
* ``"adversarial[:input|noise]"``: an input optimised until the model's two top classes are
  equally likely (the "50/50" baseline: a point on the decision boundary), starting from the
  image itself or from uniform noise; the achieved probabilities are reported;
* a tensor: ``[C, H, W]`` (or ``[1, C, H, W]``) for every image, or ``[N, C, H, W]``, one per image.

    space = PixelSpace(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    b = Baseline.parse("blur:4")
    baselines, info = make_baselines(b, images, space, explainer, first=0)  # images 0.. of the call
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explainer import Explainer
from xailab.core.pixels import recorded_pixel_space

KINDS = ("black", "white", "zeros", "uniform", "gaussian", "blur", "adversarial", "tensor")


@dataclass(frozen=True)
class PixelSpace:
    """How model inputs relate to pixels in ``[0, 1]``.

    Args:
        mean, std: the normalisation ``input = (pixel - mean) / std`` (one value per channel, or one).
        pixel_range: ``(lo, hi)``: the inputs' own range when they are not mean/std normalised,
            e.g. ``(0, 255)`` or ``(-1, 1)``. Give either mean/std or pixel_range, not both.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_range: tuple[float, float] | None = None

    @classmethod
    def of(
        cls,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        pixel_range: Sequence[float] | None = None,
    ) -> PixelSpace:
        m = _floats(mean, "mean")
        s = _floats(std, "std")
        if (m is None) != (s is None):
            raise InputError("give both mean and std (the dataset's normalisation), or neither")
        if s is not None and any(v <= 0 for v in s):
            raise InputError(f"std must be positive, got {s}")
        r = _floats(pixel_range, "pixel_range")
        if r is not None:
            if m is not None:
                raise InputError("give either mean/std or pixel_range, not both")
            if len(r) != 2 or not r[0] < r[1]:
                raise InputError(f"pixel_range must be (lo, hi) with lo < hi, got {pixel_range}")
        return cls(m, s, None if r is None else (r[0], r[1]))

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        mean: Sequence[float] | float | None = None,
        std: Sequence[float] | float | None = None,
        pixel_range: Sequence[float] | None = None,
    ) -> PixelSpace:
        """The space given, else the one recorded for ``model`` (its preprocessing, see
        :mod:`xailab.core.pixels`), else raw pixels in ``[0, 1]``."""
        if mean is None and std is None and pixel_range is None:
            recorded = recorded_pixel_space(model) or {}
            mean, std, pixel_range = recorded.get("mean"), recorded.get("std"), recorded.get("pixel_range")
        return cls.of(mean, std, pixel_range)

    @property
    def specified(self) -> bool:
        return self.mean is not None or self.pixel_range is not None

    def bounds(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Input values of pixel 0 and pixel 1, shaped ``[1, C, 1, 1]`` (or ``[1, 1, 1, 1]``)."""
        if self.mean is not None and self.std is not None:
            c = x.shape[1]
            m = torch.tensor(self.mean, dtype=x.dtype, device=x.device)
            s = torch.tensor(self.std, dtype=x.dtype, device=x.device)
            if m.numel() not in (1, c) or s.numel() not in (1, c):
                raise InputError(f"mean/std have {m.numel()}/{s.numel()} values but the images have {c} channels")
            lo, hi = (0 - m) / s, (1 - m) / s
            return lo.reshape(1, -1, 1, 1), hi.reshape(1, -1, 1, 1)
        lo_v, hi_v = self.pixel_range if self.pixel_range is not None else (0.0, 1.0)
        lo = torch.full((1, 1, 1, 1), lo_v, dtype=x.dtype, device=x.device)
        return lo, torch.full_like(lo, hi_v)

    def span(self, x: Tensor) -> Tensor:
        """Range of each image's values (``[B, C or 1, 1, 1]``) that noise levels are fractions of.

        From mean/std or pixel_range when given; otherwise each image's own ``max - min``, as in
        the SmoothGrad paper.
        """
        if self.specified:
            lo, hi = self.bounds(x)
            return (hi - lo).expand(len(x), -1, -1, -1)
        flat = x.reshape(len(x), -1)
        return (flat.amax(1) - flat.amin(1)).clamp_min(1e-12).reshape(-1, 1, 1, 1)

    def clip(self, x: Tensor) -> Tensor:
        """``x`` clipped to the pixel range (unchanged when the range is not specified)."""
        if not self.specified:
            return x
        lo, hi = self.bounds(x)
        return torch.maximum(torch.minimum(x, hi), lo)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mean is not None:
            out.update(mean=list(self.mean), std=list(self.std or ()))
        if self.pixel_range is not None:
            out["pixel_range"] = list(self.pixel_range)
        return out


def _floats(v: Sequence[float] | float | None, name: str) -> tuple[float, ...] | None:
    if v is None:
        return None
    if isinstance(v, (int, float)):
        return (float(v),)
    if isinstance(v, Tensor):
        return tuple(float(t) for t in v.reshape(-1))
    try:
        return tuple(float(t) for t in v)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a number or a sequence of numbers, got {v!r}") from e


@dataclass(frozen=True)
class Baseline:
    """A baseline spec. Strings such as ``"blur:4"`` are read by :meth:`parse`.

    Args:
        kind: one of ``black, white, zeros, uniform, gaussian, blur, adversarial, tensor``.
        sigma: gaussian: noise std as a fraction of the pixel range (0.2); blur: kernel std in
            pixels (default ``max(H, W) / 16``).
        start: adversarial: ``"input"`` (the image itself, default) or ``"noise"`` (uniform noise);
            with ``tensor`` given, the optimisation starts from that image instead.
        steps: adversarial: the most steps (each one forward+backward pass per image).
        lr: adversarial: the largest change of a pixel in one step, as a fraction of the range.
        tol: adversarial: stop once ``|p1 - p2| < tol`` for the two top classes.
        tensor: the baseline itself for kind ``"tensor"``; the start image for ``"adversarial"``.
    """

    kind: str = "black"
    sigma: float | None = None
    start: str = "input"
    steps: int = 200
    lr: float = 0.05
    tol: float = 1e-3
    tensor: Tensor | None = None

    @classmethod
    def parse(cls, spec: str | Tensor | Baseline) -> Baseline:
        if isinstance(spec, Baseline):
            return spec._checked()
        if isinstance(spec, Tensor):
            return cls("tensor", tensor=spec.detach())
        if not isinstance(spec, str):
            raise InputError(f"a baseline is a name ({', '.join(KINDS[:-1])}), a Baseline or a tensor, got {spec!r}")
        name, _, arg = spec.strip().lower().partition(":")
        name = {"black_image": "black", "zero": "zeros", "noise": "uniform", "blurred": "blur",
                "5050": "adversarial", "adversarial_5050": "adversarial"}.get(name, name)
        b = cls(name)
        if arg:
            if name == "adversarial":
                b = replace(b, start=arg)
            elif name in ("gaussian", "blur"):
                try:
                    b = replace(b, sigma=float(arg))
                except ValueError as e:
                    raise InputError(f"baseline '{spec}': '{arg}' is not a number") from e
            else:
                raise InputError(f"baseline '{name}' takes no ':' option (got '{spec}')")
        return b._checked()

    def _checked(self) -> Baseline:
        if self.kind not in KINDS:
            raise InputError(f"unknown baseline '{self.kind}': use one of {', '.join(KINDS[:-1])} or a tensor")
        if self.kind == "tensor" and self.tensor is None:
            raise InputError("a 'tensor' baseline needs the tensor")
        if self.start not in ("input", "noise"):
            raise InputError(f"adversarial baseline start must be 'input' or 'noise', got {self.start!r}")
        if self.sigma is not None and self.sigma < 0:
            raise InputError(f"baseline sigma must be >= 0, got {self.sigma}")
        if self.steps < 1 or self.lr <= 0 or self.tol <= 0:
            raise InputError("adversarial baseline needs steps >= 1, lr > 0 and tol > 0")
        return self

    @property
    def random(self) -> bool:
        return self.kind in ("uniform", "gaussian") or (self.kind == "adversarial" and self.start == "noise")

    def describe(self) -> str:
        if self.kind == "tensor":
            return f"tensor{list(self.tensor.shape) if self.tensor is not None else ''}"
        if self.kind == "adversarial":
            return "adversarial:tensor" if self.tensor is not None else f"adversarial:{self.start}"
        return self.kind if self.sigma is None else f"{self.kind}:{self.sigma:g}"


def make_baselines(
    spec: Baseline, x: Tensor, space: PixelSpace, explainer: Explainer, *, first: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """Baselines ``[B, C, H, W]`` for the chunk ``x`` and extras (the adversarial probabilities).

    ``first`` is the index of ``x[0]`` in the whole call (a method passes its ``chunk_start``).
    Random kinds draw image ``first + i`` from ``explainer.image_generator(first + i)``, and
    per-image tensors are taken from that index, so a baseline does not depend on batching.
    """
    lo, hi = space.bounds(x)
    if spec.kind == "black":
        return lo.expand_as(x).clone(), {}
    if spec.kind == "white":
        return hi.expand_as(x).clone(), {}
    if spec.kind == "zeros":
        return torch.zeros_like(x), {}
    if spec.kind == "uniform":
        return lo + (hi - lo) * _draw(x, explainer, torch.rand, first), {}
    if spec.kind == "gaussian":
        sigma = 0.2 if spec.sigma is None else spec.sigma
        return space.clip(x + sigma * space.span(x) * _draw(x, explainer, torch.randn, first)), {}
    if spec.kind == "blur":
        sigma = max(x.shape[-2:]) / 16 if spec.sigma is None else spec.sigma
        return gaussian_blur(x, sigma), {}
    if spec.kind == "tensor":
        return _user_tensor(spec.tensor, x, first), {}
    if spec.tensor is not None:  # from a given data image
        start = _user_tensor(spec.tensor, x, first)
    elif spec.start == "input":
        start = x
    else:
        start = lo + (hi - lo) * _draw(x, explainer, torch.rand, first)
    base, probs, classes = adversarial_5050(explainer, start, space, spec)
    return base, {"baseline_probs": probs, "baseline_classes": classes}


def _draw(x: Tensor, explainer: Explainer, fn: Any, first: int) -> Tensor:
    out = [fn(x.shape[1:], generator=explainer.image_generator(first + i), dtype=x.dtype) for i in range(len(x))]
    return torch.stack(out).to(x.device)


def _user_tensor(t: Tensor | None, x: Tensor, offset: int) -> Tensor:
    assert t is not None
    t = t.to(device=x.device, dtype=x.dtype)
    if t.dim() == 3:
        t = t.unsqueeze(0)
    if t.dim() != 4 or t.shape[1:] != x.shape[1:]:
        raise InputError(f"baseline tensor {tuple(t.shape)} does not fit images {tuple(x.shape[1:])}")
    if len(t) == 1:
        return t.expand_as(x).clone()
    if offset + len(x) > len(t):
        raise InputError(f"got {len(t)} baseline images; give one per image or a single [C, H, W] baseline")
    return t[offset : offset + len(x)].clone()


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of ``x [B, C, H, W]`` (std ``sigma`` pixels, edges replicated)."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def adversarial_5050(
    explainer: Explainer, start: Tensor, space: PixelSpace, spec: Baseline
) -> tuple[Tensor, Tensor, Tensor]:
    """Move ``start`` until the model's two top classes are equally likely (the 50/50 baseline).

    The two classes ``(a, b)`` are the top two at ``start``. Each step is a Newton step on one
    scalar function of the input, ``z <- z - h(z) grad h / |grad h|^2``, capped at ``lr`` times
    the pixel range per pixel and clipped to the range:

    * ``h = l_a - l_b`` (logits) while ``a`` and ``b`` are the two top classes: the gap closes,
      in one step inside a linear region of a ReLU network;
    * ``h = max_{k != a, b} l_k - min(l_a, l_b) + 0.1`` when another class overtook them.

    An image stops once ``a`` and ``b`` are the two top classes and ``|p_a - p_b| < tol``.
    Images are independent, so batching does not change the result.

    Returns ``(baselines, probs [B, 2], classes [B, 2])``, probabilities as achieved.
    """
    z = space.clip(start.detach().clone())
    with torch.no_grad():
        classes = explainer.forward(z, grad=False).topk(2, dim=1).indices
    cap = spec.lr * space.span(z)
    active = torch.ones(len(z), dtype=torch.bool, device=z.device)
    for _ in range(spec.steps):
        ids = active.nonzero().squeeze(1)
        if len(ids) == 0:
            break
        zi = z[ids].detach().requires_grad_(True)
        with torch.enable_grad():
            logits = explainer.forward(zi)
            pair = logits.gather(1, classes[ids])
            others = logits.scatter(1, classes[ids], float("-inf")).amax(dim=1)
            low = pair.amin(dim=1)
            h = torch.where(others < low, pair[:, 0] - pair[:, 1], others - low + 0.1)
            (g,) = torch.autograd.grad(h.sum(), zi)
        done = _balanced(torch.log_softmax(logits.detach(), dim=1), classes[ids], spec.tol)
        keep = ~done
        active[ids[done]] = False
        if not bool(keep.any()):
            continue
        move, g, h = ids[keep], g[keep], h.detach()[keep]
        shape = (-1, *([1] * (z.dim() - 1)))
        norm2 = g.flatten(1).pow(2).sum(1).clamp_min(1e-30)
        step = (h / norm2).reshape(shape) * g
        worst = (step.abs() / cap[move]).flatten(1).amax(1).clamp_min(1.0)
        z[move] = space.clip(z[move] - step / worst.reshape(shape))
    with torch.no_grad():
        probs = torch.softmax(explainer.forward(z, grad=False), dim=1).gather(1, classes)
    return z.detach(), probs, classes


def _balanced(logp: Tensor, classes: Tensor, tol: float) -> Tensor:
    top2 = logp.topk(2, dim=1).indices.sort(dim=1).values
    same = (top2 == classes.sort(dim=1).values).all(dim=1)
    p = logp.gather(1, classes).exp()
    return same & ((p[:, 0] - p[:, 1]).abs() < tol)
