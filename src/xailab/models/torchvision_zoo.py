"""torchvision's ImageNet classifiers (He et al. 2016; Simonyan & Zisserman 2015; Howard et al.
2019; ...), with their published weights when ``pretrained=True``.

Weights are torchvision's ``DEFAULT`` for each architecture, fetched by ``torch.hub`` into
``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch``) and read with ``weights_only=True``.
Offline, the file must already be there: the error names it and its URL.

To keep them explainable by module hooks, the models are made hook-friendly where this keeps
their weights and outputs unchanged: every ``inplace`` flag is cleared, and the ResNets' blocks
are rebuilt with one ReLU module per use and an :class:`~xailab.models.layers.Add` for the
residual sum (same parameter names). DenseNet applies ``F.relu`` in its forward and MobileNet-V3
and EfficientNet-B0 use functional squeeze-and-excitation, so they are listed as unsuitable
for DeepLIFT / LRP.

    model = create_model("resnet18", pretrained=True)                 # 1,000 classes
    model = create_model("resnet18", pretrained=True, num_classes=2)  # new head for fine-tuning
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import CheckpointError, ModelError
from xailab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from xailab.models.layers import Add
from xailab.models.registry import register_model

# name -> (family, description, resize); NOT_HOOK_FRIENDLY: functional activations or sums in forward.
# ``resize`` is what the transforms of torchvision's DEFAULT weights resize to before the 224 crop
# (ImageNet mean and std for all): a table, so that listing or building a model does not import
# torchvision (tests/test_models.py checks it against :func:`weights_preprocessing`).
NOT_HOOK_FRIENDLY = frozenset({"mobilenet_v2", "mobilenet_v3_small", "densenet121", "efficientnet_b0"})
TORCHVISION_MODELS = {
    "alexnet": ("alexnet", "AlexNet (Krizhevsky et al. 2012)", 256),
    "vgg11": ("vgg", "VGG-11 (Simonyan & Zisserman 2015)", 256),
    "vgg16": ("vgg", "VGG-16 (Simonyan & Zisserman 2015)", 256),
    "vgg16_bn": ("vgg", "VGG-16 with BatchNorm", 256),
    "resnet18": ("resnet", "ResNet-18 (He et al. 2016), hook-friendly blocks", 256),
    "resnet34": ("resnet", "ResNet-34 (He et al. 2016), hook-friendly blocks", 256),
    "resnet50": ("resnet", "ResNet-50 (He et al. 2016), hook-friendly blocks", 232),
    "mobilenet_v2": ("mobilenet", "MobileNet-V2 (Sandler et al. 2018); functional residual sums", 232),
    "mobilenet_v3_small": ("mobilenet", "MobileNet-V3 small (Howard et al. 2019); functional SE, not for DeepLIFT/LRP", 256),
    "densenet121": ("densenet", "DenseNet-121 (Huang et al. 2017); functional ReLU, not for DeepLIFT/LRP", 256),
    "efficientnet_b0": ("efficientnet", "EfficientNet-B0 (Tan & Le 2019); SiLU and SE, not for DeepLIFT/LRP", 256),
}


def _weights_enum(name: str) -> Any:
    import torchvision

    return torchvision.models.get_model_weights(name).DEFAULT


def table_preprocessing(name: str) -> Preprocessing:
    """The preprocessing of ``name``'s DEFAULT weights, from :data:`TORCHVISION_MODELS`."""
    return Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=(224, 224),
                         resize=TORCHVISION_MODELS[name][2])


def weights_preprocessing(name: str) -> Preprocessing:
    """The preprocessing of ``name``'s DEFAULT weights, read from torchvision (imports it)."""
    t = _weights_enum(name).transforms()
    return Preprocessing(mean=tuple(t.mean), std=tuple(t.std), input_size=(t.crop_size[0],) * 2,
                         resize=int(t.resize_size[0]))


