"""Training losses. Functions on ``(B, C, H, W)`` tensors in [0, 1], with thin module wrappers.

:func:`mix_loss` is the ℓ1 + MS-SSIM "Mix" loss of Zhao, Gallo, Frosio and Kautz, "Loss Functions for
Image Restoration with Neural Networks" (IEEE TCI 2017), eq. 10–12: the per-pixel MS-SSIM is computed
with Gaussian windows of σ = 0.5, 1, 2, 4, 8 at full resolution (scales by widening the window rather
than downsampling), and the ℓ1 term is weighted by the widest Gaussian, with α = 0.84. Note that this
is a loss, not the MS-SSIM metric of :mod:`restore_app.core.metrics`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import nn

from restore_app.core.checks import check_same_shape
from restore_app.core.errors import InputError

ZHAO_SIGMAS = (0.5, 1.0, 2.0, 4.0, 8.0)


def _gauss_1d(sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


@lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``(n, n)`` matrix of a 1-D Gaussian blur with reflected borders (as ``F.pad(mode="reflect")``).

    Blurring by two matrix products is several times faster on the CPU than depthwise convolutions
    with the 49-tap kernel of σ = 8.
    """
    g = _gauss_1d(sigma, torch.float64, torch.device("cpu"))
    r = g.numel() // 2
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)
    for k in range(-r, r + 1):
        cols = rows + k
        for _ in range(3):  # fold indices back into range (reflect without repeating the edge)
            cols = torch.where(cols < 0, -cols, cols)
            cols = torch.where(cols >= n, 2 * (n - 1) - cols, cols)
        m.index_put_((rows, cols.clamp(0, n - 1)), g[k + r].expand(n), accumulate=True)
    return m.to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(..., H, W)`` with reflected borders, by separable matrix products."""
    h, w = x.shape[-2:]
    mh = _blur_matrix(h, sigma, x.dtype, str(x.device))
    mw = _blur_matrix(w, sigma, x.dtype, str(x.device))
    return mh @ (x @ mw.T)


def mix_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 0.84,
             sigmas: tuple[float, ...] = ZHAO_SIGMAS, data_range: float = 1.0) -> torch.Tensor:
    """Zhao et al.'s Mix loss: ``alpha·(1 − MS-SSIM) + (1 − alpha)·G_σM ⊗ |pred − target|``.

    Computed in float32 whatever the autocast state; returns a scalar mean over the batch. Patches
    need a side larger than 3σ of the widest window (25 pixels for the default σ = 8).

    >>> x = torch.rand(2, 3, 48, 48)
    >>> float(mix_loss(x, x))
    0.0
    """
    check_same_shape(pred, target, ("prediction", "target"))
    if min(pred.shape[-2:]) <= math.ceil(3 * max(sigmas)):
        raise InputError(f"mix_loss needs patches larger than {math.ceil(3 * max(sigmas))} pixels; "
                         f"got {tuple(pred.shape[-2:])}")
    with torch.autocast(device_type=pred.device.type, enabled=False):
        pred, target = pred.float(), target.float()
        n = pred.shape[1]
        c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
        # all the local statistics at once: x, y, x², y², xy and |x − y| stacked as channels
        stack = torch.cat([pred, target, pred * pred, target * target, pred * target,
                           (pred - target).abs()], dim=1)
        cs_prod = torch.ones_like(pred)
        lum = l1 = None
        for i, sigma in enumerate(sigmas):
            last = i == len(sigmas) - 1
            m = _blur(stack if last else stack[:, :5 * n], sigma)
            mu_x, mu_y = m[:, :n], m[:, n:2 * n]
            var_x = m[:, 2 * n:3 * n] - mu_x ** 2
            var_y = m[:, 3 * n:4 * n] - mu_y ** 2
            cov = m[:, 4 * n:5 * n] - mu_x * mu_y
            cs_prod = cs_prod * (2 * cov + c2) / (var_x + var_y + c2)
            if last:
                lum = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
                l1 = m[:, 5 * n:]
        return (alpha * (1 - lum * cs_prod) + (1 - alpha) * l1).mean()


class MixLoss(nn.Module):
    """Module wrapper of :func:`mix_loss`."""

    def __init__(self, alpha: float = 0.84, sigmas: tuple[float, ...] = ZHAO_SIGMAS) -> None:
        super().__init__()
        self.alpha, self.sigmas = alpha, tuple(sigmas)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return mix_loss(pred, target, self.alpha, self.sigmas)


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error in float32."""
    return (pred.float() - target.float()).abs().mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (BRCN's training loss)."""
    return (pred.float() - target.float()).pow(2).mean()


LOSSES = {"mix": mix_loss, "l1": l1_loss, "l2": l2_loss}
