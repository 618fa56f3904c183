"""Explanation methods. Importing this package registers every method with the registry."""

import importlib
import pkgutil
import sys

# Every module of this package registers its methods when imported; a new method is a new
# module (and its test), nothing else. A package may name modules that register nothing and are
# heavy to import (``RUN_TIME_MODULES``): its methods import them when they run.
for _mod in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    _parent, _, _leaf = _mod.name.rpartition(".")
    if _leaf in getattr(sys.modules.get(_parent), "RUN_TIME_MODULES", ()):
        continue
    importlib.import_module(_mod.name)
