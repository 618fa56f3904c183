"""AttnLRP (methods/propagation/attnlrp.py): the paper's rules line by line on a one-head block,
conservation (exact where the rules are conservative, with the softmax's absorbed share otherwise),
timm / torchvision / Hugging Face paths, batching, determinism and refusals."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import xailab
from xailab.core.errors import UnsupportedModelError
from xailab.core.hooks import count_hooks
from xailab.methods.propagation.transformer_rules import AttnLRPRules

timm = pytest.importorskip("timm")


def timm_vit(**kw: Any) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=16, num_heads=2,
                             num_classes=5, **kw).eval().double()


def tv_vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
                              num_classes=5)
    nn.init.normal_(model.heads.head.weight)
    return model.eval().double()


def hf_vit() -> nn.Module:
    transformers = pytest.importorskip("transformers")
    from xailab.models.external import HFLogits

    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                 num_attention_heads=2, intermediate_size=32, num_labels=5)
    return HFLogits(transformers.ViTForImageClassification(cfg)).eval().double()


BUILD = {"timm": timm_vit, "torchvision": tv_vit, "hf": hf_vit}


def strip(model: nn.Module) -> nn.Module:
    """Biases, position embeddings and class tokens set to zero: nothing additive keeps relevance."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or any(k in name for k in ("pos_emb", "position_emb", "cls_token", "class_token")):
                p.zero_()
    return model


def images(n: int = 3) -> Tensor:
    return torch.rand(n, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", list(BUILD))
def test_constant_softmax_conserves_the_logit_exactly_without_additive_parameters(arch: str) -> None:
    """CP-LRP's variant, ε = 0, no biases: every rule is conservative, so Σ R(x) = logit."""
    model = strip(BUILD[arch]())
    res = xailab.create("attnlrp", model, softmax="constant", epsilon=0.0).explain(images(), target=["top1", "least"])
    torch.testing.assert_close(res.extras["relevance_sum"], res.extras["score"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(res.maps.sum(dim=(2, 3, 4)), res.extras["score"], rtol=1e-9, atol=1e-12)


class SoftmaxLedger(TorchFunctionMode):
    """Records, for every softmax, how much relevance its linearisation absorbs:
    ``Σ s·g_s - Σ x·g_x`` (output relevance minus input relevance, gradient x input)."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[Tensor, Tensor]] = []
        self.grads: dict[int, Tensor] = {}

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func in (F.softmax, torch.softmax, Tensor.softmax) and out.requires_grad:
            x = args[0]
            for t in (x, out):
                t.register_hook(self._keeper(id(t)))
            self.pairs.append((x, out))
        return out

    def _keeper(self, key: int) -> Any:
        return lambda g: self.grads.__setitem__(key, g)

    def absorbed(self) -> Tensor:
        return sum((s * self.grads[id(s)]).flatten(1).sum(1) - (x * self.grads[id(x)]).flatten(1).sum(1)
                   for x, s in self.pairs)  # type: ignore[return-value]


@pytest.mark.parametrize("arch", list(BUILD))
def test_linearized_softmax_input_share_plus_absorbed_share_is_the_logit(arch: str) -> None:
    """AttnLRP's softmax rule (Prop. 3.1, Taylor at the input with the bias term) is not conservative:
    what reaches the input plus what each softmax's bias term keeps is the logit, exactly."""
    model = strip(BUILD[arch]())
    x = images(2).requires_grad_(True)
    for p in model.parameters():
        p.requires_grad_(False)
    ledger = SoftmaxLedger()
    with ledger, AttnLRPRules(epsilon=0.0):
        logits = model(x)
    t = logits.argmax(1)
    (g,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), x)
    input_share = (x * g).flatten(1).sum(1)
    assert len(ledger.pairs) == 2
    torch.testing.assert_close(input_share + ledger.absorbed(), logits.gather(1, t[:, None])[:, 0].detach(),
                               rtol=1e-9, atol=1e-12)
    res = xailab.create("attnlrp", model, epsilon=0.0).explain(x.detach(), target="top1")
    torch.testing.assert_close(res.extras["relevance_sum"][:, 0], input_share)


class OneHead(nn.Module):
    """Tokens = pixels (C = 4 features), one attention head, LayerNorm, GELU, mean pooling, a head."""

    def __init__(self, fused: bool = False) -> None:
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(4, 4, bias=False) for _ in range(3))
        self.norm = nn.LayerNorm(4, elementwise_affine=False)
        self.act = nn.GELU()
        self.head = nn.Linear(4, 3, bias=False)
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)  # [B, T, 4]
        q, k, v = self.q(t), self.k(t), self.v(t)
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v)
        else:
            o = torch.softmax(q @ k.transpose(1, 2) / 2.0, dim=-1) @ v
        return self.head(self.act(self.norm(o)).mean(1))


