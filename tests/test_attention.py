"""Attention rollout and gradient-weighted attention, against slow re-implementations that read
timm's own (non-fused) attention probabilities with hooks."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import xailab
from xailab.core.errors import UnsupportedModelError
from xailab.methods.attention.record import AttentionRecorder

from .conftest import TinyBNCNN

timm = pytest.importorskip("timm")


def tiny_vit(reg_tokens: int = 0) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, embed_dim=32,
                             num_heads=2, num_classes=6, reg_tokens=reg_tokens).eval().double()


def hooked_attentions(model: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """timm's explicit attention path (fused_attn=False): the probabilities enter attn_drop."""
    maps: list[Tensor] = []
    hooks = []
    for blk in model.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: maps.append(o)))
    try:
        logits = model(x)
    finally:
        for h in hooks:
            h.remove()
        for blk in model.blocks:
            blk.attn.fused_attn = True
    return logits, maps


def test_recorder_equals_the_fused_model_and_timms_own_probabilities() -> None:
    model = tiny_vit()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        fused = model(x)
        with AttentionRecorder() as rec:
            ours = model(x)
        _, ref = hooked_attentions(model, x)
    torch.testing.assert_close(ours, fused)
    assert len(rec.maps) == 3
    for a, b in zip(rec.maps, ref, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_rollout_follows_abnar_and_zuidema(reg_tokens: int) -> None:
    model = tiny_vit(reg_tokens)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    res = xailab.create("attention_rollout", model).explain(x, target=["top1", "least"])
    with torch.no_grad():
        _, maps = hooked_attentions(model, x)
    prefix = 1 + reg_tokens
    for i in range(2):
        r = torch.eye(maps[0].shape[-1], dtype=torch.float64)
        for a in maps:
            step = 0.5 * a[i].mean(0) + 0.5 * torch.eye(a.shape[-1], dtype=torch.float64)
            r = (step / step.sum(-1, keepdim=True)) @ r
        want = r[0, prefix:].reshape(4, 4)
        torch.testing.assert_close(res.extras["tokens"][i, 0], want)
        torch.testing.assert_close(res.extras["tokens"][i, 1], want)  # class-agnostic


def test_gradient_weighted_attention_follows_chefer_et_al() -> None:
    model = tiny_vit()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    res = xailab.create("attention_gradient", model).explain(x, target=["top1", "least"])
    for i in range(2):
        for j in range(2):
            logits, maps = hooked_attentions(model, x[i : i + 1])
            grads = torch.autograd.grad(logits[0, int(res.targets[i, j])], maps)
            r = torch.eye(maps[0].shape[-1], dtype=torch.float64)
            for a, g in zip(maps, grads, strict=True):
                r = r + (g[0] * a[0]).clamp(min=0).mean(0) @ r
            torch.testing.assert_close(res.extras["tokens"][i, j], r[0, 1:].reshape(4, 4).detach())
    assert not torch.allclose(res.extras["tokens"][:, 0], res.extras["tokens"][:, 1])  # class-specific


@pytest.mark.parametrize("name", ["attention_rollout", "attention_gradient"])
def test_cnns_are_refused(name: str) -> None:
    with pytest.raises(UnsupportedModelError, match="needs a vision transformer"):
        xailab.create(name, TinyBNCNN().eval()).explain(torch.rand(2, 3, 16, 16))


def test_cli_runs_attention_methods_on_a_timm_vit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    from xailab.cli import main
    from xailab.models import load_model, save_weights

    spec = "timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2,embed_dim=32,num_heads=2"
    w = save_weights(load_model(spec, num_classes=10), tmp_path / "vit.safetensors")
    (tmp_path / "x").mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "x" / f"{i}.png")
    assert main(["explain", "--model", spec, "--weights", str(w), "--num-classes", "10", "--images", str(tmp_path / "x"),
                 "--methods", "attention_rollout,attention_gradient,gradcam", "--no-png", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "explanations" / "attention_gradient").is_dir()


def test_recorder_reads_torchvisions_multihead_attention() -> None:
    """torchvision's ViT calls nn.MultiheadAttention (need_weights=False): the recorder recomputes
    it explicitly, same logits, and probabilities equal to what the module returns when asked."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=3).double().eval()
    nn.init.normal_(model.heads.head.weight)
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    inputs: list[Tensor] = []
    hooks = [blk.ln_1.register_forward_hook(lambda m, i, o: inputs.append(o)) for blk in model.encoder.layers]
    try:
        with torch.no_grad():
            plain = model(x)
            with AttentionRecorder() as rec:
                ours = model(x)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(ours, plain)
    assert len(rec.maps) == 2
    for blk, t, a in zip(model.encoder.layers, inputs[-2:], rec.maps, strict=True):  # the recorded pass
        with torch.no_grad():
            _, want = blk.self_attention(t, t, t, need_weights=True, average_attn_weights=False)
        torch.testing.assert_close(a, want)
    res = xailab.create("attention_rollout", model).explain(x, target="top1")
    assert res.maps.shape == (2, 1, 16, 16) and bool((res.maps > 0).all())
    masked = nn.MultiheadAttention(16, 2, batch_first=True).double()
    with AttentionRecorder(), pytest.raises(UnsupportedModelError, match="without masks"):
        masked(x[:, 0, :4], x[:, 0, :4], x[:, 0, :4], attn_mask=torch.zeros(4, 4, dtype=torch.bool))
