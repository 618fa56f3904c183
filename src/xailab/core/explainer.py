"""The base class of every explanation method.

A method subclasses :class:`Explainer` and implements one hook, :meth:`Explainer._explain_batch`:
given a chunk of images ``x [B, C, H, W]`` and their targets ``[B, T]`` it returns the maps
``[B, T, H, W]`` (or ``[B, T, C, H, W]``). The base class does everything else once for all
methods: input checks, one forward pass to read the model's scores and resolve the targets,
refusing NaN logits and out-of-range targets, splitting the images into chunks so that at most
``batch_size`` samples go through the model at once, eval mode with every flag restored, seeds,
timing and the :class:`~xailab.core.explanation.Explanation`.

*One-pass* methods (``one_pass = True``: saliency, input x gradient, the gradient CAMs, LRP,
DeepLIFT) see each image unchanged in their own grad-enabled forward pass, so they need no
separate scoring pass: they implement :meth:`Explainer._explain_rows`, which gets the chunk's
targets as :class:`RowTargets`, resolved image by image from the logits of that very forward
pass (each pass's logits are checked for NaN before anything else happens). Targets, logits and
maps are then those of one pass per (image, target) row, and ``evaluations`` counts no scoring
pass.

    explainer = create("saliency", model, batch_size=128)
    result = explainer.explain(images, target=["true", "top1", "least"], labels=labels)
    result.maps.shape   # [N, 3, H, W]
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from xailab.core.card import MethodCard
from xailab.core.errors import InputError, ModelError
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_device, model_session
from xailab.core.params import Limit, checked_init
from xailab.core.rows import (
    RowTargets,
    cat,
    ceil_div,
    check_logits,
    chunked,
    expand_targets,
    full_pass_images,
    keep_format,
    repeat_rows,
    row_targets,
    target_scores,
    unpack_logits,
)
from xailab.core.targets import TargetPlan, TargetSpec, resolve_targets

__all__ = [
    "Explainer", "Output", "RowTargets", "all_ranges", "cat", "ceil_div", "check_logits", "chunked",
    "expand_targets", "full_pass_images", "keep_format", "repeat_rows", "row_targets", "target_scores", "unpack_logits",
]

Output = Literal["logit", "probability", "log_probability"]


def all_ranges(cls: type) -> dict[str, Limit]:
    """The ``ranges`` of ``cls`` and its bases, the most derived winning."""
    out: dict[str, Limit] = {}
    for klass in reversed(cls.__mro__):
        out.update(klass.__dict__.get("ranges", {}))
    return out


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
    #: the progress bar counts model evaluations ("sample"), not images: for methods that spend
    #: many forwards on one image (LIME, KernelSHAP), whose bar would otherwise sit at 0/N
    progress_in_samples: ClassVar[bool] = False
    #: whether maps keep the channel dimension ([N, T, C, H, W]) rather than one value a pixel
    per_channel: ClassVar[bool] = False
    #: cheap settings (few samples or steps) for smoke runs, quick demos and conformance tests
    quick_params: ClassVar[dict[str, Any]] = {}
    #: whether the method's own forward passes see every image unchanged, with gradients on: then
    #: ``explain`` skips the scoring pass and resolves targets from those passes (see the module
    #: docstring); the method implements ``_explain_rows`` and ``_prepare_one_pass``
    one_pass: ClassVar[bool] = False
    #: valid ranges of numeric parameters, checked with the types the signatures declare before
    #: any ``__init__`` runs (``n_steps=2.5`` is refused, not made 2); merged along the class tree
    ranges: ClassVar[dict[str, Limit]] = {"batch_size": (1, None)}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            setattr(cls, "__init__", checked_init(cls.__dict__["__init__"], all_ranges))  # noqa: B010

    #: what the method is, its paper, limits and cost (:mod:`xailab.core.card`); each registered
    #: class declares its own, which the explain job writes into the run for the report
    card: ClassVar[MethodCard | None] = None

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
        self.progress_bar: Any = _NoBar()  # the current explain call's bar
        self._chunk_start = 0  # index of the current chunk's first image in the whole call
        self.index_base = 0  # index of the call's first image in the whole dataset (shards)

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

    def _explain_rows(self, x: Tensor, rows: RowTargets) -> Tensor:
        """One-pass methods: maps ``[B, T, ...]`` for images ``x``; the targets of the (image,
        target) rows come from ``rows.rows(lo, hi, logits)`` once the rows' logits exist."""
        raise NotImplementedError

    def _prepare_one_pass(self, x: Tensor) -> None:
        """One-pass methods: called once per ``explain`` call before the chunks (no logits yet)."""

    # -- the public contract ------------------------------------------------------------------
    def check_model(self, example: Tensor) -> None:
        """Refuse, before any work, a model this method cannot explain (its own preparation, with the
        structure checks of DeepLIFT, LRP, ..., run on one image): raises what ``explain`` would raise
        first (:class:`~xailab.core.errors.UnsupportedModelError` for a model the method does not support)."""
        x = self._check_inputs(example[:1])
        before = self.evaluations if hasattr(self, "evaluations") else 0
        try:
            with model_session(self.model, eval_mode=self.eval_mode):
                if self.one_pass:
                    self._prepare_one_pass(x)
                else:
                    self._prepare(x, self.forward(x, grad=False))
        finally:
            self.evaluations = before

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
        bar = _progress(len(x), f"{self.name or type(self).__name__}", progress, self.progress_in_samples)
        self.progress_bar = bar  # advanced per sample by methods with progress_in_samples
        try:
            with model_session(self.model, eval_mode=self.eval_mode):
                if self.one_pass:
                    maps, targets, names, logits = self._explain_one_pass(x, target, labels, bar)
                else:
                    maps, targets, names, logits = self._explain_scored(x, target, labels, bar)
        finally:
            bar.close()
        return self.result(maps, targets, names, logits, seconds=time.perf_counter() - start,
                           evaluations=self.evaluations)

    def result(self, maps: Tensor, targets: Tensor, target_names: Sequence[str], logits: Tensor, *,
               seconds: float, evaluations: int) -> Explanation:
        """The :class:`Explanation` of a call: the maps, targets and logits computed, with this
        method's name, parameters and the extras it collected over the call's chunks (a driver
        such as :mod:`xailab.methods.shared` that runs the chunks itself ends with this too)."""
        extras = self._extras()
        return Explanation(
            maps=maps,
            targets=targets.cpu(),
            target_names=tuple(target_names),
            logits=logits.detach().cpu(),
            method=self.name or type(self).__name__,
            params=self.params(),
            seconds=seconds,
            evaluations=evaluations,
            extras=extras,
        )

    def _explain_scored(
        self, x: Tensor, target: TargetSpec, labels: Tensor | Sequence[int] | None, bar: Any
    ) -> tuple[Tensor, Tensor, list[str], Tensor]:
        """One scoring pass resolves every target, then the chunks."""
        logits = self.forward(x, grad=False)
        targets, names = resolve_targets(target, logits, labels)
        self._prepare(x, logits)
        if self.progress_in_samples:
            bar.reset(total=len(x) * self.samples_per_image(targets.shape[1]))
        per_chunk = self.images_per_chunk(targets.shape[1])
        chunks = []
        for lo in range(0, len(x), per_chunk):
            self._chunk_start = lo
            maps = self._explain_batch(x[lo : lo + per_chunk], targets[lo : lo + per_chunk])
            chunks.append(maps.detach().cpu())
            if not self.progress_in_samples:
                bar.update(min(per_chunk, len(x) - lo))
        return torch.cat(chunks).contiguous(), targets, names, logits

    def _explain_one_pass(
        self, x: Tensor, target: TargetSpec, labels: Tensor | Sequence[int] | None, bar: Any
    ) -> tuple[Tensor, Tensor, list[str], Tensor]:
        """No scoring pass: each chunk's targets and logits come from the method's own passes."""
        plan = TargetPlan(target, len(x), labels)
        n_targets = plan.n_targets
        if n_targets is None:  # "all": one row per class, so the number of classes is needed first
            n_targets = int(self.forward(x[:1], grad=False).shape[1])
        self._prepare_one_pass(x)
        per_chunk = self.images_per_chunk(n_targets)
        chunks, targets, logits = [], [], []
        for lo in range(0, len(x), per_chunk):
            self._chunk_start = lo
            xc = x[lo : lo + per_chunk]
            rows = RowTargets.from_plan(plan, lo, len(xc), n_targets)
            maps = self._explain_rows(xc, rows)
            chunks.append(maps.detach().cpu().contiguous())  # channels-last inputs give such maps
            targets.append(rows.targets)
            logits.append(rows.logits)
            bar.update(len(xc))
        all_logits = cat(logits)  # one-pass maps are fresh tensors: one chunk is not copied again
        return cat(chunks), cat(targets), plan.names(all_logits.shape[1]), all_logits

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
        # one reduction: a NaN or inf makes the sum non-finite (a finite overflow needs the element-wise check)
        if not bool(torch.isfinite(inputs.sum())) and not bool(torch.isfinite(inputs).all()):
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
        return target_scores(logits, targets, self.output)

    def target_gradients(
        self, x: Tensor, targets: Tensor | RowTargets, first_row: int = 0
    ) -> tuple[Tensor, Tensor]:
        """``(d score_i / d x_i, score_i)`` for every row ``i`` of ``x [M, ...]`` and ``targets [M]``.

        Rows are independent (the model is in eval mode), so one backward pass of the summed
        scores gives every row's gradient at once; rows go through in chunks of ``batch_size``.
        ``targets`` may be :class:`RowTargets` (one-pass methods): ``x`` are then its rows
        ``first_row ..``, whose targets are resolved from their own logits.
        """
        grads, scores = [], []
        for lo in range(0, len(x), self.batch_size):
            hi = min(len(x), lo + self.batch_size)
            with torch.enable_grad():
                xi, logits = self._gradient_pass(x[lo:hi])
                s = self.score(logits, row_targets(targets, lo, hi, logits, first_row))
                (g,) = torch.autograd.grad(s.sum(), xi)
            grads.append(g)
            scores.append(s.detach())
        return cat(grads), cat(scores)

    def _gradient_pass(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """One pass of :meth:`target_gradients`: ``(leaf, logits)``, ``x`` as a leaf needing grad."""
        xi = x.detach().requires_grad_(True)
        return xi, self.forward(xi)

    @property
    def chunk_start(self) -> int:
        """Index, in the whole ``explain`` call, of the first image of the chunk being explained."""
        return self._chunk_start

    @contextmanager
    def at_chunk(self, start: int) -> Iterator[None]:
        """Draw (:meth:`generator`) as for a chunk whose first image is image ``start`` of a call:
        e.g. an outer method driving this one chunk by chunk, or the draws of a whole call
        (``start=0``) outside ``explain``. The previous chunk start is restored afterwards."""
        saved, self._chunk_start = self._chunk_start, int(start)
        try:
            yield
        finally:
            self._chunk_start = saved

    def image_generator(self, index: int) -> torch.Generator:
        """A generator for image ``index`` of the whole call.

        Seeded from ``seed`` and the image's position in the whole call (plus ``index_base``), so
        the draws for an image do not depend on how the call was split into chunks.
        """
        g = torch.Generator(device="cpu")
        g.manual_seed(self.seed * 1_000_003 + self.index_base + index)
        return g

    def generator(self, image_index: int) -> torch.Generator:
        """A generator for the image at ``image_index`` within the current chunk
        (:meth:`image_generator` of ``chunk_start + image_index``: batch-size parity)."""
        return self.image_generator(self._chunk_start + image_index)

    def set_index_base(self, base: int) -> None:
        """Key random draws by dataset index ``base + i`` (``i`` the image's place in a call).

        A shard explained as its own call (``xailab.distributed``) then draws exactly what one
        call over the whole dataset draws for the same images. Explainers this one holds (e.g.
        SmoothGrad's inner method) get the same base.
        """
        seen: set[int] = set()

        def visit(e: Explainer) -> None:
            if id(e) not in seen:
                seen.add(id(e))
                e.index_base = int(base)
                for value in vars(e).values():
                    if isinstance(value, Explainer):
                        visit(value)

        visit(self)


class _NoBar:
    def update(self, n: int) -> None: ...
    def reset(self, total: int) -> None: ...
    def close(self) -> None: ...


def _progress(total: int, desc: str, enabled: bool, samples: bool = False) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample" if samples else "img", unit_scale=samples)


setattr(Explainer, "__init__", checked_init(Explainer.__dict__["__init__"], all_ranges))  # noqa: B010
