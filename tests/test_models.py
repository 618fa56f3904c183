"""The model zoo: every registered model builds and is hook-friendly when it says so; safe
checkpoints (malicious pickles refused, corrupt and mismatched files named); user models from
TorchScript and ``package.module:factory``; published weights and their accuracy."""

from __future__ import annotations

import json
import pickle
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.conftest import shared_path
from xailab.core.errors import CheckpointError, ModelError
from xailab.data import Preprocessing
from xailab.models import (
    MODELS,
    Add,
    PadShortcut,
    check_num_classes,
    create_model,
    get_preprocessing,
    load_model,
    load_weights,
    model_info,
    read_metadata,
    save_weights,
)

# slow to build or run on a shared CPU; the fast ones cover each family
BIG = {"vgg11", "vgg16", "vgg16_bn", "alexnet"}




def _input(name: str, n: int = 2) -> torch.Tensor:
    info = model_info(name)
    size = info["input_size"] or (24, 20)
    if size[0] > 64:  # ImageNet models also run on small inputs; keep the test fast
        size = (64, 64)
    return torch.randn(n, info["in_channels"], *size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in MODELS.available()]
)
def test_every_model_builds_runs_and_is_hook_friendly_when_it_says_so(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    assert not model.training  # created in eval mode
    prep = get_preprocessing(model)
    assert prep is not None and prep == model_info(name)["preprocessing"]
    calls: dict[str, int] = {}
    acts = (nn.ReLU, nn.ReLU6, Add)
    hooks = [m.register_forward_hook(lambda mod, i, o, key=k: calls.__setitem__(key, calls.get(key, 0) + 1))
             for k, m in model.named_modules() if isinstance(m, acts)]
    try:
        with torch.no_grad():
            out = model(_input(name))
    finally:
        for h in hooks:
            h.remove()
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    if model_info(name)["hook_friendly"]:
        assert all(v == 1 for v in calls.values()), f"reused activation modules: {calls}"
        assert not [k for k, m in model.named_modules() if getattr(m, "inplace", False)]


def test_registry_lookup_errors() -> None:
    with pytest.raises(ModelError, match=r"Did you mean .*resnet20"):
        create_model("resnet21")
    with pytest.raises(ModelError, match="no published weights"):
        create_model("cifar_cnn", pretrained=True)
    assert {"cifar_cnn", "small_cnn", "binary_cnn", "resnet20", "resnet56", "resnet18",
            "efficientnet_lite0", "vgg16", "mobilenet_v3_small"} <= set(MODELS.available())


def test_models_carry_preprocessing() -> None:
    assert model_info("cifar_cnn")["input_size"] == (32, 32)
    assert model_info("small_cnn")["in_channels"] == 1
    lite = model_info("efficientnet_lite0")["preprocessing"]
    x = torch.rand(3, 4, 4)
    torch.testing.assert_close(lite.normalize(x), (x * 255 - 127) / 128)  # (255x - 127) / 128
    assert (lite.resize, lite.input_size) == (256, (224, 224))
    grey = get_preprocessing(create_model("cifar_cnn", in_channels=1))
    assert grey is not None and grey.channels == 1 and len(grey.mean) == 1


def test_option_a_shortcut_and_add() -> None:
    x = torch.randn(2, 4, 6, 6)
    out = PadShortcut(2)(x)
    assert out.shape == (2, 8, 3, 3)
    torch.testing.assert_close(out[:, 2:6], x[:, :, ::2, ::2])
    assert out[:, :2].abs().sum() == 0 and out[:, 6:].abs().sum() == 0
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(Add()(torch.stack([a, b])), a + b)  # bitwise: one elementwise add


def test_hook_friendly_torchvision_resnet_keeps_outputs_and_keys() -> None:
    import torchvision

    from xailab.models.torchvision_zoo import hook_friendly

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    keys = list(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = ref(x)
        mine = hook_friendly(ref)
        assert list(mine.state_dict()) == keys
        torch.testing.assert_close(mine(x), expected)


# -- checkpoints ----------------------------------------------------------------------------------
def test_save_and_load_safetensors_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("small_cnn")
    path = save_weights(model, tmp_path / "w" / "best.safetensors", metadata={"epoch": 3, "note": "hi"})
    assert path.is_file() and not list(path.parent.glob(".*tmp"))  # written atomically
    meta = read_metadata(path)
    assert meta["epoch"] == "3" and meta["note"] == "hi"
    assert Preprocessing.from_dict(json.loads(meta["xailab.preprocessing"])) == get_preprocessing(model)
    other = create_model("small_cnn", weights=path)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))


