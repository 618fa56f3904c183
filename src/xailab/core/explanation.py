"""The one result type every explainer returns."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Explanation:
    """Attribution maps for ``N`` images and ``T`` targets each.

    Attributes:
        maps: ``[N, T, H, W]`` (one value per pixel) or ``[N, T, C, H, W]`` (per channel), raw:
            never normalised, so magnitudes can be compared across methods and images.
        targets: ``[N, T]`` class index explained in each column.
        target_names: the ``T`` column names (``"true"``, ``"top1"``, ``"least"``, ...).
        logits: ``[N, K]`` the model's scores for the unmodified images.
        method: registered name of the method.
        params: the parameters it ran with (JSON-serialisable).
        seconds: wall-clock time of the whole ``explain`` call.
        evaluations: number of samples the model was evaluated on (forward passes x batch rows).
        extras: method-specific arrays keyed by name (e.g. LIME's ``segments`` and ``weights``,
            IG's ``delta``), each with the images along dimension 0.
    """

    maps: Tensor
    targets: Tensor
    target_names: tuple[str, ...]
    logits: Tensor
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    evaluations: int = 0
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, t = self.targets.shape
        if self.maps.shape[:2] != (n, t):
            raise ValueError(f"maps {tuple(self.maps.shape)} do not match targets {(n, t)}")
        if len(self.target_names) != t:
            raise ValueError(f"{len(self.target_names)} target names for {t} target columns")

    # -- views -----------------------------------------------------------------------------
    @property
    def probabilities(self) -> Tensor:
        """Softmax of the logits, ``[N, K]``."""
        return torch.softmax(self.logits.double(), dim=1).to(self.logits.dtype)

    def pixel_maps(self) -> Tensor:
        """``[N, T, H, W]``: channel maps summed over channels, pixel maps as they are."""
        return self.maps.sum(dim=2) if self.maps.dim() == 5 else self.maps

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index: slice | Tensor | list[int]) -> Explanation:
        """The explanation of a subset of the images."""
        return Explanation(
            maps=self.maps[index],
            targets=self.targets[index],
            target_names=self.target_names,
            logits=self.logits[index],
            method=self.method,
            params=self.params,
            seconds=self.seconds,
            evaluations=self.evaluations,
            extras={k: v[index] for k, v in self.extras.items()},
        )

    @staticmethod
    def concat(parts: list[Explanation]) -> Explanation:
        """Join explanations of consecutive image batches made by the same method."""
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.method != first.method or p.target_names != first.target_names:
                raise ValueError("can only concatenate explanations of one method and target set")
        return Explanation(
            maps=torch.cat([p.maps for p in parts]),
            targets=torch.cat([p.targets for p in parts]),
            target_names=first.target_names,
            logits=torch.cat([p.logits for p in parts]),
            method=first.method,
            params=first.params,
            seconds=sum(p.seconds for p in parts),
            evaluations=sum(p.evaluations for p in parts),
            extras={k: torch.cat([p.extras[k] for p in parts]) for k in first.extras},
        )

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``arrays.safetensors`` and ``manifest.json`` into the folder ``path``.

        The folder appears whole or not at all: it is written beside its destination and renamed.
        """
        dest = Path(path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            tensors = {
                "maps": self.maps.detach().cpu().contiguous(),
                "targets": self.targets.detach().cpu().contiguous(),
                "logits": self.logits.detach().cpu().contiguous(),
            }
            tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in self.extras.items()})
            _save_tensors(tensors, tmp / "arrays.safetensors")
            manifest = {
                "format": "xailab.explanation",
                "version": FORMAT_VERSION,
                "method": self.method,
                "params": self.params,
                "target_names": list(self.target_names),
                "seconds": self.seconds,
                "evaluations": self.evaluations,
                "shape": list(self.maps.shape),
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str))
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Explanation:
        """Read an explanation written by :meth:`save` (no pickle involved)."""
        src = Path(path)
        manifest_file = src / "manifest.json"
        if not manifest_file.is_file():
            raise FileNotFoundError(f"{src} is not a saved explanation (no manifest.json)")
        manifest = json.loads(manifest_file.read_text())
        if manifest.get("format") != "xailab.explanation":
            raise ValueError(f"{src} holds {manifest.get('format')!r}, not an explanation")
        if manifest.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{src} was written by a newer xailab (format {manifest['version']})")
        arrays = load_file(str(src / "arrays.safetensors"))
        return cls(
            maps=arrays["maps"],
            targets=arrays["targets"],
            target_names=tuple(manifest["target_names"]),
            logits=arrays["logits"],
            method=manifest["method"],
            params=manifest["params"],
            seconds=float(manifest["seconds"]),
            evaluations=int(manifest.get("evaluations", 0)),
            extras={k[6:]: v for k, v in arrays.items() if k.startswith("extra.")},
        )


def _save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    """``save_file``, with the operating-system errors safetensors wraps in its own exception
    (a full disk: ``IoError(Os { code: 28, ... })``) raised as the ``OSError`` they are."""
    try:
        save_file(tensors, str(path))
    except OSError:
        raise
    except Exception as e:
        code = re.search(r"code: (\d+)", str(e))
        if code is None:
            raise
        n = int(code.group(1))
        raise OSError(n, os.strerror(n), str(path)) from e

