"""Concepts on a vision transformer (issue 13): ICE, TCAV and dissection read a block's tokens
``[N, 1 + reg + h*w, D]`` as the map ``[N, D, h, w]`` of its patch tokens, the way the CAMs do;
what they write back (ICE's reconstructions, TCAV's gradient leaf) keeps the class and register
tokens. Checked against hand-made reshapes of the same tokens on a tiny random timm ViT."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from xailab.concepts import collect_activations
from xailab.concepts.activations import constant, layer_pass
from xailab.concepts.dissection import dissect
from xailab.concepts.dissection_concepts import ColourConcepts
from xailab.concepts.ice import explain_concepts, fit_ice
from xailab.concepts.tcav import class_gradients
from xailab.core.errors import LayerError

timm = pytest.importorskip("timm")
LAYER = "blocks.1.mlp.act"  # GELU of the first block's MLP: [N, 1 + 1 + 16, 64] tokens
BLOCK = "blocks.1"


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=2, embed_dim=16,
                             num_heads=2, num_classes=4, reg_tokens=1).eval()


@pytest.fixture(scope="module")
def images() -> Tensor:
    return torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def tokens_of(model: nn.Module, name: str, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


def by_hand(tokens: Tensor) -> Tensor:  # drop the class and register token, rows of the 4x4 grid
    return tokens[:, 2:].transpose(1, 2).reshape(len(tokens), tokens.shape[2], 4, 4)


def test_tokens_are_read_as_the_patch_grid(vit: nn.Module, images: Tensor) -> None:
    acts = collect_activations(vit, LAYER, images)
    torch.testing.assert_close(acts, by_hand(tokens_of(vit, LAYER, images)))
    _, logits = layer_pass(vit, vit.get_submodule(BLOCK), images, replace=constant(by_hand(tokens_of(vit, BLOCK, images))))
    with torch.no_grad():
        torch.testing.assert_close(logits, vit(images))  # written back: the prefix tokens are kept


def test_tcav_gradients_are_the_patch_tokens_gradients(vit: nn.Module, images: Tensor) -> None:
    g = class_gradients(vit, BLOCK, images, target=2)
    tokens = tokens_of(vit, BLOCK, images).requires_grad_(True)
    handle = vit.get_submodule(BLOCK).register_forward_hook(lambda m, i, o: tokens)
    try:
        logits = vit(images)
    finally:
        handle.remove()
    (want,) = torch.autograd.grad(logits[:, 2].sum(), tokens)
    torch.testing.assert_close(g, by_hand(want).reshape(len(images), -1))


def test_ice_on_a_vit_clamps_and_explains_on_the_grid(vit: nn.Module, images: Tensor) -> None:
    with pytest.raises(LayerError, match="clamp=True"):
        fit_ice(vit, images, n_concepts=3, layer=LAYER)  # GELU can be negative: NMF needs clamp
    basis = fit_ice(vit, images, n_concepts=3, layer=LAYER, clamp=True)
    assert basis.directions.shape == (3, 64) and bool((basis.directions >= 0).all())
    res = explain_concepts(vit, basis, images)
    assert res.maps.shape == (6, 3, 4, 4) and bool(torch.isfinite(res.contribution).all())


def test_dissection_of_a_vit_block(vit: nn.Module, images: Tensor) -> None:
    d = dissect(vit, images, [BLOCK], ColourConcepts(), batch_size=4, top_images=2, bins=64)
    assert len(d.table) == 16 and set(d.table["layer"]) == {BLOCK}  # one row per token channel
