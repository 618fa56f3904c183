"""The WaNet-style warping trigger (``warp:S[:K]``): the authors' formula line by line, its
properties (fixed by the seed, smooth, identity as the strength goes to 0), parsing and poisoning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xailab.audit import parse_trigger, poison_dataset
from xailab.audit.toy import toy_dataset
from xailab.core.errors import InputError


def wanet_reference(x: torch.Tensor, k: int, s: float, seed: int) -> torch.Tensor:
    """Nguyen & Tran's code (WaNet, train.py): noise grid, identity grid, clamp, grid_sample."""
    h = x.shape[2]
    g = torch.Generator().manual_seed(seed + 11)
    ins = torch.rand(1, 2, k, k, generator=g, dtype=torch.float64) * 2 - 1
    ins = ins / torch.mean(torch.abs(ins))
    noise_grid = F.interpolate(ins, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    array1d = torch.linspace(-1, 1, steps=h, dtype=torch.float64)
    xx, yy = torch.meshgrid(array1d, array1d, indexing="ij")
    identity_grid = torch.stack((yy, xx), 2)[None, ...]
    grid = torch.clamp(identity_grid + s * noise_grid / h, -1, 1).float()
    return F.grid_sample(x, grid.repeat(len(x), 1, 1, 1), align_corners=True)


def test_matches_the_authors_formula() -> None:
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    for spec, k, s in (("warp:0.5", 4, 0.5), ("warp:3:6", 6, 3.0)):
        t = parse_trigger(spec, seed=2)
        out, mask = t.apply(x)
        torch.testing.assert_close(out, wanet_reference(x, k, s, seed=2).clamp(0, 1), atol=1e-6, rtol=0)
        assert mask.all() and out.shape == x.shape and t.spec == spec


def test_properties() -> None:
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    a, b = parse_trigger("warp:2", seed=0).apply(x)[0], parse_trigger("warp:2", seed=0).apply(x)[0]
    assert torch.equal(a, b)                                           # fixed by the seed
    assert not torch.allclose(a, parse_trigger("warp:2", seed=1).apply(x)[0])
    assert (a - x).abs().max() > 0.01 and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(parse_trigger("warp:1e-6").apply(x)[0], x, atol=1e-5, rtol=0)
    flat = torch.full((1, 1, 12, 12), 0.3)
    torch.testing.assert_close(parse_trigger("warp:4").apply(flat)[0], flat)  # a constant image stays constant
    grid = parse_trigger("warp:2").warp_grid((12, 12))
    step = (grid[0, :, 1:, 0] - grid[0, :, :-1, 0]).abs().max()        # smooth: neighbours move together
    assert step < 3 * 2 / 11 and grid.abs().max() <= 1


@pytest.mark.parametrize("spec", ["warp:", "warp:0", "warp:-1", "warp:1:1", "warp:a", "warp:1:x"])
def test_bad_warp_specs(spec: str) -> None:
    with pytest.raises(InputError, match="warp"):
        parse_trigger(spec)


def test_poisoning_with_a_warp() -> None:
    ds = toy_dataset(40, seed=0)
    p = poison_dataset(ds, parse_trigger("warp:3"), target=1, fraction=0.5, seed=0)
    changed = (p.images.float() - ds.images.float()).abs().flatten(1).amax(dim=1) > 0
    assert changed[p.poisoned].any() and not changed[~p.poisoned].any()
    assert (p.targets[p.poisoned] == 1).all()
