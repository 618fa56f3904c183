"""DeepLIFT with the rescale rule (Shrikumar et al. 2017, arXiv:1704.02685).

Each nonlinearity ``y = f(u)`` passes back the *multiplier* ``(f(u) - f(u_b)) / (u - u_b)``
(``u_b``: the same unit's input when the model sees the baseline) instead of ``f'(u)``; linear
layers (convolutions, linear, BatchNorm in eval mode, average pooling) keep their gradient.
The chain rule over these multipliers gives ``m = d DeepLIFT / d x`` and

    A(x) = (x - b) * m,        sum_i A_i = S_t(x) - S_t(b)   (summation-to-delta, exact)

Max pooling uses Captum's rule: the output difference is split into the part due to the
input's maxima and the part due to the baseline's, each routed back through its own argmax
and divided by the input difference. Where ``|u - u_b| < eps`` the plain gradient is used.

How it runs: per pass, the baselines go through the model first (no grad; each hooked call
records its input and output), then the images, where each call is paired with the baseline's
call of the same index and its output replaced by an autograd function that keeps the values
and multiplies the gradient by the multiplier. Pairing *calls*, not modules, keeps a module
applied several times (torchvision ResNet's ``self.relu``) exact; Captum stores one input per
module and raises on such models. In-place activations are fed a copy of their input.

Activations and max-pools applied as functions (``F.relu(x)``, ``x.relu()``, ``F.max_pool2d``:
no module, so no hook) are handled by running a hook-friendly copy of the model, traced with
torch.fx (:func:`xailab.core.rewrite.hook_friendly`; the user's model is not modified); where the
model cannot be traced, the refusal names the line. Refused with
:class:`~xailab.core.errors.UnsupportedModelError`: modules with a nonlinearity
the rule does not cover (LayerNorm, GroupNorm, softmax, attention, ...) and products or quotients
of two activations (the gate of a squeeze-excitation block, as in EfficientNet: the rescale rule
does not split ``Δ(a·b)`` between ``a`` and ``b``). The summation error is in ``extras["delta"]``;
a warning is raised when it exceeds 1 % of ``|S_t(x) - S_t(b)|``, the sign of a nonlinearity
not seen.

    dl = create("deeplift", model, baseline="black", mean=MEAN, std=STD)
    result = dl.explain(images, target="top1")
    result.extras["delta"].abs().max()   # ~1e-6 in float32
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from xailab.core.errors import InputError, ModelError, UnsupportedModelError
from xailab.core.explainer import Explainer, RowTargets, keep_format
from xailab.core.hooks import HookScope
from xailab.core.params import Limit
from xailab.core.registry import register
from xailab.core.rewrite import hook_ready
from xailab.core.structure import ACTIVATIONS, PRODUCTS, activation_products, require_supported
from xailab.methods.gradient.base import flat_sum, gradient_card
from xailab.methods.gradient.baselines import Baseline, PixelSpace, make_baselines

ELEMENTWISE: tuple[type[nn.Module], ...] = (
    *ACTIVATIONS, nn.RReLU, nn.Softsign, nn.Tanhshrink, nn.LogSigmoid, nn.Threshold,
    nn.Hardshrink, nn.Softshrink,
)
POOLS: tuple[type[nn.Module], ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
UNSUPPORTED: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.Softmax2d,
    nn.MultiheadAttention, nn.LPPool1d, nn.LPPool2d, nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d, nn.GLU, nn.Bilinear, nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


class _Rescale(torch.autograd.Function):
    """Returns ``out``; passes back ``grad * m`` to ``inp`` (and nothing through ``out``)."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, m: Tensor) -> Tensor:
        ctx.save_for_backward(m)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (m,) = ctx.saved_tensors
        return grad * m, None, None


