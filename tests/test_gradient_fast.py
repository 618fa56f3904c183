"""The sampled gradient methods' fast passes (methods.gradient.fast): a BatchNorm-folded copy of the
model, channels-last on the CPU. Same maps as the model itself (float64: to rounding), the copy
refreshed when the weights change, never used when hooks are on the model, NCHW for a model that
cannot take channels-last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xailab
from xailab.methods.gradient.fast import FastPasses

CASES = [
    ("integrated_gradients", {"n_steps": 5}),
    ("smoothgrad", {"n_samples": 3}),
    ("smoothgrad", {"method": "integrated_gradients", "n_steps": 3, "n_samples": 2}),
    ("gradient_shap", {"n_samples": 4}),
]


class ViewNet(nn.Module):
    """A CNN with BatchNorm whose flatten is a ``view``: channels-last activations make it raise."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).view(len(x), -1))


def bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))
    for m in model.modules():  # running statistics away from 0 / 1, so the fold changes the weights
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _pair(name: str, kw: dict, model: nn.Module, x: torch.Tensor, **more: object) -> tuple:
    kw = {**kw, **more, "batch_size": 7}
    if name == "gradient_shap":
        kw["background"] = torch.randn(3, *x.shape[1:], generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    fast = xailab.create(name, model, **kw)
    slow = xailab.create(name, model, fast_passes=False, **kw)
    return fast, slow


@pytest.mark.parametrize(("name", "kw"), CASES)
def test_fast_passes_give_the_models_maps(name: str, kw: dict) -> None:
    model = bn_cnn().double()
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast, slow = _pair(name, kw, model, x)
    a, b = fast.explain(x, target=[0, 3]), slow.explain(x, target=[0, 3])
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)  # the scoring pass: the model itself
    assert a.evaluations == b.evaluations
    assert a.params["fast_passes"] and not b.params["fast_passes"]
    assert "fast_passes" not in a.params.get("method_params", {})
    assert fast._passes._copy is not None  # the folded copy was used


def test_the_copy_follows_the_weights() -> None:
    model = bn_cnn().double()
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fast, slow = _pair("integrated_gradients", {"n_steps": 4}, model, x)
    fast.explain(x)
    copy = fast._passes._copy
    fast.explain(x)
    assert fast._passes._copy is copy  # unchanged model: the copy is kept
    with torch.no_grad():
        model[0].weight.mul_(-2)  # in place, as an optimizer step
        model[1].running_mean.add_(1)
    a, b = fast.explain(x), slow.explain(x)
    assert fast._passes._copy is not copy
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-9, atol=1e-12)


def test_hooks_keep_the_model_itself() -> None:
    model = bn_cnn().double()
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    handle = model[1].register_forward_hook(lambda m, i, o: o * 0.5)  # the user's ablation hook
    try:
        fast, slow = _pair("integrated_gradients", {"n_steps": 4}, model, x)
        a, b = fast.explain(x, target=1), slow.explain(x, target=1)
    finally:
        handle.remove()
    torch.testing.assert_close(a.maps, b.maps, rtol=0, atol=0)  # the model as it is, NCHW
    assert fast._passes._copy is None


def test_a_view_model_falls_back_to_nchw() -> None:
    torch.manual_seed(0)
    model = ViewNet().eval()
    with pytest.raises(RuntimeError):  # what the fallback is for
        model(torch.randn(2, 3, 6, 6).contiguous(memory_format=torch.channels_last))
    x = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    fast, slow = _pair("smoothgrad", {"n_samples": 2}, model, x)
    a, b = fast.explain(x, target=2), slow.explain(x, target=2)
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-5, atol=1e-6)
    assert not fast._passes.channels_last


def test_fast_passes_leave_no_trace_on_the_model() -> None:
    model = bn_cnn()
    flags = [p.requires_grad for p in model.parameters()]
    passes = FastPasses()
    copy = passes.model(model)
    called = [copy.get_submodule(str(n.target)) for n in copy.graph.nodes if n.op == "call_module"]
    assert copy is not model and not any(isinstance(m, nn.BatchNorm2d) for m in called)
    assert [p.requires_grad for p in model.parameters()] == flags and all(not p.requires_grad for p in copy.parameters())
    x = torch.randn(2, 3, 6, 6)
    leaf, logits = passes.leaf_logits(copy, x)
    assert leaf.requires_grad and leaf.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(logits, model(x), rtol=1e-5, atol=1e-6)
