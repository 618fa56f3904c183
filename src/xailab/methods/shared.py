"""Several gradient methods from ONE forward and ONE backward pass.

Saliency, input x gradient, Grad-CAM, Grad-CAM++, XGrad-CAM and LayerCAM all need the same
thing: one forward pass and the gradient of the target score, with respect to the input
(saliency, input x gradient) or to one layer's activations (the CAMs). :func:`explain_shared`
runs that pass once, asking ``torch.autograd.grad`` for both gradients at the same time, and
builds every requested method's :class:`~xailab.core.explanation.Explanation` from it.

Each Explanation equals what the method gives on its own (``create(name, model, ...).explain``):
the same rows go through the model in the same chunks, so maps, targets, logits, params and
extras are identical. Like the methods on their own it needs no scoring pass: each chunk's
targets and logits come from the shared forward pass itself (one model evaluation per image and
target in all). Only ``seconds`` is that of the whole shared call.

    results = explain_shared(model, images, target="top1", layer="layer4", batch_size=64)
    results["gradcam"].maps.shape, results["saliency"].maps.shape  # [N,1,H,W], [N,1,C,H,W]

Methods it can share: see :data:`SHARED_METHODS` (aliases such as ``"grad_cam"`` are accepted).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from xailab.core.errors import InputError
from xailab.core.explainer import Explainer, Output, RowTargets, cat, repeat_rows
from xailab.core.explanation import Explanation
from xailab.core.hooks import model_session
from xailab.core.registry import METHODS
from xailab.core.targets import TargetPlan, TargetSpec
from xailab.methods.cam.base import CAM
from xailab.methods.cam.choose import choose_cam_layer
from xailab.methods.gradient.base import GradientExplainer

#: methods made from the input gradient (their own ``GradientExplainer.gradient_maps``)
FROM_INPUT_GRADIENT = ("saliency", "input_x_gradient")
#: the CAMs made from the layer gradient (their own ``CAM.maps_from_activations``)
FROM_LAYER_GRADIENT = ("gradcam", "gradcam_pp", "xgradcam", "layercam")
SHARED_METHODS: tuple[str, ...] = (*FROM_INPUT_GRADIENT, *FROM_LAYER_GRADIENT)


def explain_shared(
    model: nn.Module,
    images: Tensor,
    methods: Sequence[str] = SHARED_METHODS,
    *,
    target: TargetSpec = "top1",
    labels: Tensor | Sequence[int] | None = None,
    layer: str | nn.Module | None = None,
    batch_size: int = 64,
    output: Output = "logit",
    eval_mode: bool = True,
    params: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Explanation]:
    """Explain ``images`` with every method of ``methods`` from one shared gradient pass.

    Args:
        model, images, target, labels, batch_size, output, eval_mode: as for
            :meth:`xailab.core.explainer.Explainer.explain` and the explainer constructors.
        methods: names from :data:`SHARED_METHODS` (or their aliases).
        layer: the CAMs' layer (``None``: the last conv layer or block).
        params: extra constructor arguments per method, e.g. ``{"saliency": {"absolute": False}}``.

    Returns:
        ``{name: Explanation}`` in the order of ``methods``, keyed by the registered names.
    """
    pass_ = SharedGradientPass(
        model, methods, layer=layer, batch_size=batch_size, output=output, eval_mode=eval_mode,
        params=params,
    )
    return pass_.explain_all(images, target=target, labels=labels)


class SharedGradientPass(Explainer):
    """The driver of :func:`explain_shared` (not a registered method: it returns several)."""

    def __init__(
        self,
        model: nn.Module,
        methods: Sequence[str],
        *,
        layer: str | nn.Module | None = None,
        params: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        names = [METHODS.canonical(m) for m in methods]
        unknown = [m for m, n in zip(methods, names, strict=True) if n not in SHARED_METHODS]
        if unknown or not names:
            raise InputError(
                f"cannot share one gradient pass for {unknown or 'no methods'}: "
                f"choose among {', '.join(SHARED_METHODS)}"
            )
        if len(set(names)) != len(names):
            raise InputError(f"a method is named twice in {list(methods)}")
        extra = {METHODS.canonical(k): v for k, v in (params or {}).items()}
        common = {"batch_size": self.batch_size, "output": self.output, "eval_mode": self.eval_mode}
        self.explainers: dict[str, Explainer] = {}
        for name in names:
            kw = {**common, **extra.get(name, {})}
            if name in FROM_LAYER_GRADIENT:
                kw.setdefault("layer", layer)
            self.explainers[name] = METHODS.create(name, model, **kw)
        self.cams = {n: e for n, e in self.explainers.items() if isinstance(e, CAM)}
        self.input_methods = {n: e for n, e in self.explainers.items() if isinstance(e, GradientExplainer)}

    def samples_per_image(self, n_targets: int) -> int:
        return n_targets  # one (image, target) row each, as every shared method

    def images_per_chunk(self, n_targets: int) -> int:
        # the chunks (hence the rows of each forward pass) of the methods it stands for
        first = next(iter(self.explainers.values()))
        return first.images_per_chunk(n_targets)

    def explain_all(
        self,
        inputs: Tensor,
        target: TargetSpec = "top1",
        labels: Tensor | Sequence[int] | None = None,
    ) -> dict[str, Explanation]:
        start = time.perf_counter()
        x = self._check_inputs(inputs)
        self.evaluations = 0
        maps: dict[str, list[Tensor]] = {n: [] for n in self.explainers}
        targets, logits = [], []
        with model_session(self.model, eval_mode=self.eval_mode):
            plan = TargetPlan(target, len(x), labels)
            n_targets = plan.n_targets
            if n_targets is None:  # "all": the number of classes first, as each method does
                n_targets = int(self.forward(x[:1], grad=False).shape[1])
            for p in self.model.parameters():  # restored by model_session
                p.requires_grad_(False)
            driver = self._prepare_cams(x)
            per_chunk = self.images_per_chunk(n_targets)
            for lo in range(0, len(x), per_chunk):
                xc = x[lo : lo + per_chunk]
                rows = RowTargets.from_plan(plan, lo, len(xc), n_targets)
                for name, m in self._explain_chunk(driver, xc, rows).items():
                    maps[name].append(m.detach().cpu().contiguous())
                targets.append(rows.targets)
                logits.append(rows.logits)
        all_targets, all_logits = cat(targets).cpu(), cat(logits).detach().cpu()
        names = plan.names(all_logits.shape[1])
        seconds = time.perf_counter() - start
        return {
            name: e.result(cat(maps[name]), all_targets, names, all_logits, seconds=seconds,
                           evaluations=self.evaluations)
            for name, e in self.explainers.items()
        }

    def _prepare_cams(self, x: Tensor) -> CAM | None:
        """Resolve the layer once, give it to every CAM; the first CAM drives the shared pass."""
        if not self.cams:
            return None
        first = next(iter(self.cams.values()))
        chosen = None if first.layer_name is not None else choose_cam_layer(self.model, x[:1])
        module = first.layer_module if chosen is None else chosen.module
        for cam in self.cams.values():
            if cam.layer_module is not None and cam.layer_module is not module:
                raise InputError("the CAMs of one shared pass must explain the same layer")
            cam.begin_call(x, chosen)
        return first

    def _explain_chunk(self, driver: CAM | None, x: Tensor, targets: RowTargets) -> dict[str, Tensor]:
        b, t = targets.shape
        rows = repeat_rows(x, t)  # (image, target) rows, as each method makes them
        out: dict[str, Tensor] = {}
        if driver is None:
            input_grads, _ = self.target_gradients(rows, targets)
        else:
            driver.evaluations = 0
            acts, grads, maybe = driver.activations_and_gradients(
                rows, targets, input_gradient=bool(self.input_methods)
            )
            self.evaluations += driver.evaluations
            acts = acts.reshape(b, t, *acts.shape[1:])
            grads = grads.reshape(acts.shape)
            for name, cam in self.cams.items():
                out[name] = cam.maps_from_activations(x, targets.targets, acts, grads)
            input_grads = maybe if maybe is not None else rows
        for name, e in self.input_methods.items():
            out[name] = e.gradient_maps(rows, input_grads).reshape(b, t, *x.shape[1:])
        return {name: out[name] for name in self.explainers}
