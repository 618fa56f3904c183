"""The models and inputs every method benchmark uses, so figures compare across files.

* ``cifar_cnn()``: a CIFAR-sized CNN (6 conv + BN + ReLU, max-pooling, dropout, 3 linear layers),
  the architecture of the CIFAR-10 study, randomly initialised (timing does not need training).
* ``resnet18()``: torchvision ResNet-18, 1,000 classes, random weights, eval mode.
* ``cifar_batch(n)`` / ``imagenet_batch(n)``: real images from ../shared/data when present
  (normalised), otherwise seeded noise of the same shape. Contiguous NCHW, the layout users get
  from a DataLoader and from our CLI; ``BENCH_LAYOUT=channels_last`` in the environment gives every
  benchmark channels-last inputs instead (the second column of the ratio tables). Every
  implementation in a benchmark gets this same tensor.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LAYOUT = os.environ.get("BENCH_LAYOUT", "nchw")
if LAYOUT not in ("nchw", "channels_last"):
    raise SystemExit(f"BENCH_LAYOUT must be nchw or channels_last, not {LAYOUT!r}")
torch.set_num_threads(max(1, torch.get_num_threads()))


class CifarCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, 32), *block(32, 32), nn.MaxPool2d(2), nn.Dropout(0.2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2), nn.Dropout(0.3),
            *block(64, 128), *block(128, 128), nn.MaxPool2d(2), nn.Dropout(0.4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def cifar_cnn() -> nn.Module:
    torch.manual_seed(0)
    return CifarCNN().eval()


def resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def _from_tar(path: Path, n: int, size: int, wanted: Callable[[str], bool]) -> list[np.ndarray]:
    """The first ``n`` members of a tarball whose name passes ``wanted``, centre-cropped to
    ``size`` x ``size``, as float arrays in [0, 1]."""
    out: list[np.ndarray] = []
    with tarfile.open(path) as tar:
        for m in tar:
            if not (m.isfile() and wanted(m.name)):
                continue
            f = tar.extractfile(m)
            assert f is not None
            img = Image.open(io.BytesIO(f.read())).convert("RGB")
            if img.size != (size, size):
                w, h = img.size
                s = min(w, h)
                img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            out.append(np.asarray(img, dtype=np.float32) / 255.0)
            if len(out) == n:
                break
    return out


def in_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the benchmarks' layout (:data:`LAYOUT`): contiguous NCHW or channels-last."""
    if LAYOUT == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.contiguous()


def _batch(arrs: list[np.ndarray], mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2)  # HWC pixels: a channels-last view
    return in_layout((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None])


def cifar_batch(n: int = 32) -> torch.Tensor:
    tar = SHARED / "cifar10-jpg.tar.gz"
    if tar.exists():
        return _batch(_from_tar(tar, n, 32, lambda name: "/test/" in f"/{name}" and name.endswith(".jpg")), (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261))
    return in_layout(torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def imagenet_batch(n: int = 4) -> torch.Tensor:
    tar = SHARED / "imagenet" / "imagenet-samples-256.tar.gz"
    if tar.exists():
        return _batch(_from_tar(tar, n, 224, lambda name: name.lower().endswith(".jpeg")), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return in_layout(torch.randn(n, 3, 224, 224, generator=torch.Generator().manual_seed(0)))