def paper_relevance(m: OneHead, x: Tensor, target: int) -> Tensor:
    """AttnLRP by its formulas, relevance vectors passed backwards explicitly (one image, ε = 0)."""
    t = x.flatten(1).T  # [T, 4]
    wq, wk, wv, wh = m.q.weight, m.k.weight, m.v.weight, m.head.weight
    q, k, v = t @ wq.T, t @ wk.T, t @ wv.T
    s = q @ k.T / 2.0
    a = torch.softmax(s, -1)
    o = a @ v
    c = o - o.mean(1, keepdim=True)
    ln = c / (c.pow(2).mean(1, keepdim=True) + m.norm.eps).sqrt()
    h = F.gelu(ln)
    pooled = h.mean(0)
    r_pooled = pooled * wh[target]  # ε-rule (ε = 0) on the head: R_d = x_d w_d (R_y / y) with R_y = y
    r_h = h / (len(h) * pooled) * r_pooled  # z-rule of the mean
    r_ln = r_h  # identity rule (GELU)
    r_c = r_ln  # identity rule on the division by the standard deviation
    r_o = o * ((r_c / c) - (r_c / c).mean(1, keepdim=True))  # the centring, a linear map (ε = 0)
    ratio = r_o / o  # uniform rule on o = a @ v: half to a, half to v
    r_a = 0.5 * a * (ratio @ v.T)
    r_v = 0.5 * v * (a.T @ ratio)
    r_s = s * (r_a - a * r_a.sum(1, keepdim=True))  # softmax linearised at its input (Prop. 3.1)
    ratio_s = r_s / s / 2.0  # uniform rule on s = q kᵀ / 2: half to q, half to k
    r_q = 0.5 * q * (ratio_s @ k)
    r_k = 0.5 * k * (ratio_s.T @ q)
    r_t = sum(t * ((r / z) @ w) for r, z, w in ((r_q, q, wq), (r_k, k, wk), (r_v, v, wv)))
    return r_t.T.reshape(x.shape)


@pytest.mark.parametrize("fused", [False, True])
def test_rules_follow_the_paper_formulas_on_one_attention_head(fused: bool) -> None:
    torch.manual_seed(0)
    model = OneHead(fused).double().eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    res = xailab.create("attnlrp", model, epsilon=0.0).explain(x, target="all")
    for i in range(2):
        for target in range(3):
            torch.testing.assert_close(res.maps[i, target], paper_relevance(model, x[i], target), rtol=1e-8, atol=1e-10)


