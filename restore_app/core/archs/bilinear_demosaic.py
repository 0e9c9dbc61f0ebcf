"""Bilinear demosaicing of an RGGB Bayer mosaic: the classical baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.checks import check_tensor


class BilinearDemosaic(nn.Module):
    """Bilinear interpolation of each colour plane of an RGGB mosaic.

    ``forward(mosaic)``: ``(B, 1, H, W)`` RGGB mosaic, H and W even → ``(B, 3, H, W)`` RGB.
    Borders are reflected, which keeps the Bayer pattern at the edges.
    """

    def __init__(self) -> None:
        super().__init__()
        rb = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 4
        g = torch.tensor([[0.0, 1.0, 0.0], [1.0, 4.0, 1.0], [0.0, 1.0, 0.0]]) / 4
        self.register_buffer("kernels", torch.stack([rb, g, rb])[:, None], persistent=False)
        mask = torch.zeros(3, 2, 2)
        mask[0, 0, 0] = 1
        mask[1, 0, 1] = mask[1, 1, 0] = 1
        mask[2, 1, 1] = 1
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, mosaic: torch.Tensor) -> torch.Tensor:
        check_tensor(mosaic, "mosaic", ndim=4, channels=1)
        b, _, h, w = mosaic.shape
        masks = self.mask.to(mosaic.dtype).repeat(1, (h + 1) // 2, (w + 1) // 2)[:, :h, :w]
        planes = mosaic * masks[None]
        planes = F.pad(planes, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(planes, self.kernels.to(mosaic.dtype), groups=3)
