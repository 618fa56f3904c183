"""Cut a model at one layer with torch.fx, so the layers after it can run on their own.

Ablation-CAM changes one layer's output and reads the class scores, once per channel. Only the
operations that depend on that output change, so :class:`SplitModel` traces the model
(``torch.fx``, the layer kept as one leaf call) and divides its graph in two:

* ``head(x) -> (A, carried)``: everything that does not depend on the layer's output, plus the
  layer itself; ``carried`` are the values the rest still needs (e.g. the identity branch of
  a residual block that skips the layer);
* ``tail(A', carried, index) -> logits``: everything that depends on it, run for changed maps
  ``A'``; ``index`` says which image each row of ``A'`` belongs to (its carried values are
  picked with ``index_select``).

:meth:`SplitModel.build` raises :class:`SplitError` when the model cannot be traced or the
layer does not appear exactly once in the graph; :meth:`SplitModel.check` runs head + tail on
a few images and compares with the whole model's logits, so a split that would be wrong (e.g. a batch
size read in the head and used in the tail) is never used. Callers fall back to re-running
the whole model.

    split = SplitModel.build(model, "layer3")
    acts, carried = split.head(images)
    logits = split.tail(acts, carried, torch.arange(len(images)))   # == model(images)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, fx, nn

from xailab.core.errors import XailabError
from xailab.core.explainer import check_logits


class SplitError(XailabError, RuntimeError):
    """The model cannot be cut at the layer (not traceable, layer used twice, ...)."""


class _LeafTracer(fx.Tracer):
    """The default tracer, but ``leaf`` is kept as one call even if it is a container."""

    def __init__(self, leaf: str) -> None:
        super().__init__()
        self.leaf = leaf

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name == self.leaf or super().is_leaf_module(m, module_qualified_name)


class SplitModel:
    """``model`` cut after the layer ``layer_name``; see the module docstring."""

    def __init__(self, head: fx.GraphModule, tail: fx.GraphModule, batched: list[bool]) -> None:
        self._head = head
        self._tail = tail
        self._batched = batched  # per carried value: depends on the input (rows = images)?

    @classmethod
    def build(cls, model: nn.Module, layer_name: str) -> SplitModel:
        try:
            tracer = _LeafTracer(layer_name)
            graph = tracer.trace(model)
        except Exception as e:  # any Python the tracer cannot follow
            raise SplitError(f"torch.fx cannot trace the model: {type(e).__name__}: {e}") from e
        nodes = list(graph.nodes)
        calls = [n for n in nodes if n.op == "call_module" and n.target == layer_name]
        if len(calls) != 1:
            raise SplitError(f"layer '{layer_name}' appears {len(calls)} times in the traced graph")
        layer = calls[0]
        after = _dependents(nodes, {layer})  # what changes when the layer's output does
        on_input = _dependents(nodes, {n for n in nodes if n.op == "placeholder"})
        output = next(n for n in nodes if n.op == "output")
        if output not in after:
            raise SplitError(f"the model's output does not depend on layer '{layer_name}'")
        head_nodes = [n for n in nodes if n not in after or n is layer]
        tail_nodes = [n for n in nodes if n in after and n is not layer]
        carried: list[fx.Node] = []
        for n in tail_nodes:
            for a in n.all_input_nodes:
                if a not in after and a not in carried:
                    carried.append(a)

        head_graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for n in head_nodes:
            env[n] = head_graph.node_copy(n, _lookup(env))
        head_graph.output((env[layer], *[env[c] for c in carried]))

        tail_graph = fx.Graph()
        env = {layer: tail_graph.placeholder("activation")}
        for i, c in enumerate(carried):
            env[c] = tail_graph.placeholder(f"carried_{i}")
        for n in tail_nodes:
            env[n] = tail_graph.node_copy(n, _lookup(env))
        root = tracer.root
        return cls(
            fx.GraphModule(root, head_graph, "Head"),
            fx.GraphModule(root, tail_graph, "Tail"),
            [c in on_input for c in carried],
        )

    def head(self, x: Tensor) -> tuple[Tensor, list[Any]]:
        """``(A [B, K, h, w], carried values)`` for images ``x``."""
        out = self._head(x)
        acts, carried = out[0], list(out[1:])
        for value, batched in zip(carried, self._batched, strict=True):
            if batched and not (isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == len(x)):
                raise SplitError("a value the tail needs depends on the input but is not per image")
        return acts, carried

    def tail(self, acts: Tensor, carried: list[Any], index: Tensor) -> Tensor:
        """Logits for the maps ``acts [M, K, h, w]``; row ``m`` belongs to image ``index[m]``."""
        args = [v.index_select(0, index) if b else v for v, b in zip(carried, self._batched, strict=True)]
        return check_logits(self._tail(acts, *args), len(acts))

    def check(self, x: Tensor, logits: Tensor) -> Tensor:
        """Raise :class:`SplitError` unless head + tail reproduce the model's ``logits`` for ``x``.

        ``x`` should hold two or more images; each row goes through the tail twice, so a value
        that does not follow the rows is caught. Returns the layer's output for ``x``.
        """
        with torch.no_grad():
            try:
                acts, carried = self.head(x)
                index = torch.arange(len(x), device=x.device).repeat_interleave(2)
                got = self.tail(acts.index_select(0, index), carried, index)
            except SplitError:
                raise
            except Exception as e:
                raise SplitError(f"the split model fails: {type(e).__name__}: {e}") from e
        want = logits.detach().index_select(0, index)
        tol = 1e-4 * max(1.0, float(want.abs().max()))
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=tol):
            raise SplitError("the split model does not reproduce the model's output")
        return acts


def _dependents(nodes: list[fx.Node], roots: set[fx.Node]) -> set[fx.Node]:
    """``roots`` and every node that reads one of them, directly or not (nodes in graph order)."""
    out = set(roots)
    for n in nodes:
        if n not in out and any(a in out for a in n.all_input_nodes):
            out.add(n)
    return out


def _lookup(env: dict[fx.Node, fx.Node]) -> Callable[[fx.Node], fx.Node]:
    return lambda n: env[n]
