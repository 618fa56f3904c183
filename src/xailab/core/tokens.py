"""Vision transformers for CAMs: token outputs read as maps, and the default layer.

A transformer block outputs tokens ``[N, T, D]``: ``p`` prefix tokens (class, distillation,
register tokens) and then one token per patch, row by row, ``T = p + h * w``. The grid ``(h,
w)`` is the patch embedding's: the first ``Conv2d`` of the model, whose output ``[N, D, h, w]``
is flattened into the tokens. :class:`TokenGrid` turns tokens into the map ``[N, D, h, w]``
that every CAM explains (the prefix tokens dropped, as pytorch-grad-cam's ``reshape_transform``
does) and back, so gradients and replacements (Ablation-CAM, Score-CAM) reach the tokens.

The default layer of a transformer is the first LayerNorm of the last block (``blocks[-1].norm1``
in timm, ``layernorm_before`` in Hugging Face): the input of the last attention, where every
patch token still reaches the class token. The last block's own output does not: after it,
only the class token is read by the head, so its patch tokens' gradients are zero.

    grid = find_token_grid(model, images[:1])          # TokenGrid(h=14, w=14)
    grid.to_map(tokens).shape                           # [N, D, 14, 14]

The concept methods (ICE, TCAV, dissection) read a transformer layer the same way: its tokens
as a map of ``D`` channels on the patch grid (:func:`as_map`), and what they write back into the
layer (ICE's reconstructions, TCAV's gradient leaf) as patch tokens beside the original prefix
tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch import Tensor, nn

from xailab.core.errors import LayerError
from xailab.core.hooks import HookScope

#: at most this many prefix tokens (class + distillation + registers) before the patch tokens
MAX_PREFIX = 16


@dataclass(frozen=True)
class TokenGrid:
    """The patch grid ``h x w`` of a transformer's tokens."""

    h: int
    w: int

    def prefix(self, tokens: Tensor, name: str = "") -> int:
        """How many tokens precede the patch tokens; refuses tokens that do not fit the grid."""
        p = int(tokens.shape[1]) - self.h * self.w
        if tokens.dim() != 3 or not 0 <= p <= MAX_PREFIX:
            raise LayerError(
                f"layer '{name}' outputs {list(tokens.shape)}, not tokens of the {self.h}x{self.w} patch grid "
                f"(plus at most {MAX_PREFIX} class/register tokens); name a transformer block's layer")
        return p

    def to_map(self, tokens: Tensor, name: str = "") -> Tensor:
        """``[N, p + h*w, D]`` -> ``[N, D, h, w]`` (prefix tokens dropped)."""
        p = self.prefix(tokens, name)
        n, _, d = tokens.shape
        return tokens[:, p:].transpose(1, 2).reshape(n, d, self.h, self.w)

    def to_tokens(self, amap: Tensor, like: Tensor) -> Tensor:
        """The tokens ``like`` with their patch tokens taken from ``amap [N, D, h, w]``."""
        p = self.prefix(like)
        patches = amap.flatten(2).transpose(1, 2)
        return torch.cat([like[:, :p].expand(len(amap), -1, -1), patches], dim=1) if p else patches


def _dry_run(model: nn.Module, x: Tensor) -> list[tuple[str, nn.Module, tuple[int, ...] | None]]:
    events: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    with HookScope() as hooks, torch.no_grad():
        for name, m in model.named_modules():
            if not name:
                continue

            def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                events.append((name, mod, tuple(out.shape) if isinstance(out, Tensor) else None))

            hooks.add(m.register_forward_hook(hook))
        model(x)
    return events


def _grid(events: list[tuple[str, nn.Module, tuple[int, ...] | None]]) -> TokenGrid | None:
    first_conv = next((i for i, (_, m, s) in enumerate(events) if isinstance(m, nn.Conv2d) and s and len(s) == 4), None)
    if first_conv is None:
        return None
    shape = events[first_conv][2]
    assert shape is not None
    _, d, h, w = shape
    for _, _, s in events[first_conv + 1:]:
        if s is not None and len(s) == 3 and s[2] == d and 0 <= s[1] - h * w <= MAX_PREFIX:
            return TokenGrid(h, w)
    return None


def find_token_grid(model: nn.Module, x: Tensor) -> TokenGrid | None:
    """The patch grid if ``model`` is a transformer on image patches (a dry run on ``x``), else None."""
    return _grid(_dry_run(model, x))


_GRIDS: WeakKeyDictionary[nn.Module, dict[tuple[int, ...], TokenGrid | None]] = WeakKeyDictionary()


def token_grid_of(model: nn.Module, x: Tensor) -> TokenGrid | None:
    """:func:`find_token_grid`, remembered per model and input shape (one dry run each; the
    model is not modified)."""
    per_shape = _GRIDS.setdefault(model, {})
    key = tuple(x.shape[1:])
    if key not in per_shape:
        per_shape[key] = find_token_grid(model, x[:1])
    return per_shape[key]


def as_map(output: Tensor, grid: TokenGrid | None, name: str = "") -> Tensor:
    """A layer's output as a map ``[N, C, h, w]``: tokens ``[N, T, D]`` of a transformer with
    patch grid ``grid`` are reshaped (prefix tokens dropped); anything else is returned as is."""
    return grid.to_map(output, name) if grid is not None and output.dim() == 3 else output


def find_token_layer(model: nn.Module, x: Tensor) -> tuple[str, nn.Module, TokenGrid] | None:
    """``(name, module, grid)`` of a transformer's default CAM layer (see the module docstring);
    None for a model that is not a transformer on patches."""
    events = _dry_run(model, x)
    grid = _grid(events)
    if grid is None:
        return None
    ran = {name: s for name, _, s in events}
    blocks = [name for name, m in model.named_modules()
              if name in ran and sum(isinstance(c, nn.LayerNorm) for c in m.children()) >= 2]
    for block in reversed(blocks):
        for child, module in model.get_submodule(block).named_children():
            s = ran.get(f"{block}.{child}")
            if isinstance(module, nn.LayerNorm) and s is not None and len(s) == 3:
                return f"{block}.{child}", module, grid
    raise LayerError("the model is a transformer on a patch grid, but no block with LayerNorms was found; "
                     "name the layer to explain with layer=... (a block's LayerNorm)")


__all__ = ["MAX_PREFIX", "TokenGrid", "as_map", "find_token_grid", "find_token_layer", "token_grid_of"]
