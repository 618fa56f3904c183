"""Plain CNNs of the studies: CIFAR-10, Fashion-MNIST and binary image folders.

All three use one ``nn.ReLU`` module per activation, no in-place op and no functional
activation, so every nonlinearity is a module DeepLIFT and LRP can hook.

    model = create_model("cifar_cnn")              # [N, 3, 32, 32] -> [N, 10]
    model = create_model("small_cnn")              # [N, 1, 28, 28] -> [N, 10]
    model = create_model("binary_cnn", num_classes=2, in_channels=3)   # any H, W >= 8
"""

from __future__ import annotations

from torch import Tensor, nn

from xailab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from xailab.models.registry import register_model

CIFAR_PREP = Preprocessing(mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), input_size=(32, 32))
FASHION_PREP = Preprocessing(mean=(0.2860,), std=(0.3530,), input_size=(28, 28), channels=1)
FOLDER_PREP = Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=None)


def conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    """``3x3 conv (padding 1) -> BatchNorm -> ReLU``, a fresh ReLU each time."""
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]


class CifarCNN(nn.Module):
    """The CIFAR-10 CNN of the studies: 3 blocks of (conv-BN-ReLU) x 2, max-pool, dropout
    (0.2, 0.3, 0.4); then linear 2048 -> 256 -> 128 -> classes with dropout 0.5.

    Layers: ``features`` (``nn.Sequential``, the last conv is ``features[15]``) and
    ``classifier``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, 32), *conv_bn_relu(32, 32), nn.MaxPool2d(2), nn.Dropout(0.2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2), nn.Dropout(0.3),
            *conv_bn_relu(64, 128), *conv_bn_relu(128, 128), nn.MaxPool2d(2), nn.Dropout(0.4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallCNN(nn.Module):
    """A small CNN for 28x28 grey images (Fashion-MNIST, MNIST): conv-BN-ReLU (32) and max-pool,
    (conv-BN-ReLU) x 2 (64) and max-pool; linear 3136 -> 128, dropout 0.25, linear -> classes.

    About 11 M multiply-adds an image, so a CPU epoch of Fashion-MNIST takes minutes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), *conv_bn_relu(64, 64), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.25), nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class BinaryCNN(nn.Module):
    """Three blocks of conv-BN-ReLU-maxpool (16, 32, 64 channels), global average pooling and a
    linear layer: small, for image folders of any size (height and width at least 8)."""

    def __init__(self, num_classes: int = 2, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, 16), nn.MaxPool2d(2),
            *conv_bn_relu(16, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        from xailab.core.errors import ModelError

        raise ModelError(f"{name} has no published weights; train it (xailab train) and pass weights=")


@register_model("cifar_cnn", family="cnn", preprocessing=CIFAR_PREP, num_classes=10,
                description="CNN of the CIFAR-10 studies: 6 conv+BN+ReLU, 3 max-pools, dropout, 3 linear")
def cifar_cnn(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    _no_pretrained("cifar_cnn", pretrained)
    return CifarCNN(num_classes, in_channels)


@register_model("small_cnn", family="cnn", preprocessing=FASHION_PREP, num_classes=10,
                description="small CNN for 28x28 grey images (Fashion-MNIST, MNIST): 3 conv+BN, 2 linear",
                aliases=("fashion_cnn",))
def small_cnn(num_classes: int = 10, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    _no_pretrained("small_cnn", pretrained)
    return SmallCNN(num_classes, in_channels)


@register_model("binary_cnn", family="cnn", preprocessing=FOLDER_PREP, num_classes=2,
                description="3-block CNN with global pooling for image folders of any size")
def binary_cnn(num_classes: int = 2, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    _no_pretrained("binary_cnn", pretrained)
    return BinaryCNN(num_classes, in_channels)
