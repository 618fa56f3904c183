"""Explanation methods. Importing this package registers every method with the registry."""

import importlib
import pkgutil

# Every module of this package registers its methods when imported; a new method is a new
# module (and its test), nothing else.
for _mod in pkgutil.walk_packages(__path__, prefix=f"{__name__}."):
    importlib.import_module(_mod.name)