class _PoolRescale(torch.autograd.Function):
    """Captum's max-pool rule; routing uses the pool's own backward, so overlapping windows work."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, ref_in: Tensor, ref_out: Tensor,
                module: nn.Module, eps: float) -> Tensor:
        # the pool's own graph from inp to out holds the image's argmax: routing reuses it
        ctx.save_for_backward(inp, out, ref_in, ref_out)
        ctx.module, ctx.eps = module, eps
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inp, out, ref_in, ref_out = ctx.saved_tensors
        top = torch.maximum(out, ref_out)
        with torch.enable_grad():
            (ux,) = torch.autograd.grad(out, inp, grad * (top - ref_out), retain_graph=True)
            ri = ref_in.detach().requires_grad_(True)
            (ur,) = torch.autograd.grad(ctx.module.forward(ri), ri, grad * (out - top))
            d_in = inp.detach() - ref_in
            new = ux.add_(ur).div_(d_in)
            mag = d_in.abs_()
            if mag.numel() and float(mag.amin()) < ctx.eps:  # one reduction, no mask, when none is small
                (plain,) = torch.autograd.grad(out, inp, grad, retain_graph=True)
                new = torch.where(mag < ctx.eps, plain, new)
        return new, None, None, None, None, None


def _derivative(module: nn.Module, u: Tensor) -> Tensor:
    """``f'(u)`` of an elementwise module (bypassing its hooks)."""
    with torch.enable_grad():
        ui = u.detach().requires_grad_(True)
        y = module.forward(ui.clone())
        (d,) = torch.autograd.grad(y.sum(), ui)
    return d


