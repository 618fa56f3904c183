"""The two surrogate fits: LIME's weighted ridge and KernelSHAP's constrained least squares.

Both run in float64 on the CPU (they are small: samples x superpixels) through
``torch.linalg.lstsq`` with the SVD driver, which also answers rank-deficient designs (few
samples, a superpixel never switched) with the minimum-norm solution instead of failing.
Several targets are fitted at once: ``y`` is ``[n, T]``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_F64 = torch.float64


def _lstsq(a: Tensor, b: Tensor) -> Tensor:
    if a.shape[1] == 0:
        return torch.zeros(0, b.shape[1], dtype=_F64)
    return torch.linalg.lstsq(a, b, driver="gelsd").solution


def weighted_ridge(z: Tensor, y: Tensor, w: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """``(coef [T, S], intercept [T])`` minimising ``sum_i w_i (y_i - b - z_i . c)^2 + alpha |c|^2``.

    The definition of scikit-learn's ``Ridge(alpha, fit_intercept=True).fit(z, y, sample_weight=w)``
    that lime uses: the intercept is not penalised, data are centred on their weighted means.
    """
    z, y, w = z.to("cpu", _F64), y.to("cpu", _F64), w.to("cpu", _F64)
    total = w.sum()
    z_mean = (w @ z) / total
    y_mean = (w @ y) / total
    root = w.sqrt().reshape(-1, 1)
    s = z.shape[1]
    a = torch.cat([(z - z_mean) * root, (alpha**0.5) * torch.eye(s, dtype=_F64)])
    b = torch.cat([(y - y_mean) * root, torch.zeros(s, y.shape[1], dtype=_F64)])
    coef = _lstsq(a, b)  # [S, T]
    return coef.T.contiguous(), y_mean - z_mean @ coef


def constrained_wls(z: Tensor, y: Tensor, w: Tensor, f_empty: Tensor, f_full: Tensor) -> Tensor:
    """``phi [T, S]``: KernelSHAP's fit ``min sum_i w_i (y_i - f_empty - z_i . phi)^2``.

    Subject to ``sum(phi) = f_full - f_empty`` (efficiency), exactly: the last superpixel is
    eliminated as in shap's KernelExplainer, ``phi_S = (f_full - f_empty) - sum_{j<S} phi_j``.
    """
    z, y, w = z.to("cpu", _F64), y.to("cpu", _F64), w.to("cpu", _F64)
    f_empty, f_full = f_empty.to("cpu", _F64), f_full.to("cpu", _F64)
    total = f_full - f_empty  # [T]
    s = z.shape[1]
    if s == 1 or len(z) == 0:
        phi = torch.zeros(s, len(total), dtype=_F64)
        phi[-1] = total
        return phi.T.contiguous()
    last = z[:, -1:].to(_F64)
    x = z[:, :-1].to(_F64) - last
    target = y - f_empty - last * total
    root = w.sqrt().reshape(-1, 1)
    head = _lstsq(x * root, target * root)  # [S-1, T]
    phi = torch.cat([head, (total - head.sum(0)).reshape(1, -1)])
    return phi.T.contiguous()
