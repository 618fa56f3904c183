"""LRP rules against slow re-implementations of the papers' formulas, and conservation, in float64.

The reference below writes every linear layer (conv, dense, average pooling) as its dense matrix
``w[i, j]`` (input i -> output j) and applies the rules of Bach et al. 2015 and Montavon et al.
2019 ("Layer-wise relevance propagation: an overview", eqs. in Sec. 10.2) one formula per line,
with zennit's stabiliser ``z + eps * sign(z)`` (sign(0) = +1). Nothing of zennit is used.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import xailab

EPS = 1e-7
STAB = 1e-9
GAMMA = 0.3


def stab(z: Tensor, eps: float) -> Tensor:
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


class TinyNet(nn.Module):
    """conv - ReLU - maxpool - conv - ReLU - avgpool - flatten - dense - ReLU - dense."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1, bias=bias)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AvgPool2d(2)
        self.flat = nn.Flatten()
        self.fc1 = nn.Linear(16, 6, bias=bias)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(6, 3, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc2(self.relu3(self.fc1(self.flat(x))))


def make_net(bias: bool = True, seed: int = 1) -> TinyNet:
    """Weights x3 so that few ReLUs die (the default init leaves this tiny net nearly silent)."""
    torch.manual_seed(seed)
    net = TinyNet(bias).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(3)
                if bias:
                    m.bias.normal_(0, 0.3)
    return net


# -- the reference: dense matrices and one function per rule ---------------------------------------
def dense(layer: nn.Module, shape: tuple[int, ...], ones: bool = False) -> tuple[Tensor, Tensor]:
    """``(w [n_in, n_out], b [n_out])`` of a conv / linear / avg-pool layer on inputs of ``shape``.

    Row ``i`` of ``w`` is the bias-free layer applied to the i-th unit vector.
    """
    n = 1
    for s in shape:
        n *= s
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        if isinstance(layer, nn.Conv2d):
            weight = torch.ones_like(layer.weight) if ones else layer.weight
            w = F.conv2d(basis, weight, None, layer.stride, layer.padding)
        elif isinstance(layer, nn.Linear):
            w = F.linear(basis, torch.ones_like(layer.weight) if ones else layer.weight)
        else:  # AvgPool2d
            w = layer(basis)
    per = w[0].numel() // w.shape[1] if w.dim() > 2 else 1
    w = w.reshape(n, -1)
    bias = getattr(layer, "bias", None)
    b = torch.zeros(w.shape[1], dtype=torch.float64) if bias is None else bias.detach().repeat_interleave(per)
    return w, b


def rule_epsilon(a: Tensor, w: Tensor, b: Tensor, r: Tensor, eps: float) -> Tensor:
    z = a[:, None] * w                              # z_ij = a_i w_ij
    zj = z.sum(0) + b                               # z_j = sum_i z_ij + b_j
    return (z / stab(zj, eps)[None, :] * r[None, :]).sum(1)   # R_i = sum_j z_ij / z_j R_j


def rule_alpha_beta(a: Tensor, w: Tensor, b: Tensor, r: Tensor, alpha: float, beta: float) -> Tensor:
    z = a[:, None] * w
    zp, zn = z.clamp(min=0), z.clamp(max=0)                    # z+_ij, z-_ij
    zpj = zp.sum(0) + b.clamp(min=0)                           # z+_j (with b+)
    znj = zn.sum(0) + b.clamp(max=0)                           # z-_j (with b-)
    return (alpha * zp / stab(zpj, STAB) - beta * zn / stab(znj, STAB)).mul(r[None, :]).sum(1)


def rule_gamma(a: Tensor, w: Tensor, b: Tensor, r: Tensor, gamma: float, bias: Tensor) -> Tensor:
    """Generalised γ-rule (Montavon et al. 2019; Andéol et al. 2021 for negative inputs).

    Output j with z_j > 0: ``R_i = [a+_i (w + γw+)_ij + a-_i (w + γw-)_ij] / (sum_i ... + b + γb+) R_j``;
    with z_j < 0 the roles of w+ and w- swap (and b + γb-). ``b`` is the bias the rule uses (zero
    with ``zero_bias``), ``bias`` the layer's own, which decides the sign of z_j.
    """
    ap, an = a.clamp(min=0), a.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    zj = a @ w + bias                               # the layer's actual output picks the case
    pos = ap[:, None] * (w + gamma * wp) + an[:, None] * (w + gamma * wn)
    neg = ap[:, None] * (w + gamma * wn) + an[:, None] * (w + gamma * wp)
    pos_j = pos.sum(0) + b + gamma * b.clamp(min=0)
    neg_j = neg.sum(0) + b + gamma * b.clamp(max=0)
    out = pos / stab(pos_j, STAB) * (zj > 0) + neg / stab(neg_j, STAB) * (zj < 0)
    return (out * r[None, :]).sum(1)


def rule_zbox(x: Tensor, w: Tensor, r: Tensor, low: Tensor, high: Tensor) -> Tensor:
    z = x[:, None] * w - low[:, None] * w.clamp(min=0) - high[:, None] * w.clamp(max=0)
    return (z / stab(z.sum(0), STAB) * r[None, :]).sum(1)


def rule_flat(ones: Tensor, r: Tensor) -> Tensor:
    return (ones / stab(ones.sum(0), STAB) * r[None, :]).sum(1)


def reference_lrp(net: TinyNet, x: Tensor, target: int, rules: dict[str, str], *, zero_bias: bool = False,
                  low: Tensor | None = None, high: Tensor | None = None) -> Tensor:
    """Relevance of one image ``x [C, H, W]`` for ``target``; ``rules``: layer name -> rule name."""
    layers = ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flat", "fc1", "relu3", "fc2"]
    acts = [x]
    for name in layers:
        acts.append(getattr(net, name)(acts[-1][None])[0])
    r = torch.zeros_like(acts[-1])
    r[target] = acts[-1][target]  # R = S_t(x) at the target logit
    for k in range(len(layers) - 1, -1, -1):
        name, layer, a = layers[k], getattr(net, layers[k]), acts[k]
        shape = tuple(a.shape)
        if name.startswith("relu") or name == "flat":
            r = r.reshape(shape)  # relevance passes activations unchanged
            continue
        if name == "pool1":  # max pooling: winner takes all
            _, idx = F.max_pool2d(a[None], 2, return_indices=True)
            r = torch.zeros_like(a).reshape(shape[0], -1).scatter_add(1, idx[0].reshape(shape[0], -1),
                                                                      r.reshape(shape[0], -1)).reshape(shape)
            continue
        w, b = dense(layer, shape)
        layer_bias = b
        if zero_bias:
            b = torch.zeros_like(b)
        av, rv = a.reshape(-1), r.reshape(-1)
        rule = "norm" if name == "pool2" else rules[name]
        if rule == "norm":
            out = rule_epsilon(av, w, torch.zeros_like(b), rv, STAB)
        elif rule == "epsilon":
            out = rule_epsilon(av, w, b, rv, EPS)
        elif rule == "zplus":
            out = rule_alpha_beta(av, w, b, rv, 1.0, 0.0)
        elif rule == "alpha2_beta1":
            out = rule_alpha_beta(av, w, b, rv, 2.0, 1.0)
        elif rule == "gamma":
            out = rule_gamma(av, w, b, rv, GAMMA, layer_bias)
        elif rule == "flat":
            ones, _ = dense(layer, shape, ones=True)
            out = rule_flat(ones, rv)
        elif rule == "zbox":
            assert low is not None and high is not None
            out = rule_zbox(av, w, rv, low.expand(shape).reshape(-1), high.expand(shape).reshape(-1))
        else:
            raise AssertionError(rule)
        r = out.reshape(shape)
    return r


COMPOSITE_RULES = {
    "epsilon": {"conv1": "epsilon", "conv2": "epsilon", "fc1": "epsilon", "fc2": "epsilon"},
    "zplus": {"conv1": "zplus", "conv2": "zplus", "fc1": "zplus", "fc2": "zplus"},
    "alpha2_beta1": {"conv1": "alpha2_beta1", "conv2": "alpha2_beta1", "fc1": "alpha2_beta1", "fc2": "alpha2_beta1"},
    "epsilon_plus": {"conv1": "zplus", "conv2": "zplus", "fc1": "epsilon", "fc2": "epsilon"},
    "epsilon_plus_flat": {"conv1": "flat", "conv2": "zplus", "fc1": "epsilon", "fc2": "epsilon"},
    "epsilon_alpha2_beta1": {"conv1": "alpha2_beta1", "conv2": "alpha2_beta1", "fc1": "epsilon", "fc2": "epsilon"},
    "epsilon_gamma_box": {"conv1": "zbox", "conv2": "gamma", "fc1": "epsilon", "fc2": "epsilon"},
}


def images(n: int = 2, seed: int = 1) -> Tensor:
    return torch.rand(n, 2, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 0.5


@pytest.mark.parametrize("zero_bias", [False, True])
@pytest.mark.parametrize("composite", sorted(COMPOSITE_RULES))
def test_rules_match_paper_formulas(composite: str, zero_bias: bool) -> None:
    net = make_net()
    x = images()
    low, high = torch.full((1, 2, 1, 1), -0.5, dtype=torch.float64), torch.full((1, 2, 1, 1), 1.5, dtype=torch.float64)
    explainer = xailab.create("lrp", net, composite=composite, epsilon=EPS, stabilizer=STAB, gamma=GAMMA,
                              zero_bias=zero_bias, low=-0.5, high=1.5)
    res = explainer.explain(x, target=["top1", "least"])
    for i in range(len(x)):
        for t in range(2):
            ref = reference_lrp(net, x[i], int(res.targets[i, t]), COMPOSITE_RULES[composite],
                                zero_bias=zero_bias, low=low[0], high=high[0])
            torch.testing.assert_close(res.maps[i, t], ref, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "alpha2_beta1", "epsilon_plus", "epsilon_gamma_box",
                                       "epsilon_plus_flat", "epsilon_alpha2_beta1"])
def test_conservation_without_bias(composite: str) -> None:
    """Bias-free ReLU net: sum_i R_i = S_t(x) for every composite.

    z+ and αβ on the *output* layer need a positive contribution to the logit (z+_j > 0), so they
    are checked on the top class only: a negative logit made of negative contributions alone is
    lost by z+ and flips sign under αβ (a property of the rules, see docs/methods/propagation.md).
    """
    net = make_net(bias=False)
    x = images(3)
    target = ["top1"] if composite in ("zplus", "alpha2_beta1") else ["top1", "least"]
    res = xailab.create("lrp", net, composite=composite, epsilon=1e-12, stabilizer=1e-12,
                        low=-0.5, high=1.5).explain(x, target=target)
    logits = res.logits.gather(1, res.targets)
    assert (logits[:, 0] > 0.1).all()  # the top class has positive contributions (z+ needs them)
    # the stabilisers (1e-12 on pre-activations as small as 1e-5) cost ~1e-7 of the relevance
    torch.testing.assert_close(res.maps.sum(dim=(2, 3, 4)), logits, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(res.extras["relevance_sum"], res.maps.sum(dim=(2, 3, 4)))
    torch.testing.assert_close(res.extras["score"], logits)


@pytest.mark.parametrize("composite", ["epsilon", "zplus", "alpha2_beta1", "epsilon_gamma_box"])
def test_zero_bias_restores_conservation(composite: str) -> None:
    net = make_net(bias=True)
    x = images(3)
    kw = {"composite": composite, "epsilon": 1e-12, "stabilizer": 1e-12, "low": -0.5, "high": 1.5}
    with_bias = xailab.create("lrp", net, **kw).explain(x)
    no_bias = xailab.create("lrp", net, zero_bias=True, **kw).explain(x)
    score = no_bias.extras["score"]
    torch.testing.assert_close(no_bias.extras["relevance_sum"], score, rtol=1e-6, atol=1e-12)
    assert not torch.allclose(with_bias.extras["relevance_sum"], score, rtol=1e-3)  # biases absorb


def test_epsilon_zero_is_gradient_times_input_on_bias_free_relu_net() -> None:
    """LRP-0 equals gradient x input on a bias-free ReLU net (Montavon et al. 2019, Sec. 10.2.1)."""
    net = make_net(bias=False)
    x = images(2)
    res = xailab.create("lrp_epsilon", net, epsilon=1e-300, stabilizer=1e-300).explain(x)
    xi = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(net(xi).gather(1, res.targets).sum(), xi)
    # average pooling's z-rule is also LRP-0 here; max pooling routes like the gradient
    torch.testing.assert_close(res.maps[:, 0], xi.detach() * g, rtol=1e-9, atol=1e-12)


def test_relevance_starts_at_the_explained_score() -> None:
    net = make_net()
    x = images(2)
    logit = xailab.create("lrp_epsilon", net).explain(x)
    prob = xailab.create("lrp_epsilon", net, output="probability").explain(x)
    p = torch.softmax(logit.logits, 1).gather(1, logit.targets)
    torch.testing.assert_close(prob.extras["score"], p)
    scale = (p / logit.extras["score"])[:, :, None, None, None]
    torch.testing.assert_close(prob.maps, logit.maps * scale)


def test_several_targets_equal_separate_calls() -> None:
    net = make_net()
    x = images(3)
    both = xailab.create("lrp_epsilon_plus", net).explain(x, target=["top1", "least"])
    top = xailab.create("lrp_epsilon_plus", net).explain(x, target="top1")
    least = xailab.create("lrp_epsilon_plus", net).explain(x, target="least")
    torch.testing.assert_close(both.maps[:, 0], top.maps[:, 0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(both.maps[:, 1], least.maps[:, 0], rtol=1e-12, atol=1e-15)
    assert both.extras["relevance_sum"].shape == (3, 2)
