"""Bicubic upscaling (MATLAB ``imresize``), the classical super-resolution baseline."""

from __future__ import annotations

import torch
from torch import nn

from restore_app.core.checks import check_range, check_tensor
from restore_app.core.resize import imresize


class Bicubic(nn.Module):
    """``(B, C, H, W)`` → ``(B, C, scale·H, scale·W)`` with MATLAB's bicubic kernel.

    The output is not clipped: that is left to the caller, as for every model.
    """

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = int(check_range(scale, 1, 16, "scale"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ndim=4)
        return imresize(x.float(), float(self.scale)).to(x.dtype)
