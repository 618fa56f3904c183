"""ICE and the activation stream: planted concepts recovered, importance by hand, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from xailab.concepts.activations import (
    collect_activations,
    constant,
    iter_activations,
    layer_pass,
)
from xailab.concepts.ice import (
    ConceptBasis,
    analyse_ice,
    explain_concepts,
    fidelity_curve,
    fit_concepts,
    fit_ice,
)
from xailab.concepts.nmf import OnlineNMF, nnls, relative_error
from xailab.core.errors import InputError, LayerError
from xailab.core.hooks import ActivationRecorder, count_hooks

from .conftest import TinyBNCNN, _randomise_bn

# -- planted concepts ---------------------------------------------------------------------------
K, C, H = 3, 12, 6  # concepts, channels, map size


def planted(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(V [n, C, H, H] = S P, S [n, K, H, H], P [K, C], labels [n])``: an image of class j holds
    concept j strongly (1.2..2) at 1-3 positions and the other concepts weakly (< 0.25) here and
    there; every P row is sparse and non-negative."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand(K, C, generator=g, dtype=dtype) * (torch.rand(K, C, generator=g, dtype=dtype) < 0.5)
    P[torch.arange(K), torch.arange(K)] = 1.0  # every concept owns a channel
    labels = torch.arange(n) % K
    S = torch.zeros(n, K, H * H, dtype=dtype)
    for i in range(n):
        j = int(labels[i])
        where = torch.randperm(H * H, generator=g)[: int(torch.randint(1, 4, (1,), generator=g))]
        S[i, j, where] = 1.2 + 0.8 * torch.rand(len(where), generator=g, dtype=dtype)
        for o in range(K):
            if o != j:
                weak = torch.randperm(H * H, generator=g)[:2]
                S[i, o, weak] = 0.25 * torch.rand(2, generator=g, dtype=dtype)
    S = S.reshape(n, K, H, H)
    V = torch.einsum("nkhw,kc->nchw", S, P)
    return V, S, P, labels


class PlantedNet(nn.Module):
    """The input is the layer: ``act`` (a ReLU, the identity on non-negative input), global
    average pooling and a linear head, so ``d y_k / d A_p = W_k / (h w)`` by hand."""

    def __init__(self, classes: int = K) -> None:
        super().__init__()
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(C, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(x)).flatten(1))


@pytest.fixture
def planted_net() -> nn.Module:
    torch.manual_seed(0)
    return PlantedNet().double().eval()


def match(found: torch.Tensor, true: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Best one-to-one matching of rows by cosine: ``(order, cosines)`` with found[order[j]] ~ true[j]."""
    from scipy.optimize import linear_sum_assignment

    a = found / found.norm(dim=1, keepdim=True)
    b = true / true.norm(dim=1, keepdim=True)
    cos = (b @ a.T).numpy()
    rows, cols = linear_sum_assignment(-cos)
    return cols, cos[rows, cols]


