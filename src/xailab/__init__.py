"""xailab: an explainability workbench for PyTorch image classifiers.

The public API in a few names::

    import xailab
    explainer = xailab.create("integrated_gradients", model, n_steps=32)
    result = explainer.explain(images, target=["true", "top1", "least"], labels=labels)
    result.save("runs/demo/ig")
"""

from xailab.core.explainer import Explainer
from xailab.core.explanation import Explanation
from xailab.core.registry import available, create, register

__all__ = ["Explainer", "Explanation", "available", "create", "register"]
__version__ = "0.1.0"