def test_timm_fused_and_explicit_attention_give_the_same_map() -> None:
    model = timm_vit()
    explicit = copy.deepcopy(model)
    for blk in explicit.blocks:
        blk.attn.fused_attn = False
    a = xailab.create("attnlrp", model).explain(images(), target=["top1", "least"])
    b = xailab.create("attnlrp", explicit).explain(images(), target=["top1", "least"])
    torch.testing.assert_close(a.maps, b.maps, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("arch", list(BUILD))
def test_batch_size_and_determinism(arch: str) -> None:
    model = BUILD[arch]()
    one = xailab.create("attnlrp", model, batch_size=1).explain(images(), target=["top1", 3])
    many = xailab.create("attnlrp", model, batch_size=16).explain(images(), target=["top1", 3])
    again = xailab.create("attnlrp", model, batch_size=16).explain(images(), target=["top1", 3])
    torch.testing.assert_close(one.maps, many.maps, rtol=1e-10, atol=1e-12)
    assert torch.equal(many.maps, again.maps)
    assert torch.isfinite(many.maps).all() and float(many.maps.abs().sum()) > 0


def test_model_left_as_found() -> None:
    model = tv_vit().train()
    flags = [p.requires_grad for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = count_hooks(model)
    xailab.create("attnlrp", model).explain(images(2), target="top1")
    assert [p.requires_grad for p in model.parameters()] == flags and all(flags)
    assert all(m.training for m in model.modules())
    assert count_hooks(model) == hooks
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


class HandNorm(nn.Module):
    """A normalisation written by hand: divides by the activations' own spread (no rule)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 5)

    def forward(self, x: Tensor) -> Tensor:
        h = x.flatten(1)
        return self.fc(h / h.std(1, keepdim=True))


class ExpNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.exp(x.flatten(1)))


class MaskedMHA(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(3, 1, batch_first=True)
        self.fc = nn.Linear(3, 5)

    def forward(self, x: Tensor) -> Tensor:
        t = x.flatten(2).transpose(1, 2)
        mask = torch.zeros(t.shape[1], t.shape[1], dtype=torch.bool)
        return self.fc(self.attn(t, t, t, attn_mask=mask)[0].mean(1))


@pytest.mark.parametrize(("build", "reason"), [
    (HandNorm, r"has no rule for .*DivBackward0 of two activations"),
    (ExpNet, r"has no rule for .*ExpBackward0"),
    (MaskedMHA, r"nn.MultiheadAttention only without masks.*found: attn_mask"),
])
def test_operations_without_a_rule_are_refused(build: Any, reason: str) -> None:
    model = build().double()
    with pytest.raises(UnsupportedModelError, match=reason) as e:
        xailab.create("attnlrp", model).explain(torch.rand(2, 3, 4, 4, dtype=torch.float64), target="top1")
    assert "\n" not in str(e.value)


def test_batchnorm_in_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(UnsupportedModelError, match="BatchNorm layers in eval mode"):
        xailab.create("attnlrp", model, eval_mode=False).explain(torch.rand(2, 3, 6, 6), target="top1")


def test_lrp_refusal_of_a_transformer_points_to_attnlrp() -> None:
    with warnings.catch_warnings(), pytest.raises(UnsupportedModelError, match="attnlrp"):
        warnings.simplefilter("ignore")
        xailab.create("lrp_epsilon", timm_vit()).explain(images(1), target="top1")


def test_attnlrp_is_lrp_epsilon_on_a_relu_cnn() -> None:
    """Without attention and norms the rules are LRP-ε with the identity rule on ReLU (= zennit's Pass)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16, 5)).double().eval()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    ours = xailab.create("attnlrp", model, epsilon=1e-3).explain(x, target=["top1", 2])
    ref = xailab.create("lrp_epsilon", model, epsilon=1e-3, stabilizer=1e-3).explain(x, target=["top1", 2])
    torch.testing.assert_close(ours.maps, ref.maps, rtol=1e-7, atol=1e-10)
    assert not math.isclose(float(ours.maps.abs().sum()), 0.0)


def test_a_passed_check_is_redone_when_the_model_changes() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.GELU(), nn.Linear(8, 5)).double()
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    xailab.create("attnlrp", model).explain(x, target="top1")
    model[2] = ExpModule()
    with pytest.raises(UnsupportedModelError, match="ExpBackward0"):
        xailab.create("attnlrp", model).explain(x, target="top1")


class ExpModule(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.exp(x)


@pytest.mark.parametrize("norm", [nn.LayerNorm, nn.RMSNorm])
def test_norms_hand_on_all_relevance_without_biases(norm: Any) -> None:
    """Identity rule on the division, no bias: a norm followed by GELU and a bias-free head conserves."""
    torch.manual_seed(0)
    layer = norm(48) if norm is nn.RMSNorm else norm(48, bias=False)
    with torch.no_grad():
        layer.weight.normal_()
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 48, bias=False), layer, nn.GELU(),
                          nn.Linear(48, 5, bias=False)).double()
    res = xailab.create("attnlrp", model, epsilon=0.0).explain(torch.rand(3, 3, 4, 4, dtype=torch.float64),
                                                               target=["top1", "least"])
    torch.testing.assert_close(res.extras["relevance_sum"], res.extras["score"], rtol=1e-9, atol=1e-12)


def test_hugging_face_eager_and_sdpa_attention_give_the_same_map() -> None:
    transformers = pytest.importorskip("transformers")
    from xailab.models.external import HFLogits

    maps = []
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        cfg = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, num_labels=5,
                                     attn_implementation=impl)
        model = HFLogits(transformers.ViTForImageClassification(cfg)).eval().double()
        maps.append(xailab.create("attnlrp", model).explain(images(), target=["top1", "least"]).maps)
    # HF's eager attention takes its softmax in float32 (dtype=torch.float32): float32 rounding
    torch.testing.assert_close(maps[0], maps[1], rtol=1e-5, atol=1e-6 * float(maps[1].abs().max()))