def test_state_dict_wrappers_and_dataparallel_prefix(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("binary_cnn")
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 2, "state_dict": sd}, tmp_path / "ckpt.pth")
    other = load_weights(create_model("binary_cnn"), tmp_path / "ckpt.pth")
    for (k, v), w in zip(model.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


class _Touch:
    """Unpickling this creates a file: a stand-in for a checkpoint that runs a command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv.weight": torch.zeros(1), "x": _Touch(target)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    for load in (lambda: load_weights(create_model("binary_cnn"), path),
                 lambda: load_model("binary_cnn", weights=path)):
        with pytest.raises(CheckpointError, match="refused"):
            load()
    assert not target.exists()


def test_whole_model_pickle_refused_as_model(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="not a TorchScript"):
        load_model(tmp_path / "whole.pt")
    with pytest.raises(CheckpointError, match="refused"):
        load_weights(nn.Linear(2, 2), tmp_path / "whole.pt")


@pytest.mark.parametrize("kind", ["garbage", "truncated_safetensors", "truncated_zip", "missing"])
def test_corrupt_checkpoints(tmp_path: Path, kind: str) -> None:
    model = create_model("binary_cnn")
    path = tmp_path / ("w.safetensors" if "safetensors" in kind else "w.pth")
    if kind == "garbage":
        path.write_bytes(b"\x00\x01 not a checkpoint at all" * 10)
    elif kind == "truncated_safetensors":
        save_weights(model, path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "truncated_zip":
        torch.save(model.state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="not found" if kind == "missing" else "corrupt|refused|unreadable"):
        load_weights(model, path)


def test_mismatched_state_dict_names_the_keys(tmp_path: Path) -> None:
    save_weights(create_model("cifar_cnn", num_classes=10), tmp_path / "ten.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatch: classifier\.6\.weight.*num_classes"):
        create_model("cifar_cnn", num_classes=5, weights=tmp_path / "ten.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys: .*unexpected keys: "):
        create_model("resnet20", weights=tmp_path / "ten.safetensors")


def test_resnet_files_without_batchnorm_counters_load(tmp_path: Path) -> None:
    model = create_model("resnet20")
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(sd, tmp_path / "r20.pt")
    load_weights(create_model("resnet20"), tmp_path / "r20.pt")


# -- user models ----------------------------------------------------------------------------------
def test_torchscript_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("binary_cnn", num_classes=3)
    torch.jit.save(torch.jit.script(model), tmp_path / "net.pt")
    loaded = load_model(tmp_path / "net.pt", num_classes=3)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ModelError, match="outputs 3 scores but the data has 10"):
        load_model(tmp_path / "net.pt", num_classes=10)
    with pytest.raises(CheckpointError, match="TorchScript model, not a weights file"):
        load_weights(model, tmp_path / "net.pt")


def test_factory_spec_with_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "userpkg_xl"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(
        "from torch import nn\n"
        "def build(num_classes=4):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))\n"
        "def not_a_model():\n"
        "    return 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    net = load_model("userpkg_xl.nets:build", num_classes=2)
    assert net[1].out_features == 2 and not net.training
    save_weights(net, tmp_path / "net.safetensors")
    again = load_model("userpkg_xl.nets:build", tmp_path / "net.safetensors", num_classes=2)
    assert torch.equal(again[1].weight, net[1].weight)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model("userpkg_xl.nets:build", tmp_path / "net.safetensors")  # 4 classes by default
    with pytest.raises(ModelError, match=r"not a torch\.nn\.Module"):
        load_model("userpkg_xl.nets:not_a_model")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("userpkg_xl.nowhere:build")
    with pytest.raises(ModelError, match="unknown model"):
        load_model("definitely not a model")
    sys.modules.pop("userpkg_xl.nets", None)
    sys.modules.pop("userpkg_xl", None)


def test_check_num_classes_by_running_the_model() -> None:
    model = create_model("binary_cnn", num_classes=2)
    check_num_classes(model, 2, torch.randn(1, 3, 16, 16))
    with pytest.raises(ModelError, match="outputs 2 scores but the data has 5 classes"):
        check_num_classes(model, 5, torch.randn(1, 3, 16, 16))


# -- published weights ----------------------------------------------------------------------------
def test_torchvision_pretrained_offline_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(CheckpointError, match=r"hub/checkpoints/resnet18-.*\.pth.*download\.pytorch\.org"):
        create_model("resnet18", pretrained=True)


def test_torchvision_pretrained_from_hub_cache_with_new_head(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    w = torchvision.models.get_model_weights("resnet18").DEFAULT
    file = tmp_path / "hub" / "checkpoints" / Path(w.url).name
    file.parent.mkdir(parents=True)
    torch.manual_seed(1)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), file)
    model = create_model("resnet18", pretrained=True, num_classes=2)
    assert model.fc.out_features == 2
    assert torch.equal(model.conv1.weight, ref.conv1.weight)


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("depth,floor", [(20, 0.78), (56, 0.80)])
def test_cifar_resnet_shared_weights_accuracy(depth: int, floor: float) -> None:
    """Full 10,000-image test set, measured once: ResNet-20 81.0 %, ResNet-56 83.2 %."""
    from xailab.data import load_dataset, load_images

    weights = shared_path("cifar10-resnet", f"resnet{depth}.safetensors")
    tar = shared_path("cifar10-jpg.tar.gz")
    model = create_model(f"resnet{depth}", weights=weights)
    prep = get_preprocessing(model)
    x, y, _, _ = load_images("cifar10:test:2000", prep, root=tar)
    assert y is not None and len(y) == 2000
    with torch.inference_mode():
        pred = torch.cat([model(x[s : s + 500]).argmax(1) for s in range(0, 2000, 500)])
    acc = float((pred == y).float().mean())
    assert acc >= floor, f"resnet{depth}: {acc:.3f}"
    assert load_dataset("cifar10", "test", root=tar).classes[int(y[0])] == "airplane"


@pytest.mark.slow
@pytest.mark.shared_data
def test_efficientnet_lite0_on_imagenet_photos() -> None:
    """100 of the 1,000 sample photos (all 1,000 measured once: top-1 86.9 %, top-5 97.1 %)."""
    from xailab.data import load_images

    tar = shared_path("imagenet", "imagenet-samples-256.tar.gz")
    index = json.loads(shared_path("imagenet", "imagenet_class_index.json").read_text())
    wnid = {v[0]: int(k) for k, v in index.items()}
    model = create_model("efficientnet_lite0", pretrained=True)
    x, _, names, _ = load_images(str(tar), get_preprocessing(model), max_images=100)
    y = torch.tensor([wnid[n.rsplit("/", 1)[-1].split("_", 1)[0]] for n in names])
    with torch.inference_mode():
        pred = torch.cat([model(x[s : s + 50]).argmax(1) for s in range(0, len(x), 50)])
    assert float((pred == y).float().mean()) >= 0.75


@pytest.mark.reference
def test_efficientnet_lite0_equals_the_package_model() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    from efficientnet_lite_pytorch import EfficientNet

    from xailab.models.efficientnet import lite0_weights_file

    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(torch.load(lite0_weights_file(), map_location="cpu", weights_only=True))
    mine = create_model("efficientnet_lite0", pretrained=True)
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(mine(x), ref.eval()(x), rtol=1e-4, atol=1e-4)


def test_models_command(capsys: pytest.CaptureFixture[str]) -> None:
    from xailab.cli import main

    assert main(["models", "resnet*", "--details"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "3x32x32" in out and "resnet18" in out and "preprocessing" in out
    assert "cifar_cnn" not in out
    assert main(["models", "nothing*"]) == 2  # a pattern matching nothing: one line, exit 2


def test_torchvision_preprocessing_table_equals_the_weights_transforms() -> None:
    from xailab.models.torchvision_zoo import (
        TORCHVISION_MODELS,
        table_preprocessing,
        weights_preprocessing,
    )

    for name in TORCHVISION_MODELS:
        assert table_preprocessing(name) == weights_preprocessing(name), name
