"""Small students for distillation (``xailab distill --student``): a few conv layers and global pooling.

Four conv-BN-ReLU blocks (32, 64, 128, 128 channels; max-pool after the first three), global
average pooling and one linear layer: about 0.3 M parameters and 12 M multiply-adds for a
32x32 image, so it trains on a CPU in minutes. Any input size of at least 8x8.

    model = create_model("student_cnn")                    # [N, 3, H, W] -> [N, 10]
    model = create_model("student_cnn_grey")               # [N, 1, H, W] -> [N, 10]
"""

from __future__ import annotations

from torch import Tensor, nn

from xailab.models.cnn import CIFAR_PREP, FASHION_PREP, conv_bn_relu
from xailab.models.registry import register_model


class StudentCNN(nn.Module):
    """conv-BN-ReLU blocks of 32, 64, 128 (each then max-pooled) and 128 channels, global
    average pooling, linear. Layers: ``features`` (the last conv is ``features[9]``), ``classifier``."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_relu(in_channels, 32), nn.MaxPool2d(2),
            *conv_bn_relu(32, 64), nn.MaxPool2d(2),
            *conv_bn_relu(64, 128), nn.MaxPool2d(2),
            *conv_bn_relu(128, 128),
        )
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def _build(name: str, num_classes: int, in_channels: int, pretrained: bool) -> nn.Module:
    if pretrained:
        from xailab.core.errors import ModelError

        raise ModelError(f"{name} has no published weights: distil one (xailab distill --student) and pass weights=")
    return StudentCNN(num_classes, in_channels)


@register_model("student_cnn", family="cnn", preprocessing=CIFAR_PREP, num_classes=10,
                description="small distillation student: 4 conv+BN+ReLU, global pooling, linear (RGB)")
def student_cnn(num_classes: int = 10, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    return _build("student_cnn", num_classes, in_channels, pretrained)


@register_model("student_cnn_grey", family="cnn", preprocessing=FASHION_PREP, num_classes=10,
                description="small distillation student for grey images (Fashion-MNIST, MNIST)")
def student_cnn_grey(num_classes: int = 10, in_channels: int = 1, pretrained: bool = False) -> nn.Module:
    return _build("student_cnn_grey", num_classes, in_channels, pretrained)
