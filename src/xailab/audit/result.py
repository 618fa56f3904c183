"""The result of an attack: clean and adversarial pixels, both predictions, success and size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from xailab.audit.pixel import perturbation_norms


@dataclass(frozen=True)
class AttackResult:
    """What an attack did to ``N`` images.

    Attributes:
        clean, adversarial: pixels ``[N, C, H, W]`` in ``[0, 1]``.
        labels: ``[N]`` the class the untargeted attack moves away from (the true label, or the
            clean prediction when no labels were given).
        target: ``[N]`` the class a targeted attack aims at; None for untargeted attacks.
        clean_logits, adv_logits: ``[N, K]`` the model's scores before and after.
        attack: name (``"fgsm"``, ``"pgd"``, ``"pgd_l2"``, ``"patch"``).
        params: the settings it ran with (JSON-serialisable).
        seconds: wall time.
        mask: ``[N, H, W]`` bool, the region allowed to change (patch attacks), else None.
        extras: other per-image arrays (e.g. the patch ``positions [N, 2]``).

    Success: untargeted, the adversarial prediction differs from ``labels``; targeted, it equals
    ``target``. ``success_rate`` counts all images (as foolbox does, an image the model already
    got wrong counts as a success of an untargeted attack); ``success_rate_on_correct`` counts
    only images the model classified correctly before the attack.
    """

    clean: Tensor
    adversarial: Tensor
    labels: Tensor
    target: Tensor | None
    clean_logits: Tensor
    adv_logits: Tensor
    attack: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    mask: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def targeted(self) -> bool:
        return self.target is not None

    @property
    def clean_pred(self) -> Tensor:
        return self.clean_logits.argmax(dim=1)

    @property
    def adv_pred(self) -> Tensor:
        return self.adv_logits.argmax(dim=1)

    @property
    def clean_correct(self) -> Tensor:
        return self.clean_pred == self.labels

    @property
    def success(self) -> Tensor:
        """``[N]`` bool: the attack reached its goal on each image."""
        if self.target is not None:
            return self.adv_pred == self.target
        return self.adv_pred != self.labels

    @property
    def success_rate(self) -> float:
        return float(self.success.double().mean())

    @property
    def success_rate_on_correct(self) -> float:
        ok = self.clean_correct
        return float(self.success[ok].double().mean()) if bool(ok.any()) else float("nan")

    @property
    def delta(self) -> Tensor:
        return self.adversarial - self.clean

    def norms(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(linf, l2, pixels_changed)`` per image."""
        return perturbation_norms(self.delta)

    def table(self) -> pd.DataFrame:
        """One row per image: labels, predictions, probabilities, success and the change's size."""
        linf, l2, changed = self.norms()
        p_clean = torch.softmax(self.clean_logits.double(), dim=1)
        p_adv = torch.softmax(self.adv_logits.double(), dim=1)
        idx = torch.arange(len(self))
        cols: dict[str, Any] = {
            "image": idx.numpy(),
            "label": self.labels.cpu().numpy(),
            "target": (self.target.cpu().numpy() if self.target is not None else np.full(len(self), -1)),
            "clean_pred": self.clean_pred.cpu().numpy(),
            "adv_pred": self.adv_pred.cpu().numpy(),
            "clean_prob": p_clean[idx, self.clean_pred.cpu()].numpy(),
            "adv_prob": p_adv[idx, self.adv_pred.cpu()].numpy(),
            "clean_correct": self.clean_correct.cpu().numpy(),
            "success": self.success.cpu().numpy(),
            "linf": linf.double().cpu().numpy(),
            "l2": l2.double().cpu().numpy(),
            "pixels_changed": changed.cpu().numpy(),
        }
        if "positions" in self.extras:
            pos = self.extras["positions"].cpu().numpy()
            cols["patch_top"], cols["patch_left"] = pos[:, 0], pos[:, 1]
        return pd.DataFrame(cols)

    def summary(self) -> dict[str, Any]:
        """Success rates and mean sizes of the change (over successful images too)."""
        linf, l2, changed = self.norms()
        ok = self.success
        return {
            "attack": self.attack,
            "images": len(self),
            "targeted": self.targeted,
            "clean_accuracy": float(self.clean_correct.double().mean()),
            "success_rate": self.success_rate,
            "success_rate_on_correct": self.success_rate_on_correct,
            "mean_linf": float(linf.double().mean()),
            "mean_l2": float(l2.double().mean()),
            "mean_pixels_changed": float(changed.double().mean()),
            "mean_l2_successful": float(l2[ok].double().mean()) if bool(ok.any()) else float("nan"),
            "seconds": self.seconds,
            **{f"param.{k}": v for k, v in self.params.items()},
        }

    def format(self) -> str:
        s = self.summary()
        return (
            f"{s['attack']} on {s['images']} images ({'targeted' if s['targeted'] else 'untargeted'}): "
            f"success {s['success_rate']:.3f} (on correctly classified: {s['success_rate_on_correct']:.3f}), "
            f"clean accuracy {s['clean_accuracy']:.3f}; mean L-inf {s['mean_linf']:.4f}, "
            f"L2 {s['mean_l2']:.4f}, pixels changed {s['mean_pixels_changed']:.1f}; {s['seconds']:.1f} s"
        )
