"""Which layer a CAM explains, and reading its output during a forward pass.

* :func:`find_cam_layer`: the layer chosen when the user names none. A dry run on one image
  finds the last ``Conv2d`` that runs, then follows the modules that run after it while they
  keep its output shape and are per-position (normalisation, activation, dropout) or enclose
  the conv (its block and stage), and takes the last of them that runs once; other same-shape
  steps inside a block still running (a residual ``Add`` module, a shortcut) are passed over. On torchvision's ResNet-18 that is ``layer4`` (the output of the
  last residual block, after its ReLU); on a conv-BN-ReLU-pool stack it is the ReLU, not the raw
  convolution.
* :func:`resolve_cam_layer`: a name, a module or ``None`` -> ``(name, module)``; a wrong name
  lists the closest names and the conv layers (:func:`xailab.core.hooks.resolve_layer`).
* :class:`LayerTap`: a forward hook, used in a ``with`` block around one model call, that
  records the layer's output (or replaces it) and refuses outputs that are not ``[N, C, h, w]``
  maps and layers that run more than once in one forward pass.

    name, layer = resolve_cam_layer(model, None, images[:1])     # ('layer4', Sequential(...))
    with LayerTap(name, layer) as tap:
        logits = model(images)
    tap.activation.shape                                         # [N, 512, 7, 7]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xailab.core.errors import LayerError
from xailab.core.hooks import HookScope, conv_layers, resolve_layer
from xailab.core.tokens import TokenGrid


def find_cam_layer(model: nn.Module, x: Tensor) -> tuple[str, nn.Module]:
    """The last conv layer or block of ``model`` (see the module docstring); one dry run on ``x``."""
    events: list[tuple[str, tuple[int, ...] | None]] = []
    calls: dict[str, int] = {}
    modules = dict(model.named_modules())
    with HookScope() as hooks, torch.no_grad():
        for name, m in modules.items():
            if not name:
                continue

            def hook(mod: nn.Module, inp: Any, out: Any, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1
                shape = tuple(out.shape) if isinstance(out, Tensor) and out.dim() == 4 else None
                events.append((name, shape))

            hooks.add(m.register_forward_hook(hook))
        model(x)
    last_conv = max(
        (i for i, (name, _) in enumerate(events) if isinstance(modules[name], nn.Conv2d)), default=None
    )
    if last_conv is None:
        raise LayerError(
            "the model runs no Conv2d layer, so there is no conv layer to explain by default; "
            "name a layer whose output is an [N, C, H, W] map with layer=..."
        )
    name, shape = events[last_conv]
    chosen = name
    open_blocks = set(_ancestors(name))  # blocks holding the conv that have not ended yet
    diverted = False  # inside a block, the map was reshaped (ConvNeXt's channels-last MLP)
    for later, later_shape in events[last_conv + 1 :]:
        inside = any(later.startswith(b + ".") for b in open_blocks)
        if later_shape != shape:
            if inside and later not in open_blocks:  # the block still runs and comes back to the map
                diverted = True
                continue
            break
        if later in open_blocks:  # the block or stage that holds the conv ends: its output
            open_blocks.discard(later)
            diverted = False
            if calls[later] == 1:
                chosen = later
            continue
        if isinstance(modules[later], _PER_POSITION):
            if calls[later] == 1 and not diverted:
                chosen = later
        elif not inside:  # pooling, a head, anything else after the conv's blocks: stop
            break
        # else: a same-shape step inside a block still running (a residual Add module, a
        # shortcut): not a candidate, but the block's own output comes later
    return chosen, modules[chosen]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


#: modules that keep a map's positions (normalisation, activation, dropout): the search walks
#: past them; anything else (pooling, another conv, a head) ends it
_PER_POSITION: tuple[type[nn.Module], ...] = (
    nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d, nn.LocalResponseNorm, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU,
    nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Tanh,
    nn.Softplus,
)


def resolve_cam_layer(
    model: nn.Module, layer: str | nn.Module | None, x: Tensor | None = None
) -> tuple[str, nn.Module]:
    """``(name, module)`` of ``layer``; ``None`` needs ``x`` for the dry run of :func:`find_cam_layer`."""
    if layer is None:
        if x is None:
            raise ValueError("finding the layer automatically needs an input (x)")
        return find_cam_layer(model, x)
    return resolve_layer(model, layer)


class LayerTap:
    """Forward hook on ``module`` for the model calls inside one ``with`` block.

    Recording (``replace=None``): ``activation`` is the layer's output ``[N, C, h, w]``. Under
    grad mode it stays in the graph so ``torch.autograd.grad(score, tap.activation)`` is the
    gradient with respect to the layer's output; if nothing before the layer needs a gradient the
    output is made a leaf that does. The model continues with a *copy*, so in-place operations
    after the layer (``nn.ReLU(inplace=True)``, ``out += identity``) cannot change the
    recorded map.

    Replacing (``replace=tensor``): the layer's output is swapped for ``replace``.
    """

    def __init__(
        self, name: str, module: nn.Module, replace: Tensor | None = None, *, hint: str = "",
        grid: TokenGrid | None = None,
    ) -> None:
        self.name = name
        self.module = module
        self.replace = replace
        self.hint = hint
        self.grid = grid  # a transformer's tokens [N, T, D] are read as maps [N, D, h, w]
        self.calls = 0
        self._activation: Tensor | None = None
        self._scope = HookScope()

    def _hook(self, module: nn.Module, inputs: Any, output: Any) -> Tensor:
        self.calls += 1
        if self.calls > 1:
            raise LayerError(
                f"layer '{self.name}' runs more than once in one forward pass (a reused module); "
                "its output is ambiguous: name a layer that runs once"
            )
        if self.grid is not None and isinstance(output, Tensor) and output.dim() == 3:
            return self._tokens(output)
        check_map(self.name, output, self.module, self.hint)
        if self.replace is not None:
            if self.replace.shape != output.shape:
                raise LayerError(
                    f"layer '{self.name}': replacement {tuple(self.replace.shape)} does not match "
                    f"its output {tuple(output.shape)}"
                )
            return self.replace
        out: Tensor = output
        if torch.is_grad_enabled() and not out.requires_grad:
            out = out.detach().requires_grad_(True)
        self._activation = out if torch.is_grad_enabled() else out.detach()
        return out.clone()

    def _tokens(self, output: Tensor) -> Tensor:
        """The token version of the hook: record or replace the patch tokens as a map."""
        assert self.grid is not None
        if self.replace is not None:
            want = (len(output), output.shape[2], self.grid.h, self.grid.w)
            if tuple(self.replace.shape) != want:
                raise LayerError(f"layer '{self.name}': replacement {tuple(self.replace.shape)} is not {want}")
            return self.grid.to_tokens(self.replace, output)
        amap = self.grid.to_map(output, self.name)
        if torch.is_grad_enabled() and not amap.requires_grad:
            amap = amap.detach().requires_grad_(True)
        self._activation = amap if torch.is_grad_enabled() else amap.detach()
        return self.grid.to_tokens(amap.clone(), output)

    @property
    def activation(self) -> Tensor:
        if self._activation is None:
            raise LayerError(
                f"layer '{self.name}' did not run in the forward pass; name a layer the model uses"
            )
        return self._activation

    def __enter__(self) -> LayerTap:
        self._scope.add(self.module.register_forward_hook(self._hook))
        return self

    def __exit__(self, *exc: object) -> None:
        self._scope.remove()


def check_map(name: str, output: Any, module: nn.Module | None = None, hint: str = "") -> None:
    """Refuse a layer output that is not a 4-D tensor ``[N, C, h, w]``, naming better layers."""
    if isinstance(output, Tensor) and output.dim() == 4:
        return
    what = (
        f"a tensor of shape {list(output.shape)}"
        if isinstance(output, Tensor)
        else f"a {type(output).__name__}"
    )
    kind = f" ({type(module).__name__})" if module is not None else ""
    raise LayerError(
        f"layer '{name}'{kind} outputs {what}; CAM methods need a layer whose output is a map "
        "[N, C, H, W]: name a conv layer or conv block (or leave layer=None for the last one)"
        + (f". {hint}" if hint else "")
    )


def conv_layer_hint(model: nn.Module) -> str:
    """``"Conv layers: a, b, c"`` (the last 8) for error messages."""
    convs = conv_layers(model)
    return f"Conv layers: {', '.join(convs[-8:])}" if convs else "The model has no Conv2d layer"
