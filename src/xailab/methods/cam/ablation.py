"""Ablation-CAM (Desai & Ramaswamy, WACV 2020): channels weighted by the score lost without them.

For class ``c`` with score ``y_c`` and ``y_c^k`` the score when channel ``k`` of the layer is set
to zero:

    w_k = (y_c - y_c^k) / y_c,        cam = ReLU(sum_k w_k A_k)  (upsampled).

Fast: setting a channel to zero changes only what comes after the layer, so the model is cut
there (:class:`~xailab.methods.cam.split.SplitModel`, torch.fx): the part before the layer runs
once per image and only the part after it runs for the ``K`` ablated copies, in passes of at
most ``batch_size`` rows mixing channels and images. One ablated pass serves every target of
the image. When the model cannot be traced or the split does not reproduce the model, the
whole model is re-run with the layer's output replaced (a hook), as pytorch-grad-cam does; the
answer is the same, only slower. ``split_used`` says which path the last call took.

Differences from pytorch-grad-cam's ``AblationCAM``: the ablated channel is always set to 0,
the paper's definition (pytorch-grad-cam uses 0 only when the smallest activation of the batch
is 0, otherwise ``min - 1e7``, a value that also drifts from row to row); a score of exactly 0
is divided by 1 instead of giving inf/NaN. On layers that end in a ReLU both agree.

    cam = create("ablation_cam", model, layer="layer4", batch_size=128)
    result = cam.explain(images, target="top1")
    cam.split_used          # True: only avgpool + fc ran for the 512 ablated copies
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.explainer import chunked
from xailab.core.registry import register
from xailab.methods.cam.base import CAM, cam_card
from xailab.methods.cam.layers import check_map, conv_layer_hint
from xailab.methods.cam.screening import Channels, check_channels, screen
from xailab.methods.cam.split import SplitError, SplitModel


@register("ablation_cam", family="cam", aliases=("ablationcam",))
class AblationCAM(CAM):
    """Ablation-CAM: channels weighted by the relative drop of the score when zeroed.

    Args:
        split: run only the layers after ``layer`` for the ablated copies (torch.fx split,
            default); ``False`` re-runs the whole model for every copy (the slow definition).
        channels: screen channels by activation energy and ablate only the kept ones (a skipped
            channel weighs 0; ``None``: all); see :mod:`~xailab.methods.cam.screening`.
    """

    card = cam_card(
        "Ablation-CAM",
        summary="Gradient-free: each channel's weight is the relative drop of the class score "
                "when that channel is set to zero, (S_c − S_c^k)/S_c.",
        paper="Desai, Ramaswamy (2020), \"Ablation-CAM: Visual Explanations for Deep Convolutional"
              " Network via Gradient-free Localization\", WACV.",
        where="WACV 2020; CNNs.",
        cost="1 + K passes per image of the layers after the chosen one (K: its channels), shared"
             " by every target.",
        limits=(
            "One forward pass per channel (from the layer on): costly on wide layers.",
            "The relative drop is unstable when the class score is near zero.",
        ),
    )

    uses_gradients = False
    one_pass = False

    def __init__(self, model: nn.Module, *, split: bool = True, channels: Channels = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.split = split
        self.channels = check_channels(channels)
        self.split_used = False
        self.split_reason = ""  # why the split was not used
        self._split: SplitModel | None = None
        self._channels = 1
        self._carried: list[Any] = []

    def params(self) -> dict[str, Any]:
        return {**super().params(), "split": self.split, "channels": self.channels}

    def samples_per_image(self, n_targets: int) -> int:
        return self._channels + 1

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        assert self.layer_name is not None
        # two images (or one twice) checked against the logits explain() already computed
        index = torch.tensor([0, 1] if len(x) >= 2 else [0, 0], device=x.device)
        self._split, self.split_reason = None, "split=False"
        acts = None
        if self.split and self.grid is not None:
            self.split_reason = "a transformer's token layer: ablated through a forward hook"
        elif self.split:
            try:
                split = SplitModel.build(self.model, self.layer_name)
                acts = split.check(x.index_select(0, index), logits.index_select(0, index))
                self._split, self.split_reason = split, ""
            except SplitError as e:
                self.split_reason = str(e)
        self.split_used = self._split is not None
        if acts is None:
            before = self.evaluations  # the probe is set-up, not part of the explanation
            acts = self._activations(x[:1])
            self.evaluations = before
        check_map(self.layer_name, acts, self.layer_module, conv_layer_hint(self.model))
        self._channels = int(acts.shape[1])

    def _activations(self, x: Tensor) -> Tensor:
        if self._split is None:
            return super()._activations(x)
        with torch.no_grad():  # not counted: head + the un-ablated tail row make one evaluation
            acts, self._carried = self._split.head(x)
        check_map(str(self.layer_name), acts, self.layer_module, conv_layer_hint(self.model))
        return acts

    def _ablated_logits(self, acts: Tensor, index: Tensor, x: Tensor) -> Tensor:
        """Logits when the rows ``acts [M, K, h, w]`` (of images ``index``) replace the layer's output."""
        if self._split is not None:
            self.evaluations += len(acts)
            return self._split.tail(acts, self._carried, index)
        with self.tap(replace=acts):
            return self.forward(x.index_select(0, index), grad=False)

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        maps = acts[:, 0]  # [B, K, h, w]: the same for every target
        b, k = maps.shape[:2]
        t = targets.shape[1]
        # rows (image i, channel j) with j = k meaning "nothing ablated": the reference score
        n_rows = b * (k + 1)
        keep = torch.cat([screen(maps, self.channels), torch.ones(b, 1, dtype=torch.bool, device=maps.device)], 1)
        kept = keep.reshape(-1).nonzero().squeeze(1)
        scores = torch.empty(n_rows, t, dtype=maps.dtype, device=maps.device)
        with torch.no_grad():
            for sl in chunked(len(kept), self.batch_size):
                rows = kept[sl]
                image, channel = rows // (k + 1), rows % (k + 1)
                ablated = maps.index_select(0, image)  # a copy: zeroed in place below
                zeroed = (channel < k).nonzero().squeeze(1)
                ablated[zeroed, channel[zeroed]] = 0
                logits = self._ablated_logits(ablated, image, x)
                row_targets = targets.index_select(0, image).reshape(-1)
                scores[rows] = self.score(logits.repeat_interleave(t, dim=0), row_targets).reshape(-1, t)
        scores = scores.reshape(b, k + 1, t).permute(0, 2, 1)  # [B, T, K + 1]
        reference = scores[..., k:]
        # a screened-out channel keeps the reference score: weight 0
        ablated_scores = torch.where(keep[:, None, :k], scores[..., :k], reference)
        denominator = torch.where(reference == 0, torch.ones_like(reference), reference)
        return (reference - ablated_scores) / denominator
