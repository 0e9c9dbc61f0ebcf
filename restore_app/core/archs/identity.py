"""The identity "restoration": the do-nothing baseline (for JPEG, the compressed input itself)."""

from __future__ import annotations

import torch
from torch import nn


class Identity(nn.Module):
    """Returns its ``(B, C, H, W)`` input unchanged."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
