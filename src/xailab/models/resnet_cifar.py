"""The CIFAR-10 ResNets of He et al. 2016 (arXiv:1512.03385, sec. 4.2): ResNet-20/32/44/56/110.

``6n + 2`` layers: a 3x3 conv (16 channels), three stages of ``n`` basic blocks (16, 32, 64
channels; the first block of stages 2 and 3 has stride 2 and the parameter-free "option A"
shortcut), global average pooling and ``linear``. Parameter names follow Yerlan Idelbayev's
``pytorch_resnet_cifar10`` (``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}``,
``linear``), so its published weights load as they are. Every block has two ReLU modules of its
own and an :class:`~xailab.models.layers.Add`, nothing in place.

    model = create_model("resnet20", weights="cifar10-resnet/resnet20.safetensors")
    # inputs: RGB in [0, 1] normalised with ImageNet's mean/std (as those weights were trained)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from xailab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from xailab.models.layers import Add, PadShortcut
from xailab.models.registry import register_model

RESNET_CIFAR_PREP = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(32, 32))


class BasicBlock(nn.Module):
    """``relu2(bn2(conv2(relu1(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut((planes - in_planes) // 2, stride)
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(torch.stack([out, self.shortcut(x)])))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images; see the module docstring."""

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.in_planes = 16
        self.layer1 = self._stage(16, n, 1)
        self.layer2 = self._stage(32, n, 2)
        self.layer3 = self._stage(64, n, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(self.flatten(self.pool(x)))


def _factory(depth: int) -> Callable[..., nn.Module]:
    def make(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        model = CifarResNet((depth - 2) // 6, num_classes, in_channels)
        if pretrained:
            from xailab.models.checkpoint import find_pretrained, load_weights

            load_weights(model, find_pretrained(f"cifar10-resnet/resnet{depth}.safetensors"))
        return model

    make.__name__ = f"resnet{depth}"
    make.__doc__ = f"ResNet-{depth} for CIFAR-10 ({(depth - 2) // 6} blocks a stage)."
    return make


_WEIGHTS = ("cifar10-resnet/resnet{d}.safetensors (Idelbayev's pytorch_resnet_cifar10, BSD-2): "
            "pass weights= or put it under $XAILAB_DATA")
for _depth in (20, 32, 44, 56, 110):
    register_model(
        f"resnet{_depth}", family="resnet_cifar", preprocessing=RESNET_CIFAR_PREP, num_classes=10,
        description=f"CIFAR ResNet-{_depth} (He et al. 2016, option-A shortcuts)",
        weights=_WEIGHTS.format(d=_depth) if _depth in (20, 56) else "",
    )(_factory(_depth))
