"""Score-CAM (Wang et al., CVPR-W 2020, arXiv:1910.01279): channels weighted by masked scores.

Each channel ``A_k`` of the layer, upsampled to the input size (bilinear, corners aligned) and
min-max normalised to ``[0, 1]``, masks the image; the model scores the masked image, and the
scores of the ``K`` masks, softmaxed over the channels, are the weights:

    M_k = (up(A_k) - min up(A_k)) / (max up(A_k) - min up(A_k) + 1e-8)
    w_k = softmax_k( S_c(x * M_k) ),           cam = ReLU(sum_k w_k A_k)  (upsampled).

This is pytorch-grad-cam's definition: the score is the explained output (the logit by default;
``output="probability"`` gives the paper's softmax probability) and no baseline is subtracted,
which the softmax over channels would cancel anyway. The ``K`` masked images of all images in a
chunk go through the model in passes of at most ``batch_size``, built as they are needed, and
each masked image is scored for every target at once.

    result = create("score_cam", model, layer="layer4", batch_size=64).explain(images)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xailab.core.explainer import chunked
from xailab.core.registry import register
from xailab.methods.cam.base import CAM, cam_card
from xailab.methods.cam.screening import Channels, check_channels, screen


@register("score_cam", family="cam", aliases=("scorecam",))
class ScoreCAM(CAM):
    """Score-CAM: channels weighted by the softmaxed scores of the images they mask.

    Args:
        channels: screen channels by activation energy and run only the kept ones (``None``:
            all, the published method); see :mod:`~xailab.methods.cam.screening`.
    """

    card = cam_card(
        "Score-CAM",
        summary="Gradient-free: each channel, upsampled and normalised, masks the image; the "
                "channel's weight is the softmaxed class score of its masked image.",
        paper="Wang, Wang, Du, Yang, Zhang, Ding, Mardziel, Hu (2020), \"Score-CAM: Score-Weighted"
              " Visual Explanations for Convolutional Neural Networks\", CVPR workshops.",
        where="CVPR workshops 2020; CNNs.",
        cost="1 + K forward passes per image (K: the layer's channels), shared by every target.",
        limits=(
            "One forward pass per channel: hundreds or thousands of model evaluations per image.",
            "Masked images are off the training distribution; the scores measure that shift too.",
        ),
    )

    uses_gradients = False
    one_pass = False

    def __init__(self, model: nn.Module, *, channels: Channels = None, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.channels = check_channels(channels)
        self._channels = 1

    def params(self) -> dict[str, Any]:
        return {**super().params(), "channels": self.channels}

    def samples_per_image(self, n_targets: int) -> int:
        return self._channels + 1

    def _prepare(self, x: Tensor, logits: Tensor) -> None:
        super()._prepare(x, logits)
        before = self.evaluations  # the probe is set-up, not part of the explanation
        self._channels = int(self._activations(x[:1]).shape[1])
        self.evaluations = before

    def _channel_weights(self, x: Tensor, acts: Tensor, grads: Tensor | None, targets: Tensor) -> Tensor:
        maps = acts[:, 0]  # [B, K, h, w]: the same for every target
        b, k = maps.shape[:2]
        t = targets.shape[1]
        flat = maps.reshape(b * k, 1, *maps.shape[-2:])
        kept = screen(maps, self.channels).reshape(-1).nonzero().squeeze(1)  # rows (image, channel)
        # a screened-out channel scores -inf: no share of the softmax
        scores = torch.full((b * k, t), float("-inf"), dtype=maps.dtype, device=maps.device)
        with torch.no_grad():
            for sl in chunked(len(kept), self.batch_size):
                rows = kept[sl]
                image = rows // k
                masks = masks_from(flat.index_select(0, rows), x.shape[-2:])
                logits = self.forward(x.index_select(0, image) * masks, grad=False)
                row_targets = targets.index_select(0, image).reshape(-1)
                scores[rows] = self.score(logits.repeat_interleave(t, dim=0), row_targets).reshape(-1, t)
        return torch.softmax(scores.reshape(b, k, t).permute(0, 2, 1), dim=-1)


def masks_from(maps: Tensor, size: tuple[int, ...] | torch.Size) -> Tensor:
    """``[M, 1, h, w]`` maps -> ``[M, 1, H, W]`` masks: upsampled (corners aligned), min-max scaled."""
    up = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=True)
    lo = up.amin(dim=(-2, -1), keepdim=True)
    hi = up.amax(dim=(-2, -1), keepdim=True)
    return (up - lo) / (hi - lo + 1e-8)