class _Pairing:
    """Forward hooks: record the baselines' calls, then rescale the images' calls.

    Records keep references, not copies; if the model later changes a recorded tensor in place
    (its autograd version moves on), ``stale`` says so and the baseline pass is redone with
    ``copy=True``.
    """

    def __init__(self, eps: float) -> None:
        self.eps = eps
        self.recording = True
        self.copy = False
        self.refs: list[tuple[Tensor, Tensor]] = []
        self.versions: list[tuple[int, int]] = []
        self.cursor = 0
        self._inputs: list[Tensor] = []

    def record(self, copy: bool = False) -> None:
        self.recording, self.copy, self.refs, self.versions, self.cursor = True, copy, [], [], 0

    @property
    def stale(self) -> bool:
        return any((a._version, b._version) != v for (a, b), v in zip(self.refs, self.versions, strict=True))

    def replay(self) -> None:
        self.recording, self.cursor = False, 0

    def pre(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        inp = args[0]
        self._inputs.append(inp)
        if getattr(module, "inplace", False):  # the module would overwrite the input we need
            return (inp.clone(), *args[1:])
        return None

    def post(self, module: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
        inp = self._inputs.pop()
        if self.recording:
            if self.copy:
                inp, out = inp.clone(), out.clone()
            self.refs.append((inp, out))
            self.versions.append((inp._version, out._version))
            return None
        if self.cursor >= len(self.refs):
            raise ModelError("DeepLIFT: the model made more activation calls for the image than for "
                             "its baseline; the forward pass must not depend on the input's values")
        ref_in, ref_out = self.refs[self.cursor]
        self.cursor += 1
        if ref_in.shape != inp.shape:
            raise ModelError("DeepLIFT: the model's activation calls differ between the image and "
                             "its baseline; the forward pass must not depend on the input's values")
        if isinstance(module, POOLS):
            return _PoolRescale.apply(inp, out, ref_in, ref_out, module, self.eps)
        with torch.no_grad():
            d_in = inp - ref_in
            m = (out - ref_out).div_(d_in)
            mag = d_in.abs_()
            if mag.numel() and float(mag.amin()) < self.eps:  # one reduction, no mask, when none is small
                m = torch.where(mag < self.eps, _derivative(module, inp), m)
        return _Rescale.apply(inp, out, m)


@register("deeplift", family="gradient", aliases=("deep_lift",))
class DeepLift(Explainer):
    """DeepLIFT with the rescale rule: exact summation-to-delta; refuses models it would get wrong.

    Args:
        baseline: as for Integrated Gradients (``black`` default, ``blur``, a tensor, ...).
        eps: below this input difference the plain gradient replaces the multiplier.
        mean, std, pixel_range: how inputs relate to pixels; see ``PixelSpace``.
    """

    ranges: ClassVar[dict[str, Limit]] = {"eps": (0, None)}

    card = gradient_card(
        "DeepLIFT (rescale rule)",
        summary="Contributions of each input to the difference between the score and the score of"
                " a reference input, propagated with the rescale rule (Δy/Δx instead of the "
                "gradient), so the map sums exactly to S_c(x) − S_c(x').",
        paper="Shrikumar, Greenside, Kundaje (2017), \"Learning Important Features Through "
              "Propagating Activation Differences\", ICML.",
        where="ICML 2017; ReLU networks built from standard modules.",
        cost="Two forward passes (input and reference) and one backward pass per image and "
             "target.",
        limits=(
            "Functional activations (F.relu) are rewritten into modules with torch.fx; a model that "
            "cannot be traced, or has LayerNorm, attention or softmax, is refused rather than "
            "explained wrongly.",
            "The reference (baseline) input decides the answer, as for IG.",
            "The rescale rule ignores interactions; the reveal-cancel rule is not implemented.",
        ),
    )

    per_channel = True
    one_pass = True  # the targets come from the images' own (rescaled) forward pass

    def __init__(
        self,
        model: nn.Module,
        *,
        baseline: str | Tensor | Baseline = "black",
        eps: float = 1e-10,
        mean: Any = None,
        std: Any = None,
        pixel_range: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.baseline = Baseline.parse(baseline)
        self.space = PixelSpace.for_model(model, mean, std, pixel_range)
        self.eps = float(eps)
        self._tracked: list[nn.Module] = []
        self._parts: dict[str, list[Tensor]] = {}
        self._checked: tuple[Any, ...] | None = None
        self._user_model = model  # self.model becomes its hook-friendly copy (core.rewrite) when needed

    def params(self) -> dict[str, Any]:
        return {**super().params(), "baseline": self.baseline.describe(), "eps": self.eps,
                **self.space.describe()}

    def samples_per_image(self, n_targets: int) -> int:
        return 2  # the baseline and the image; the targets share one forward pass

    def images_per_chunk(self, n_targets: int) -> int:
        return self.batch_size  # each of the two passes holds at most batch_size samples

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._prepare_one_pass(x)

    def _prepare_one_pass(self, x: Tensor) -> None:
        if self.output != "logit":
            raise InputError("DeepLIFT explains logits (summation-to-delta holds for the model's "
                             f"output, not its softmax); use output='logit', not {self.output!r}")
        for p in self._user_model.parameters():
            p.requires_grad_(False)
        key = (tuple(x.shape[1:]), tuple(id(m) for m in self._user_model.modules()))
        if key != self._checked:  # trace + one forward pass; again only if the model or input shape changed
            self.model = check_model(self._user_model, x[:1])
            self._checked = key
        check_batchnorm(self.model)
        self._tracked = [m for m in self.model.modules() if isinstance(m, (*ELEMENTWISE, *POOLS))]
        self._parts = {}

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        return self._explain_rows(x, RowTargets.known(targets))

    def _explain_rows(self, x: Tensor, rows: RowTargets, base: Tensor | None = None) -> Tensor:
        """Maps of ``x`` against ``base`` (default: this explainer's baseline of each image)."""
        info: dict[str, Tensor] = {}
        if base is None:
            base, info = make_baselines(self.baseline, x, self.space, self, first=self.chunk_start)
        # the baselines in the images' memory format: paired activations then share it (mixed
        # channels-last / NCHW differences are several times slower)
        base = keep_format(base, x)
        for k, v in info.items():
            self._parts.setdefault(k, []).append(v.detach().cpu())
        pairing = _Pairing(self.eps)
        t = rows.shape[1]
        with HookScope() as hooks:
            for m in self._tracked:
                hooks.add(m.register_forward_pre_hook(pairing.pre))
                hooks.add(m.register_forward_hook(pairing.post))
            pairing.record()
            ref_logits = self.forward(base, grad=False)
            if pairing.stale:  # the model changed a recorded activation in place: record copies
                pairing.record(copy=True)
                ref_logits = self.forward(base, grad=False)
            pairing.replay()
            z = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.forward(z)
                # the rescaled pass keeps the image's own values: its logits are the model's
                targets = rows.images(0, logits) if rows.lazy else rows.targets
                grads = []
                for j in range(t):
                    (g,) = torch.autograd.grad(self.score(logits, targets[:, j]).sum(), z,
                                               retain_graph=j < t - 1)
                    grads.append(g)
            if pairing.cursor != len(pairing.refs):
                raise ModelError("DeepLIFT: the model made fewer activation calls for the image than "
                                 "for its baseline; the forward pass must not depend on the input")
        maps = (x - base).unsqueeze(1) * torch.stack(grads, dim=1)
        flat = targets.reshape(-1)
        fx = self.score(logits.detach().repeat_interleave(t, dim=0), flat).reshape(-1, t)
        fb = self.score(ref_logits.repeat_interleave(t, dim=0), flat).reshape(-1, t)
        delta = flat_sum(maps) - (fx - fb)
        self._parts.setdefault("delta", []).append(delta.detach().cpu())
        self._parts.setdefault("_scale", []).append((fx - fb).detach().abs().cpu())
        return maps

    def _extras(self) -> dict[str, Tensor]:
        out = {k: torch.cat(v) for k, v in self._parts.items()}
        scale = out.pop("_scale", None)
        if scale is not None:
            bad = out["delta"].abs() > 0.01 * scale + 1e-5
            if bool(bad.any()):
                warnings.warn(
                    f"DeepLIFT: summation-to-delta fails by more than 1% for {int(bad.sum())} of "
                    f"{bad.numel()} image/target pairs (extras['delta']); the model probably has a "
                    "nonlinearity that is not an activation or max-pool module (e.g. a product of "
                    "activations or a functional pooling), so these maps are not DeepLIFT's",
                    stacklevel=3,
                )
        return out


def check_model(model: nn.Module, example: Tensor) -> nn.Module:
    """The model DeepLIFT hooks: ``model``, or its hook-friendly copy where activations or max-pools
    are functions (:func:`xailab.core.rewrite.hook_friendly`); raises UnsupportedModelError when
    DeepLIFT's rules do not cover the model."""
    bad = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
           if isinstance(m, UNSUPPORTED)]
    if bad:
        raise UnsupportedModelError(
            f"deeplift has no rule for the nonlinear modules {', '.join(bad[:6])}"
            f"{' and more' if len(bad) > 6 else ''}; its maps would be wrong. Use "
            "integrated_gradients or gradient_shap, which need no per-module rule."
        )
    pools = [name for name, m in model.named_modules() if isinstance(m, POOLS) and getattr(m, "return_indices", False)]
    if pools:
        raise UnsupportedModelError(f"deeplift cannot rescale max-pools that return indices: {', '.join(pools)}")
    run = hook_ready(model, example, "deeplift", frozenset({"functional_activation"})).model
    require_supported(run, example, "deeplift", {"functional_activation"})
    products = activation_products(run, example)
    if products:
        what = "; ".join(f"{n} x {PRODUCTS[k]}" for k, n in products.items())
        raise UnsupportedModelError(
            f"deeplift has no rule for {what}: the rescale rule does not split a product's difference "
            "between its factors, so the maps would not sum to f(x) - f(b). Use integrated_gradients "
            "or gradient_shap, which need no per-operation rule."
        )
    return run


def check_batchnorm(model: nn.Module) -> None:
    """Raise when a BatchNorm is in training mode (it mixes the images of a pass)."""
    training = [name for name, m in model.named_modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training:
        raise UnsupportedModelError(
            f"deeplift needs BatchNorm in eval mode (in training mode it mixes the images of a pass): "
            f"{', '.join(training[:4])}; keep eval_mode=True"
        )