# -- the activation stream ----------------------------------------------------------------------
def test_iter_activations_equals_one_forward(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    with ActivationRecorder(tiny_cnn.features[3]) as rec, torch.no_grad():
        tiny_cnn(images)
    assert rec.activation is not None
    order = torch.tensor([5, 0, 3, 1, 4, 2])
    got = list(iter_activations(tiny_cnn, "features.3", images, batch_size=4, order=order))
    assert [len(b.indices) for b in got] == [4, 2]
    idx = torch.cat([b.indices for b in got])
    acts = torch.cat([b.activations for b in got])
    assert torch.equal(idx, order)
    torch.testing.assert_close(acts, rec.activation[order])
    assert count_hooks(tiny_cnn) == 0


def test_iter_activations_reads_datasets(tiny_cnn: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    ds = torch.utils.data.TensorDataset(images, labels)
    a = collect_activations(tiny_cnn, "features.1", ds, batch_size=5)
    b = collect_activations(tiny_cnn, "features.1", images, batch_size=2)
    torch.testing.assert_close(a, b)


def test_layer_pass_gradient_is_the_gradient_through_the_rest(tiny_bn_cnn: nn.Module, images: torch.Tensor) -> None:
    model = tiny_bn_cnn.double()
    x = images.double()
    tap, logits = layer_pass(model, model.relu1, x, grad=True)
    assert tap.leaf is not None and logits is not None
    (g,) = torch.autograd.grad(logits[:, 2].sum(), tap.leaf)
    with ActivationRecorder(model.relu1) as rec:
        out = model(x)
    assert rec.activation is not None
    (ref,) = torch.autograd.grad(out[:, 2].sum(), rec.activation)
    torch.testing.assert_close(g, ref)
    with torch.no_grad():  # the pass switches gradients on after the layer, then restores the mode
        layer_pass(model, model.relu1, x, grad=True)
        assert not torch.is_grad_enabled()
    assert count_hooks(model) == 0


def test_layer_pass_replace_changes_what_follows(planted_net: nn.Module) -> None:
    x = torch.rand(2, C, H, H, dtype=torch.float64)
    zero = torch.zeros_like(x)
    _, logits = layer_pass(planted_net, planted_net.act, x, replace=constant(zero))
    torch.testing.assert_close(logits, planted_net.fc.bias.expand(2, -1).detach())


# -- NMF ------------------------------------------------------------------------------------------
def test_nnls_matches_scipy() -> None:
    from scipy.optimize import nnls as scipy_nnls

    g = torch.Generator().manual_seed(3)
    P = torch.rand(4, 9, generator=g, dtype=torch.float64)
    V = torch.rand(20, 9, generator=g, dtype=torch.float64)
    S = nnls(V, P, max_iter=2000, tol=1e-12)
    ref = np.stack([scipy_nnls(P.T.numpy(), v.numpy())[0] for v in V])
    np.testing.assert_allclose(S.numpy(), ref, atol=1e-6)
    assert (S >= 0).all()


def test_online_nmf_recovers_planted_directions() -> None:
    V, _, P, _ = planted(300)
    rows = V.permute(0, 2, 3, 1).reshape(-1, C)
    nmf = OnlineNMF(K, seed=0)
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))
    for chunk in rows[perm].split(1000):
        nmf.partial_fit(chunk, rows_per_epoch=len(rows))
    found = nmf.directions()
    _, cos = match(found, P)
    assert cos.min() > 0.995
    assert relative_error(rows, nnls(rows, found), found) < 0.02


# -- ICE ------------------------------------------------------------------------------------------
def test_ice_recovers_planted_concepts_and_their_presence(planted_net: nn.Module) -> None:
    V, S_true, P, labels = planted(240)
    basis = fit_ice(planted_net, V, n_concepts=K, layer="act", batch_size=32, seed=0)
    order, cos = match(basis.directions.double(), P)
    assert cos.min() > 0.995
    res = analyse_ice(planted_net, basis, V, labels, batch_size=50)
    # the scores are the planted ones up to each concept's scale
    scale = P.norm(dim=1)
    got = res.max_scores[:, order].double()
    want = S_true.flatten(2).amax(2) * scale
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)
    # presence: concept j is in every image of class j and in none of the others
    torch.testing.assert_close(res.presence[order].double(), torch.eye(K, dtype=torch.float64))
    # sensitivity by hand: sum_p <W_k / (h w), P_c> = W_k . P_c for the linear head
    W = planted_net.fc.weight.detach()
    torch.testing.assert_close(res.sensitivity.double(), (W @ basis.directions.double().T).T, rtol=1e-4, atol=1e-5)
    # the reconstruction S P is exact here: the model cannot tell the difference
    assert res.fidelity["top1_agreement"] == 1.0
    assert res.fidelity["mean_abs_logit_error"] < 1e-3
    assert res.fidelity["reconstruction_error"] < 0.02


def test_importance_is_the_finite_difference_of_the_reference(tiny_bn_cnn: nn.Module, images: torch.Tensor) -> None:
    """ICE's code estimates a concept's weight as (y(A + eps P_c) - y(A - eps P_c)) / 2 eps with
    P_c added at every position; the gradient projection is its limit."""
    model = tiny_bn_cnn.double()
    x = images.double()
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    basis = fit_ice(model, x, n_concepts=3, layer="relu2", batch_size=3)
    res = analyse_ice(model, basis, x, labels)
    eps = 1e-5
    tap, _ = layer_pass(model, model.relu2, x)
    assert tap.activations is not None
    A = tap.activations
    for c in range(3):
        d = basis.directions[c].double()[None, :, None, None]
        _, up = layer_pass(model, model.relu2, x, replace=constant(A + eps * d))
        _, down = layer_pass(model, model.relu2, x, replace=constant(A - eps * d))
        assert up is not None and down is not None
        fd = ((up - down) / (2 * eps)).gather(1, labels[:, None]).squeeze(1)
        for k in range(4):
            torch.testing.assert_close(res.sensitivity[c, k].double(), fd[labels == k].mean(), rtol=1e-4, atol=1e-6)


