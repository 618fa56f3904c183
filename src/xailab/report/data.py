"""What the report reads from a run: tables, arrays, saved explanations. Nothing else.

Saved explanations (``RUN/explanations/<method>/``: ``arrays.safetensors`` + ``manifest.json``)
are read with safetensors' numpy API, one tensor at a time, so the report needs no torch.

    src = ReportRun.of("runs/cifar-explain", "cifar-explain")
    src.methods()                    # ['gradcam', 'saliency']
    src.logits()                     # [N, K] from the first saved explanation
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from safetensors import safe_open

from xailab.runs.store import Run, RunError


def slug(text: str) -> str:
    """A file-name-safe form of a run name."""
    s = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower()
    return s[:40] or "run"


@dataclass
class ReportRun:
    """One run as the report sees it."""

    run: Run
    slug: str
    label: str | None = None
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, path: str | os.PathLike[str], slug_: str, label: str | None = None) -> ReportRun:
        return cls(Run.open(path), slug_, label)

    @property
    def name(self) -> str:
        """What the report calls the run: ``label`` if given, else its folder's name."""
        return self.label or self.run.path.resolve().name

    @property
    def manifest(self) -> dict[str, Any]:
        if "manifest" not in self._cache:
            self._cache["manifest"] = self.run.manifest
        return self._cache["manifest"]

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind", "?"))

    def has_table(self, name: str) -> bool:
        return name in self.run.tables()

    def table(self, name: str) -> pd.DataFrame | None:
        """Table ``name``, or None when the run has none (or it is empty)."""
        if not self.has_table(name):
            return None
        try:
            df = self.run.read_table(name)
        except RunError:
            return None
        return df if len(df) else None

    def file(self, relpath: str) -> Path | None:
        p = self.run.path / "files" / relpath
        return p if p.is_file() else None

    # -- classes --------------------------------------------------------------------------------
    def class_names(self) -> list[str] | None:
        m = self.manifest
        names = (m.get("explain") or {}).get("class_names") or m.get("classes")
        return [str(c) for c in names] if names else None

    def class_name(self, k: int) -> str:
        names = self.class_names()
        return names[k] if names is not None and 0 <= k < len(names) else str(k)

    # -- explanations ---------------------------------------------------------------------------
    def explanation_dir(self, method: str) -> Path:
        return self.run.path / "explanations" / method

    def methods(self) -> list[str]:
        """Methods with a saved explanation, in the order the manifest lists them."""
        root = self.run.path / "explanations"
        have = {p.name for p in root.iterdir() if (p / "manifest.json").is_file()} if root.is_dir() else set()
        listed = [m for m in (self.manifest.get("explain") or {}).get("methods", []) if m in have]
        return listed + sorted(have - set(listed))

    def explanation_manifest(self, method: str) -> dict[str, Any]:
        key = f"xm/{method}"
        if key not in self._cache:
            text = (self.explanation_dir(method) / "manifest.json").read_text(encoding="utf-8")
            self._cache[key] = json.loads(text)
        return self._cache[key]

    def tensor(self, method: str, name: str) -> np.ndarray | None:
        path = self.explanation_dir(method) / "arrays.safetensors"
        if not path.is_file():
            return None
        with safe_open(str(path), framework="numpy") as f:
            return f.get_tensor(name) if name in f.keys() else None  # noqa: SIM118

    def pixel_maps(self, method: str) -> np.ndarray | None:
        """``[N, T, H, W]``: per-channel maps summed over channels, as ``Explanation.pixel_maps``."""
        key = f"maps/{method}"
        if key not in self._cache:
            m = self.tensor(method, "maps")
            if m is not None and m.ndim == 5:
                m = m.sum(axis=2)
            self._cache[key] = m
        return self._cache[key]

    def logits(self) -> np.ndarray | None:
        """``[N, K]`` the model's scores, from the first saved explanation."""
        if "logits" not in self._cache:
            found = None
            for m in self.methods():
                found = self.tensor(m, "logits")
                if found is not None:
                    break
            self._cache["logits"] = found
        return self._cache["logits"]

    def probabilities(self) -> np.ndarray | None:
        z = self.logits()
        if z is None:
            return None
        z = z.astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def display(self) -> np.ndarray | None:
        """``[N, C, H, W]`` uint8, the images as a person sees them (memory-mapped)."""
        if "display" not in self.run.arrays():
            return None
        return self.run.read_array("display", mmap=True)
