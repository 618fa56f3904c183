"""xailab: an explainability workbench for PyTorch image classifiers.

The public API in a few names::

    import xailab
    explainer = xailab.create("integrated_gradients", model, n_steps=32)
    result = explainer.explain(images, target=["true", "top1", "least"], labels=labels)
    result.save("runs/demo/ig")

The names are imported on first use, so ``import xailab`` (and ``xailab --help``) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xailab.core.explainer import Explainer
    from xailab.core.explanation import Explanation
    from xailab.core.registry import available, create, register

__all__ = ["Explainer", "Explanation", "available", "create", "register"]
__version__ = "0.1.0"

_WHERE = {
    "Explainer": "xailab.core.explainer",
    "Explanation": "xailab.core.explanation",
    "available": "xailab.core.registry",
    "create": "xailab.core.registry",
    "register": "xailab.core.registry",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xailab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