def test_fit_is_deterministic_and_streams_several_counts(planted_net: nn.Module) -> None:
    V, _, _, _ = planted(60)
    a = fit_concepts(planted_net, V, [2, 3], layer="act", batch_size=16, seed=4)
    b = fit_concepts(planted_net, V, [2, 3], layer="act", batch_size=16, seed=4)
    assert set(a) == {2, 3}
    for k in a:
        assert torch.equal(a[k].directions, b[k].directions)
        torch.testing.assert_close(a[k].directions.norm(dim=1), torch.ones(k, dtype=a[k].directions.dtype))


def test_fidelity_curve_grows_with_the_number_of_concepts(planted_net: nn.Module) -> None:
    V, _, _, _ = planted(90)
    bases = fit_concepts(planted_net, V, [1, 3], layer="act", batch_size=30)
    curve = fidelity_curve(planted_net, bases, V, batch_size=45)
    assert curve["n_concepts"].tolist() == [1, 3]
    assert curve["reconstruction_error"].iloc[1] < 0.02 < curve["reconstruction_error"].iloc[0]
    assert curve["top1_agreement"].iloc[1] == 1.0


def test_explain_applies_a_saved_basis(planted_net: nn.Module, tmp_path: object) -> None:
    from xailab.runs.store import Run

    V, _, _, labels = planted(60)
    res = analyse_ice(planted_net, fit_ice(planted_net, V, n_concepts=K, layer="act"), V, labels)
    run = Run.create(tmp_path, kind="concepts")  # type: ignore[arg-type]
    res.basis.save(run)
    loaded = ConceptBasis.load(run)
    assert loaded.layer == "act" and loaded.thresholds is not None
    torch.testing.assert_close(loaded.directions, res.basis.directions.float())
    one = explain_concepts(planted_net.float(), loaded, V[:2].float())
    assert one.maps.shape == (2, K, H, H)
    assert one.present is not None and one.present.shape == (2, K)
    assert one.upsampled((12, 12)).shape == (2, K, 12, 12)
    torch.testing.assert_close(one.scores, res.max_scores[:2].float(), rtol=1e-3, atol=1e-3)


# -- bad input ------------------------------------------------------------------------------------
def test_a_signed_layer_is_refused_unless_clamped(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(LayerError, match=r"Conv2d.*negative.*features\.3.*clamp=True"):
        fit_ice(tiny_cnn, images, n_concepts=2, layer="features.2")
    assert count_hooks(tiny_cnn) == 0
    basis = fit_ice(tiny_cnn, images, n_concepts=2, layer="features.2", clamp=True)
    assert basis.clamp and (basis.directions >= 0).all()
    maps = explain_concepts(tiny_cnn, basis, images[:2]).maps
    assert (maps >= 0).all()


class Shift(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - 1.0


def test_negative_values_of_an_unknown_module_are_refused(images: torch.Tensor) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Shift(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    model.train()
    with pytest.raises(LayerError, match="negative activations"):
        fit_ice(model, images, n_concepts=2, layer="2")
    assert count_hooks(model) == 0
    assert model.training and all(m.training for m in model.modules())


def test_too_few_images_or_too_many_concepts(tiny_cnn: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(InputError, match="too few images for 8 concepts: got 6"):
        fit_ice(tiny_cnn, images, n_concepts=8, layer="features.3")
    with pytest.raises(InputError, match="at most 6 concepts"):
        fit_ice(tiny_cnn, torch.cat([images, images]), n_concepts=7, layer="features.3")
    with pytest.raises(InputError, match=">= 1"):
        fit_ice(tiny_cnn, images, n_concepts=0, layer="features.3")


def test_model_state_is_restored(images: torch.Tensor) -> None:
    model = _randomise_bn(TinyBNCNN(), 2)
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    basis = fit_ice(model, images, n_concepts=2, layer="relu2")
    analyse_ice(model, basis, images)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(p.grad, torch.full_like(p, 3.0)) for p in model.parameters() if p.grad is not None)
    assert count_hooks(model) == 0


def test_default_ice_layer_is_the_relu_after_a_bare_last_conv() -> None:
    from xailab.jobs.ice import default_ice_layer

    # the last conv block is a bare Conv2d: ICE takes the ReLU after it, not the signed conv
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2))
    assert default_ice_layer(seq)[0] == "4"
    # nothing non-negative after it: the conv itself, which the signed-layer check then refuses
    bare = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert default_ice_layer(bare)[0] == "0"
