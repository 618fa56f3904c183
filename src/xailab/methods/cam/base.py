"""The base class of the CAM family: every CAM is ``ReLU(sum_k w_k A_k)`` upsampled.

A CAM explains class ``c`` with the activations ``A [K, h, w]`` of one conv layer (or block):

    cam_c = ReLU( sum_k  w_k^c * A_k ),   upsampled bilinearly to the input's ``H x W``.

The methods differ only in the weights ``w^c``: from the gradients ``G = dS_c / dA`` (Grad-CAM,
Grad-CAM++, XGrad-CAM, LayerCAM, whose weights vary per location) or from extra forward passes
(Ablation-CAM, Score-CAM). :class:`CAM` does everything else, once for all of them and for a
whole chunk of images at a time (no per-image loop): it finds the layer, records ``A`` (and
``G``, from one forward and one backward pass of all (image, target) rows) with hooks that live
only inside a ``with`` block, combines, rectifies, upsamples and keeps the layer-resolution maps.
A subclass implements one method, :meth:`CAM._channel_weights`.

Maps are raw: the ReLU of the definition is applied, nothing is normalised. The bilinear
upsampling uses half-pixel centres (``align_corners=False``), as ``cv2.resize`` does in
pytorch-grad-cam. ``extras["cam"]`` holds the maps at the layer's resolution ``[N, T, h, w]``
and ``extras["weights"]`` the channel weights ``[N, T, K]`` (not for LayerCAM, whose weights
are per location).

    cam = create("gradcam", model, layer="layer4")
    result = cam.explain(images, target=["top1", "true"], labels=labels)
    result.maps.shape, result.extras["cam"].shape     # [N, 2, 224, 224], [N, 2, 7, 7]
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.card import HOW, MethodCard
from xailab.core.errors import LayerError
from xailab.core.explainer import (
    Explainer,
    RowTargets,
    cat,
    chunked,
    full_pass_images,
    repeat_rows,
    row_targets,
)
from xailab.core.tokens import TokenGrid, find_token_grid
from xailab.methods.cam.choose import CamLayer, choose_cam_layer
from xailab.methods.cam.layers import LayerTap, conv_layer_hint, resolve_cam_layer


class CAM(Explainer):
    """Class activation map of one layer; subclasses say how the channel weights are computed.

    Args:
        model: the classifier.
        layer: name (``"layer4"``, ``"features.21"``) or module of the layer whose output
            ``[N, K, h, w]`` is explained; ``None`` (default) = the last conv layer or block, found
            by a dry run on the first image (:func:`~xailab.methods.cam.layers.find_cam_layer`).
        **kwargs: ``batch_size``, ``output``, ``eval_mode``, ``seed`` of
            :class:`~xailab.core.explainer.Explainer`.
    """

    family: ClassVar[str] = "cam"
    #: whether the weights need ``dS/dA`` (one forward + backward per (image, target) row)
    uses_gradients: ClassVar[bool] = True
    #: gradient CAMs take their targets from their own forward pass (no scoring pass)
    one_pass: ClassVar[bool] = True

    def __init__(self, model: nn.Module, *, layer: str | nn.Module | None = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self._layer_spec = layer
        self._user_model = model  # self.model may become its traced copy (see choose_cam_layer)
        self.layer_name: str | None = None
        self.layer_module: nn.Module | None = None
        self.layer_note = ""  # how the default layer was found
        self.grid: TokenGrid | None = None  # a transformer's patch grid (tokens read as maps)
        self._grid_key: tuple[Any, ...] | None = None
        if layer is not None:  # a wrong name fails here, with the candidates listed
            self.layer_name, self.layer_module = resolve_cam_layer(model, layer)
        self._parts: dict[str, list[Tensor]] = {}

    # -- what a subclass provides -------------------------------------------------------------
    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        """Weights ``[B, T, K]`` (or per location ``[B, T, K, h, w]``) of the maps ``acts``.

        Args:
            x: the images ``[B, C, H, W]``.
            acts: the layer's output ``[B, T, K, h, w]`` (the same for every target when the
                method uses no gradients: then an expanded view).
            grads: ``d score_t / d acts`` ``[B, T, K, h, w]``, or ``None`` without gradients.
            targets: ``[B, T]`` class indices.
        """
        raise NotImplementedError

    # -- Explainer hooks ------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        note = {"layer_note": self.layer_note} if self.layer_note else {}
        return {**super().params(), "layer": self.layer_name or "auto", **note}

    def samples_per_image(self, n_targets: int) -> int:
        return n_targets

    def images_per_chunk(self, n_targets: int) -> int:
        """Gradient CAMs: enough images that the row passes are full (a multiple of ``batch_size``
        rows, at most about 16 passes), the rule of the gradient family's engine, so that a
        shared pass (:mod:`xailab.methods.shared`) puts the same rows in the same passes.
        Ablation- and Score-CAM: ``batch_size`` images (see below)."""
        if not self.uses_gradients:
            # one pass over the chunk's images records A; their K extra samples each (masked or
            # ablated copies) are streamed in passes of batch_size: batch_size images bound both
            return self.batch_size
        return full_pass_images(self.samples_per_image(n_targets), self.batch_size)

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        self._prepare_one_pass(x)

    def _prepare_one_pass(self, x: Tensor) -> None:
        self._parts = {}
        # Only gradients with respect to the layer (or input) are needed: no parameter keeps a
        # graph for its own gradient. model_session restores requires_grad afterwards.
        for p in self.model.parameters():
            p.requires_grad_(False)
        if self._layer_spec is None:
            self.use_layer(choose_cam_layer(self._user_model, x[:1]))
        else:
            key = (id(self.model), tuple(x.shape[1:]))
            if key != self._grid_key:  # one dry run: is the model a transformer on patches?
                self.grid, self._grid_key = find_token_grid(self.model, x[:1]), key

    def use_layer(self, chosen: CamLayer) -> None:
        """Explain ``chosen`` (from :func:`~xailab.methods.cam.choose.choose_cam_layer`): its layer,
        patch grid and the model to run (the user's, or its traced copy)."""
        self.model, self.layer_name, self.layer_module = chosen.model, chosen.name, chosen.module
        self.grid, self.layer_note = chosen.grid, chosen.note
        for p in self.model.parameters():
            p.requires_grad_(False)

    def _extras(self) -> dict[str, Tensor]:
        return {k: torch.cat(v) for k, v in self._parts.items()}

    def _explain_batch(self, x: Tensor, targets: Tensor) -> Tensor:
        if self.uses_gradients:
            return self._explain_rows(x, RowTargets.known(targets))
        b, t = targets.shape
        acts = self._activations(x)
        return self.maps_from_activations(x, targets, acts[:, None].expand(b, t, *acts.shape[1:]), None)

    def _explain_rows(self, x: Tensor, rows: RowTargets) -> Tensor:
        """Gradient CAMs: one forward + backward of the (image, target) rows; with one-pass
        targets, each pass's targets come from its own logits."""
        b, t = rows.shape
        xs = repeat_rows(x, t)  # (image, target) rows, as saliency does
        acts, grads, _ = self.activations_and_gradients(xs, rows)
        acts5 = acts.reshape(b, t, *acts.shape[1:])
        return self.maps_from_activations(x, rows.targets, acts5, grads.reshape(acts5.shape))

    # -- driven from outside explain (a shared pass) ---------------------------------------------
    def begin_call(self, x: Tensor, chosen: CamLayer | None = None) -> None:
        """Start a call over images ``x`` whose chunks someone else drives (as ``explain`` does
        before its chunks: extras cleared, parameters without gradients), on the layer this
        explainer was given or on ``chosen`` (one choice shared by several CAMs), kept from now on."""
        if chosen is not None:
            self.use_layer(chosen)
        self._layer_spec = self.layer_module
        self._prepare_one_pass(x)
        self.evaluations = 0

    # -- the shared machinery -------------------------------------------------------------------
    def tap(self, replace: Tensor | None = None) -> LayerTap:
        """A :class:`LayerTap` on this explainer's layer (resolved by ``_prepare``)."""
        assert self.layer_name is not None and self.layer_module is not None, "layer not resolved"
        return LayerTap(self.layer_name, self.layer_module, replace, hint=conv_layer_hint(self.model), grid=self.grid)

    def activations_and_gradients(
        self, rows: Tensor, targets: Tensor | RowTargets, *, input_gradient: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(A, dS/dA, dS/dx or None)`` for every row of ``rows [M, C, H, W]`` and its target
        (``targets [M]``, or one-pass :class:`RowTargets` resolved from each pass's logits).

        One forward and one backward pass per ``batch_size`` rows; rows are independent (eval
        mode), so the gradient of the summed scores is every row's own gradient.
        """
        acts, grads, input_grads = [], [], []
        for sl in chunked(len(rows), self.batch_size):
            xi = rows[sl].detach().requires_grad_(input_gradient)
            with torch.enable_grad(), self.tap() as tap:
                logits = self.forward(xi)
                score = self.score(logits, row_targets(targets, sl.start, sl.stop, logits))
                a = tap.activation
                wrt = [a, xi] if input_gradient else [a]
                got = torch.autograd.grad(score.sum(), wrt, allow_unused=True)
            if got[0] is None:
                raise LayerError(
                    f"the explained score does not depend on layer '{self.layer_name}': "
                    "name a layer on the path from the input to the output"
                )
            acts.append(a.detach())
            grads.append(got[0])
            if input_gradient:
                input_grads.append(got[1])
        return cat(acts), cat(grads), cat(input_grads) if input_gradient else None

    def _activations(self, x: Tensor) -> Tensor:
        """The layer's output ``[B, K, h, w]`` for images ``x`` (no gradients)."""
        acts = []
        for sl in chunked(len(x), self.batch_size):
            with torch.no_grad(), self.tap() as tap:
                self.forward(x[sl], grad=False)
                acts.append(tap.activation)
        return torch.cat(acts)

    def maps_from_activations(self, x: Tensor, targets: Tensor, acts: Tensor, grads: Tensor | None) -> Tensor:
        """Weights -> ``ReLU(sum_k w_k A_k)`` -> upsampled maps ``[B, T, H, W]``; keeps the extras.

        ``acts``/``grads`` ``[B, T, K, h, w]`` of the images ``x [B, ...]`` and ``targets [B, T]``,
        from this explainer's passes or from a pass shared with other methods."""
        weights = self._channel_weights(x, acts, grads, targets)
        if weights.dim() == 3:
            self._parts.setdefault("weights", []).append(weights.detach().cpu())
            weights = weights[..., None, None]
        cam = torch.relu((weights * acts).sum(dim=2))
        self._parts.setdefault("cam", []).append(cam.detach().cpu())
        return upsample(cam, x.shape[-2:]).to(x.dtype)


CAM_WHAT = ("Individual computational units: the feature maps (channels) of one convolutional "
            "layer, weighted by their importance for the class.")
CAM_LIMITS = (
    "Coarse: the map has the resolution of the chosen layer (7x7 on a 224 ImageNet model, "
    "8x8 on CIFAR) and is upsampled, so it cannot point at fine detail.",
    "Depends on the layer chosen (default: the last convolution); other layers give other maps.",
    "Non-negative after the ReLU: shows evidence for the class only, never against it.",
)
#: the cost of the CAMs weighted by gradients
GRADIENT_CAM_COST = "One forward and one backward pass per image and target."


def cam_card(title: str, *, summary: str, paper: str, where: str, cost: str = GRADIENT_CAM_COST,
             limits: tuple[str, ...] = ()) -> MethodCard:
    """The card of a CAM: the family's *what*, *how* and limits, then the method's own ``limits``."""
    return MethodCard(title=title, family="cam", summary=summary, paper=paper, limits=CAM_LIMITS + limits,
                      cost=cost, what=CAM_WHAT, where=where, how=HOW + " A coarse map, upsampled to the image.")


def upsample(cam: Tensor, size: tuple[int, ...] | torch.Size) -> Tensor:
    """Bilinear resize of ``[B, T, h, w]`` maps to ``size`` (half-pixel centres, like cv2.resize)."""
    b, t, h, w = cam.shape
    if (h, w) == tuple(size):
        return cam
    out = F.interpolate(cam.reshape(b * t, 1, h, w), size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(b, t, *out.shape[-2:])


def spatial_sum(t: Tensor) -> Tensor:
    """Sum over the last two (spatial) dimensions, keeping them: ``[..., h, w] -> [..., 1, 1]``."""
    return t.sum(dim=(-2, -1), keepdim=True)
