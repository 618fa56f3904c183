"""A toy problem to try audits in seconds: bars and blocks, and a small CNN that learns them.

Three classes of ``size`` x ``size`` grey images (``size`` >= 12) on a noisy dark background: a
horizontal bar (``"horizontal"``), a vertical bar (``"vertical"``) and a 3 x 3 block
(``"block"``), each at one place in the top-left 8 x 8 pixels, of random length and brightness. A model learns them in a few epochs on a CPU, so a backdoor (a trigger on some
images of one class, relabelled as another) can be planted, trained and found inside a unit test.

    train, test = toy_dataset(300, seed=0), toy_dataset(150, seed=1)
    result = train_poisoned(ToyNet(), train, test, trigger="patch:3", target=1, source=0, fraction=0.3,
                            config=TrainConfig(epochs=8, batch_size=32, quiet=True), val_fraction=0)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from xailab.data.image_dataset import ImageDataset

TOY_CLASSES = ("horizontal", "vertical", "block")


def toy_images(n: int, *, size: int = 12, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``uint8 [n, 1, size, size]`` images and labels ``[n]`` (classes in turn)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.25
    y = torch.arange(n) % len(TOY_CLASSES)
    # each shape has one place (its length and brightness vary), so a class's maps have one
    # mode, and the bottom-right 4 x 4 corner stays free for a trigger
    for i in range(n):
        lo, hi = (int(v) for v in torch.randint(1, 3, (2,), generator=g))
        v = 0.6 + 0.4 * float(torch.rand(1, generator=g))
        if y[i] == 0:
            x[i, 0, 4, lo : 9 - hi] = v
        elif y[i] == 1:
            x[i, 0, lo : 9 - hi, 4] = v
        else:
            x[i, 0, 3:6, 3:6] = v
    return (x.clamp(0, 1) * 255).round().to(torch.uint8), y


def toy_dataset(n: int, *, size: int = 12, seed: int = 0) -> ImageDataset:
    """The toy images as an :class:`ImageDataset` (mean 0.2, std 0.25)."""
    x, y = toy_images(n, size=size, seed=seed)
    return ImageDataset(x, y, TOY_CLASSES, name="toy", mean=(0.2,), std=(0.25,), split=f"seed{seed}")


class ToyNet(nn.Module):
    """conv(1->8) - ReLU - max-pool - linear(->32) - ReLU - linear(->classes), for ``size`` x ``size``."""

    def __init__(self, num_classes: int = 3, size: int = 12) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * (size // 2) ** 2, 32), nn.ReLU(), nn.Linear(32, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
