"""The model the sampled gradient methods' passes run through: a BatchNorm-folded copy, channels-last.

Integrated Gradients, SmoothGrad and GradientSHAP run ``n`` forward + backward passes per image
and need from each only the input gradient of a score. On the CPU two rewrites of those passes
give the same numbers (up to float rounding) for less work:

* the model's BatchNorm layers folded into the convolutions before them, and its ReLUs in place
  (:func:`~xailab.methods.perturbation.fold.folded_copy`, as the perturbation methods do): one
  layer fewer forward and backward. On the benchmarks' CIFAR CNN a forward + backward costs
  about 20 % less on one thread, on ResNet-18 about 7 %;
* the batches handed to a model with 2-D convolutions in channels-last memory format
  (oneDNN's convolutions run faster in it: about 20 % of a forward + backward on the CIFAR CNN,
  9 % on ResNet-18). A model that cannot take it (``x.view(len(x), -1)`` after a convolution
  raises) gets NCHW from its first pass on.

The scoring pass (the logits recorded in the explanation, the targets resolved from them) and
the completeness checks still run the model itself. The copy is made once and kept while the
model's parameters and buffers are the same tensors, unchanged (``_version``, ``data_ptr``) and
in eval mode; a model with hooks on any module runs as it is, NCHW (a copy would lose what the
hooks do). ``fast_passes=False`` on the method runs every pass through the model as it is.

    passes = FastPasses()
    fast = passes.model(model)                 # the folded copy, or the model itself
    leaf, logits = passes.leaf_logits(fast, x)  # d logits / d leaf: the input gradient
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from xailab.core.hooks import count_hooks
from xailab.methods.perturbation.fold import channels_last_pass, conv2d_on_cpu, folded_copy


def _state_key(model: nn.Module) -> tuple[Any, ...]:
    tensors = [*model.parameters(), *model.buffers()]
    return (id(model), tuple((id(t), t.data_ptr(), t._version, t.device, t.dtype) for t in tensors),
            tuple(m.training for m in model.modules()))


class FastPasses:
    """The folded copy of one model (cached, see the module docstring) and the passes' layout."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._copy: nn.Module | None = None
        self.channels_last = True  # whether the model takes channels-last batches (and gains)
        self.layout = True  # whether this call's passes use it (not with hooks on the model)

    def model(self, model: nn.Module) -> nn.Module:
        """The model the gradient passes run: the folded copy when there is one, else ``model``."""
        if count_hooks(model):
            self.layout = False
            return model
        key = _state_key(model)
        if key != self._key:
            self._copy = folded_copy(model)
            if self._copy is not None:
                for p in self._copy.parameters():
                    p.requires_grad_(False)  # only input gradients are wanted
            self._key = key
            self.channels_last = conv2d_on_cpu(model)
        self.layout = self.channels_last
        return model if self._copy is None else self._copy

    def leaf_logits(self, model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(leaf, model(leaf))``: ``x`` detached and requiring grad, channels-last when that
        helps; a model that raises on a channels-last batch gets NCHW from then on (the error is
        raised again if NCHW fails too)."""
        if self.layout and self.channels_last and x.dim() == 4:
            done = channels_last_pass(model, x, leaf=True)
            if done is not None:
                return done
            self.channels_last = False
        leaf = x.detach().requires_grad_(True)
        return leaf, model(leaf)
