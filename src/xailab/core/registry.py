"""Registries: build things by name, list them by pattern.

One generic :class:`Registry` serves explanation methods, models and datasets. Entries are
registered by decorating a class or factory where it is defined; the registry imports the
package that holds them the first time it is asked, so ``create("gradcam", model)`` works
without importing :mod:`xailab.methods` by hand.

    @register("saliency", family="gradient")
    class Saliency(Explainer): ...

    available("*cam*")              # ['ablation_cam', 'gradcam', 'gradcam_pp', ...]
    create("gradcam", model, layer="layer4")
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from xailab.core.errors import XailabError

T = TypeVar("T")


class RegistryError(XailabError, KeyError):
    """An unknown name, or a name registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> constructor, with a family tag and aliases per entry."""

    def __init__(self, kind: str, loader: str | None = None) -> None:
        self.kind = kind
        self._loader = loader  # package imported on first use; its modules register entries
        self._loaded = loader is None
        self._entries: dict[str, T] = {}
        self._family: dict[str, str] = {}
        self._aliases: dict[str, str] = {}

    def _load(self) -> None:
        if not self._loaded and self._loader:
            self._loaded = True
            importlib.import_module(self._loader)

    def register(self, name: str, *, family: str = "", aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries or name in self._aliases:
                raise RegistryError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = obj
            self._family[name] = family
            for a in aliases:
                self._aliases[a] = name
            if isinstance(obj, type):
                obj.name = name  # type: ignore[attr-defined]
                obj.family = family  # type: ignore[attr-defined]
            return obj

        return deco

    def canonical(self, name: str) -> str:
        self._load()
        key = name.strip().lower().replace("-", "_")
        key = self._aliases.get(key, key)
        if key not in self._entries:
            names = sorted(self._entries) + sorted(self._aliases)
            close = difflib.get_close_matches(key, names, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}'.{hint} Available: {', '.join(sorted(self._entries))}"
            )
        return key

    def get(self, name: str) -> T:
        return self._entries[self.canonical(name)]

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` (spelled as :meth:`canonical` accepts it) is a registered name or alias."""
        if not isinstance(name, str):
            return False
        self._load()
        key = name.strip().lower().replace("-", "_")
        return key in self._entries or key in self._aliases

    def aliases(self, name: str) -> list[str]:
        """The other names ``name`` is registered under (``"ig"`` for ``integrated_gradients``)."""
        key = self.canonical(name)
        return sorted(a for a, target in self._aliases.items() if target == key)

    def family(self, name: str) -> str:
        return self._family[self.canonical(name)]

    def available(self, pattern: str = "*", family: str | None = None) -> list[str]:
        self._load()
        return sorted(
            n
            for n in self._entries
            if fnmatch.fnmatch(n, pattern) and (family is None or self._family[n] == family)
        )

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        factory = self.get(name)
        return factory(*args, **kwargs)  # type: ignore[operator]


METHODS: Registry[Any] = Registry("method", loader="xailab.methods")


def register(name: str, *, family: str = "", aliases: tuple[str, ...] = ()) -> Callable[[Any], Any]:
    """Register an explainer class under ``name``."""
    return METHODS.register(name, family=family, aliases=aliases)


def create(name: str, model: Any, **params: Any) -> Any:
    """Build the explainer registered as ``name`` for ``model``."""
    return METHODS.create(name, model, **params)


def available(pattern: str = "*", family: str | None = None) -> list[str]:
    """Registered method names matching a shell-style ``pattern`` (and ``family``)."""
    return METHODS.available(pattern, family)
