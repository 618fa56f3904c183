"""STRIP: screen inputs at inference time for a trigger, by how little superimposing other images
changes the prediction.

Gao et al. 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks" (ACSAC).
Superimpose an input ``x`` with ``overlays`` clean images ``o_j`` drawn from a pool and average
the Shannon entropy (bits) of the model's predictions:

    H(x) = (1 / N) sum_j  -sum_k p_k(x + o_j) log2 p_k(x + o_j)

A clean input mixed with other images loses its class (high entropy); a triggered input keeps
going to the target because the trigger survives the mix (low entropy). Superimposition as in
the authors' code: ``mode="add"`` sums the two images and clips to [0, 1]
(``cv2.addWeighted(x, 1, o, 1, 0)``); ``"blend"`` takes their mean.

The threshold comes from clean inputs only: the ``frr`` quantile of the clean calibration
entropies (the paper fits a normal distribution; the empirical quantile needs no such
assumption), so about ``frr`` of clean inputs are rejected. Inputs with entropy *below* the
threshold are rejected as triggered. On held-out clean and triggered inputs the filter reports
the false rejection rate (clean rejected) and false acceptance rate (triggered accepted).

    f = StripFilter.calibrate(model, calibration, pool, frr=0.05)
    screen = f.screen(model, inputs)                # entropy and rejected per input
    f.rates(model, clean_test, triggered_test)      # {"frr": ..., "far": ...}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xailab.audit.pixel import PixelModel, check_pixels, resolve_preprocessing
from xailab.core.errors import InputError
from xailab.core.hooks import model_device, model_session
from xailab.data.transforms import Preprocessing

MODES = ("add", "blend")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"STRIP's superimposition is {' or '.join(MODES)}, not {mode!r}")
    return mode


def superimpose(x: Tensor, o: Tensor, mode: str = "add") -> Tensor:
    """``clip(x + o, 0, 1)`` (``add``) or ``(x + o) / 2`` (``blend``)."""
    return (x + o).clamp(0, 1) if check_mode(mode) == "add" else (x + o) / 2


@torch.no_grad()
def strip_entropy(model: nn.Module, inputs: Tensor, pool: Tensor, *, overlays: int = 20, mode: str = "add",
                  preprocessing: Preprocessing | str | None = "model", batch_size: int = 256,
                  seed: int = 0) -> np.ndarray:
    """``[N]`` mean prediction entropy (bits) of each input superimposed with ``overlays`` pool images.

    The pool images of input ``i`` are drawn without replacement from a generator seeded by
    ``seed`` and ``i``, so an input gets the same overlays whatever batch it is screened in.
    """
    x = check_pixels(inputs, "inputs")
    p = check_pixels(pool, "the clean pool")
    if overlays < 1 or overlays > len(p):
        raise InputError(f"STRIP needs 1 <= overlays <= pool size ({len(p)}), got {overlays}")
    check_mode(mode)
    px = PixelModel(model, resolve_preprocessing(model, preprocessing))
    dev = model_device(model)
    per = max(1, batch_size // overlays)
    out = np.zeros(len(x))
    with model_session(px):
        for lo in range(0, len(x), per):
            chunk = x[lo : lo + per]
            idx = torch.stack([torch.randperm(len(p), generator=torch.Generator().manual_seed(seed * 1_000_003 + i))
                               [:overlays] for i in range(lo, lo + len(chunk))])
            mixed = superimpose(chunk[:, None], p[idx], mode).flatten(0, 1)          # [n * overlays, C, H, W]
            prob = torch.softmax(px(mixed.to(dev)).double(), dim=1).cpu()
            ent = -(prob * torch.log2(prob.clamp_min(1e-300))).sum(dim=1)
            out[lo : lo + len(chunk)] = ent.reshape(len(chunk), overlays).mean(dim=1).numpy()
    return out


def strip_threshold(clean_entropy: np.ndarray, frr: float) -> float:
    """The ``frr`` quantile of clean entropies: rejecting below it rejects about ``frr`` of clean inputs."""
    if not 0 < frr < 1:
        raise InputError(f"the false rejection rate must be in (0, 1), got {frr}")
    e = np.asarray(clean_entropy, dtype=np.float64)
    if len(e) < 2:
        raise InputError("STRIP's threshold needs at least 2 clean calibration inputs")
    return float(np.quantile(e, frr))


@dataclass(frozen=True)
class StripScreen:
    """Screened inputs: ``entropy [N]`` and ``rejected [N]`` (entropy below ``threshold``)."""

    entropy: np.ndarray
    rejected: np.ndarray
    threshold: float

    @property
    def rejection_rate(self) -> float:
        return float(self.rejected.mean()) if len(self.rejected) else float("nan")


@dataclass(frozen=True)
class StripFilter:
    """A calibrated STRIP filter: the pool, the settings and the threshold (see the module docstring)."""

    pool: Tensor = field(repr=False)
    threshold: float
    frr: float
    calibration_entropy: np.ndarray = field(repr=False)
    overlays: int = 20
    mode: str = "add"
    preprocessing: Any = "model"
    batch_size: int = 256
    seed: int = 0

    @classmethod
    def calibrate(cls, model: nn.Module, calibration: Tensor, pool: Tensor, *, frr: float = 0.05,
                  overlays: int = 20, mode: str = "add", preprocessing: Preprocessing | str | None = "model",
                  batch_size: int = 256, seed: int = 0) -> StripFilter:
        """The threshold from clean ``calibration`` inputs (keep them apart from the inputs screened later)."""
        ent = strip_entropy(model, calibration, pool, overlays=overlays, mode=mode, preprocessing=preprocessing,
                            batch_size=batch_size, seed=seed)
        return cls(pool, strip_threshold(ent, frr), frr, ent, overlays, mode, preprocessing, batch_size, seed)

    def screen(self, model: nn.Module, inputs: Tensor) -> StripScreen:
        ent = strip_entropy(model, inputs, self.pool, overlays=self.overlays, mode=self.mode,
                            preprocessing=self.preprocessing, batch_size=self.batch_size, seed=self.seed + 1)
        return StripScreen(ent, ent < self.threshold, self.threshold)

    def rates(self, model: nn.Module, clean: Tensor, triggered: Tensor) -> dict[str, float]:
        """False rejection rate on ``clean`` and false acceptance rate on ``triggered`` inputs."""
        c, t = self.screen(model, clean), self.screen(model, triggered)
        return {"frr": c.rejection_rate, "far": 1 - t.rejection_rate, "threshold": self.threshold,
                "clean_entropy_mean": float(c.entropy.mean()), "triggered_entropy_mean": float(t.entropy.mean()),
                "n_clean": len(c.entropy), "n_triggered": len(t.entropy)}
