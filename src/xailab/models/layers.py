"""Small modules that keep the zoo explainable by module hooks (DeepLIFT, LRP).

A residual addition written ``out + shortcut`` in ``forward`` cannot be hooked; a shared ReLU
module or ``F.relu`` hides where a nonlinearity is applied. The zoo therefore uses a separate
``nn.ReLU`` per use, no in-place op, and these modules:

* :class:`Add` (defined in :mod:`xailab.core.modules`, which LRP's composites share): the sum
  of a residual block, ``Add()(torch.stack([a, b])) == a + b``; a plain module, so building or
  loading a zoo model imports neither zennit nor torchvision.
* :class:`PadShortcut`: He et al.'s parameter-free "option A" shortcut: subsample by 2 and pad
  the new channels with zeros.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xailab.core.modules import Add

__all__ = ["Add", "PadShortcut"]


class PadShortcut(nn.Module):
    """Option-A shortcut (He et al. 2016, arXiv:1512.03385, sec. 4.2): ``x[:, :, ::2, ::2]``
    with ``pad`` zero channels on each side."""

    def __init__(self, pad: int, stride: int = 2) -> None:
        super().__init__()
        self.pad = pad
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return torch.nn.functional.pad(x, (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}, stride={self.stride}"
