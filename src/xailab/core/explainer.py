"""The base class of every explanation method.

A method subclasses :class:`Explainer` and implements one hook, :meth:`Explainer._explain_batch`:
given a chunk of images ``x [B, C, H, W]`` and their targets ``[B, T]`` it returns the maps
``[B, T, H, W]`` (or ``[B, T, C, H, W]``). The base class does everything else once for all
methods: input checks, one forward pass to read the model's scores and resolve the targets,
refusing NaN logits and out-of-range targets, splitting the images into chunks so that at most
``batch_size`` samples go through the model at once, eval mode with every flag restored, seeds,
timing and the :class:`~xailab.core.explanation.Explanation`.

    explainer = create("saliency", model, batch_size=128)
    result = explainer.explain(images, target=["true", "top1", "least"], labels=labels)
    result.maps.shape   # [N, 3, H, W]
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, ModelError
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_device, model_session
from xailab.core.targets import TargetSpec, resolve_targets

Output = Literal["logit", "probability", "log_probability"]


class Explainer:
    """Explains a classifier's predictions; see the module docstring.

    Args:
        model: a classifier mapping ``[N, C, H, W]`` images to ``[N, K]`` scores.
        batch_size: the most samples in one forward pass, after a method has expanded each image
            into its steps, noise samples or perturbations. The one memory knob.
        output: which score is explained: the raw ``"logit"`` (default, as Captum and
            pytorch-grad-cam do), the softmax ``"probability"`` or its ``"log_probability"``.
        eval_mode: put the model in eval mode while explaining (restored afterwards).
        seed: seed of every random draw the method makes; the same seed gives the same maps,
            whatever ``batch_size``.
    """

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    #: whether maps keep the channel dimension ([N, T, C, H, W]) rather than one value a pixel
    per_channel: ClassVar[bool] = False
    #: cheap settings (few samples or steps) for smoke runs, quick demos and conformance tests
    quick_params: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        model: nn.Module,
        *,
        batch_size: int = 64,
        output: Output = "logit",
        eval_mode: bool = True,
        seed: int = 0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        if output not in ("logit", "probability", "log_probability"):
            raise InputError(f"output must be 'logit', 'probability' or 'log_probability', not {output!r}")
        self.model = model
        self.batch_size = int(batch_size)
        self.output: Output = output
        self.eval_mode = eval_mode
        self.seed = int(seed)
        self.evaluations = 0
        self._offset = 0  # index of the current chunk's first image in the whole call

    # -- what subclasses provide --------------------------------------------------------------
    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        """Maps ``[B, T, H, W]`` (or ``[B, T, C, H, W]``) for images ``x`` and ``targets [B, T]``."""
        raise NotImplementedError

    def samples_per_image(self, n_targets: int) -> int:
        """Model evaluations one image costs in ``_explain_batch`` (sizes the image chunks)."""
        return n_targets

    def params(self) -> dict[str, Any]:
        """The parameters that define this explainer's output (recorded in the Explanation)."""
        return {"batch_size": self.batch_size, "output": self.output, "seed": self.seed}

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        """Called once per ``explain`` call before the chunks (e.g. to check the model)."""

    # -- the public contract ------------------------------------------------------------------
    def explain(
        self,
        inputs: Tensor,
        target: TargetSpec = "top1",
        labels: Tensor | Sequence[int] | None = None,
        *,
        progress: bool = False,
    ) -> Explanation:
        """Explain ``inputs [N, C, H, W]`` for ``target`` (see :mod:`xailab.core.targets`)."""
        start = time.perf_counter()
        x = self._check_inputs(inputs)
        self.evaluations = 0
        with model_session(self.model, eval_mode=self.eval_mode):
            logits = self.forward(x, grad=False)
            targets, names = resolve_targets(target, logits, labels)
            self._prepare(x, logits)
            per_chunk = self.images_per_chunk(targets.shape[1])
            chunks = []
            bar = _progress(len(x), f"{self.name or type(self).__name__}", progress)
            for lo in range(0, len(x), per_chunk):
                self._offset = lo
                maps = self._explain_batch(x[lo : lo + per_chunk], targets[lo : lo + per_chunk])
                chunks.append(maps.detach().cpu())
                bar.update(min(per_chunk, len(x) - lo))
            bar.close()
        maps = torch.cat(chunks)
        extras = self._extras()
        return Explanation(
            maps=maps,
            targets=targets.cpu(),
            target_names=tuple(names),
            logits=logits.detach().cpu(),
            method=self.name or type(self).__name__,
            params=self.params(),
            seconds=time.perf_counter() - start,
            evaluations=self.evaluations,
            extras=extras,
        )

    __call__ = explain

    def _extras(self) -> dict[str, Tensor]:
        """Method-specific arrays collected across chunks (see Explanation.extras)."""
        return {}

    # -- helpers for subclasses -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def images_per_chunk(self, n_targets: int) -> int:
        return max(1, self.batch_size // max(1, self.samples_per_image(n_targets)))

    def _check_inputs(self, inputs: Tensor) -> Tensor:
        if not isinstance(inputs, Tensor):
            raise InputError(f"inputs must be a torch.Tensor [N, C, H, W], got {type(inputs).__name__}")
        if inputs.dim() == 3:
            raise InputError(
                f"inputs must be a batch [N, C, H, W], got one image {tuple(inputs.shape)}: "
                "use images.unsqueeze(0)"
            )
        if inputs.dim() != 4:
            raise InputError(f"inputs must be [N, C, H, W], got shape {tuple(inputs.shape)}")
        if len(inputs) == 0:
            raise InputError("no images to explain")
        if not inputs.is_floating_point():
            raise InputError(f"inputs must be floating point, got {inputs.dtype} (convert and normalise first)")
        if not torch.isfinite(inputs).all():
            raise InputError("inputs contain NaN or infinite values")
        return inputs.detach().to(self.device)

    def forward(self, x: Tensor, *, grad: bool = True) -> Tensor:
        """The model's logits for ``x``, in chunks of ``batch_size``; counts evaluations."""
        outs = []
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            for lo in range(0, len(x), self.batch_size):
                out = self.model(x[lo : lo + self.batch_size])
                outs.append(check_logits(out, len(x[lo : lo + self.batch_size])))
        self.evaluations += len(x)
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    def score(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The explained score of each row: ``logits[i, targets[i]]`` (or its probability)."""
        if self.output == "probability":
            logits = torch.softmax(logits, dim=1)
        elif self.output == "log_probability":
            logits = torch.log_softmax(logits, dim=1)
        return logits.gather(1, targets.reshape(-1, 1)).squeeze(1)

    def target_gradients(self, x: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """``(d score_i / d x_i, score_i)`` for every row ``i`` of ``x [M, ...]`` and ``targets [M]``.

        Rows are independent (the model is in eval mode), so one backward pass of the summed
        scores gives every row's gradient at once; rows go through in chunks of ``batch_size``.
        """
        grads, scores = [], []
        for lo in range(0, len(x), self.batch_size):
            xi = x[lo : lo + self.batch_size].detach().requires_grad_(True)
            with torch.enable_grad():
                s = self.score(self.forward(xi), targets[lo : lo + self.batch_size])
                (g,) = torch.autograd.grad(s.sum(), xi)
            grads.append(g)
            scores.append(s.detach())
        return torch.cat(grads), torch.cat(scores)

    def generator(self, image_index: int) -> torch.Generator:
        """A generator for the image at ``image_index`` within the current chunk.

        Seeded from ``seed`` and the image's position in the whole call, so the draws for an
        image do not depend on how the call was split into chunks (batch-size parity).
        """
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + self._offset + image_index)
        return g


def expand_targets(targets: Tensor, samples: int) -> Tensor:
    """``[B, T]`` -> ``[B * T * samples]`` in (image, target, sample) order."""
    return targets.reshape(-1, 1).expand(-1, samples).reshape(-1)


def check_logits(out: Any, n: int) -> Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "logits") and not isinstance(out, Tensor):  # HF-style output objects
        out = out.logits
    if not isinstance(out, Tensor):
        raise ModelError(f"the model returned {type(out).__name__}, expected a tensor of logits")
    if out.dim() != 2 or out.shape[0] != n:
        raise ModelError(f"the model must return logits [N, classes]; for {n} images it returned {tuple(out.shape)}")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).any(dim=1).sum())
        raise ModelError(f"the model returned NaN or infinite logits for {bad} of {n} images")
    return out


class _NoBar:
    def update(self, n: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img")


def full_pass_images(samples_per_image: int, batch_size: int) -> int:
    """Images per chunk such that the chunk's samples fill whole passes of ``batch_size``.

    The least number of images whose samples are a multiple of ``batch_size`` when that is
    small; otherwise enough for about 16 passes (at most one part-filled pass in 16). Methods
    that share rows (the gradient engine, the gradient CAMs, the shared pass) use this one rule
    so that the same rows go through the model in the same passes.
    """
    spi = max(1, samples_per_image)
    k = math.lcm(spi, batch_size) // spi
    if k * spi > 16 * batch_size:
        k = -(-16 * batch_size // spi)
    return max(1, k)


def chunked(n: int, size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in steps of ``size``."""
    for lo in range(0, n, max(1, size)):
        yield slice(lo, min(n, lo + size))


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)