def torchvision_state_dict(name: str) -> dict[str, Tensor]:
    """The ``DEFAULT`` ImageNet weights of ``name``: from the torch hub cache, else downloaded."""
    from xailab.models.checkpoint import read_state_dict

    w = _weights_enum(name)
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    if file.is_file():
        return read_state_dict(file)
    try:
        sd = torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # URLError, HTTPError, OSError, hash RuntimeError
        raise CheckpointError(
            f"pretrained {name} needs {file} ({type(e).__name__}: {e}). Download {w.url} on a machine "
            f"with network and copy it to that path, or pass weights=<file>"
        ) from e
    return dict(sd)


# -- making torchvision models hook-friendly --------------------------------------------------
class _BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock with separate ReLUs and an Add module (same parameters)."""

    def __init__(self, b: Any) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = b.conv1, b.bn1, b.conv2, b.bn2
        self.downsample = b.downsample
        self.relu1, self.relu2, self.add = nn.ReLU(), nn.ReLU(), Add()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu2(self.add(torch.stack([out, identity])))


class _Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck with separate ReLUs and an Add module (same parameters)."""

    def __init__(self, b: Any) -> None:
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3 = (
            b.conv1, b.bn1, b.conv2, b.bn2, b.conv3, b.bn3)
        self.downsample = b.downsample
        self.relu1, self.relu2, self.relu3, self.add = nn.ReLU(), nn.ReLU(), nn.ReLU(), Add()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(out)))))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu3(self.add(torch.stack([out, identity])))


def hook_friendly(model: nn.Module) -> nn.Module:
    """Clear ``inplace`` flags and rebuild torchvision ResNet blocks (see the module docstring)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for m in model.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
        for child_name, child in list(m.named_children()):
            if isinstance(child, BasicBlock):
                setattr(m, child_name, _BasicBlock(child))
            elif isinstance(child, Bottleneck):
                setattr(m, child_name, _Bottleneck(child))
    return model


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, new)


def adapt(model: nn.Module, num_classes: int, in_channels: int) -> nn.Module:
    """Give a pretrained model a new head (last ``nn.Linear``) for ``num_classes`` and a first
    convolution for ``in_channels`` (grey: the RGB filters summed, so a grey image repeated over
    three channels gives the same features)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1][1].out_features != num_classes:
        name, old = linears[-1]
        _set_module(model, name, nn.Linear(old.in_features, num_classes))
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if convs and convs[0][1].in_channels != in_channels:
        name, c = convs[0]
        if c.groups != 1:
            raise ModelError(f"cannot change the input channels of {type(model).__name__}")
        new = nn.Conv2d(in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,  # type: ignore[arg-type]
                        bias=c.bias is not None, padding_mode=c.padding_mode)
        with torch.no_grad():
            w = c.weight.sum(1, keepdim=True) if in_channels == 1 else c.weight.mean(1, keepdim=True)
            new.weight.copy_(w.expand(-1, in_channels, -1, -1) if in_channels != 1 else w)
            if c.bias is not None:
                new.bias.copy_(c.bias)  # type: ignore[union-attr]
        _set_module(model, name, new)
    return model


def _factory(name: str) -> Callable[..., nn.Module]:
    def make(num_classes: int = 1000, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
        import torchvision

        if pretrained:
            model = torchvision.models.get_model(name, weights=None)
            sd = torchvision_state_dict(name)
            try:
                model.load_state_dict(sd)
            except RuntimeError as e:
                raise CheckpointError(f"torchvision weights for {name} do not fit: {e}") from e
            adapt(model, num_classes, in_channels)
        else:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
            adapt(model, num_classes, in_channels)
        return hook_friendly(model)

    make.__name__ = name
    return make


for _name, (_family, _desc, _) in TORCHVISION_MODELS.items():
    register_model(
        _name, family=_family, preprocessing=table_preprocessing(_name), num_classes=1000,
        description=f"{_desc}; torchvision, ImageNet",
        weights=f"torchvision {_name} DEFAULT weights via torch.hub",
        hook_friendly=_name not in NOT_HOOK_FRIENDLY,
    )(_factory(_name))
