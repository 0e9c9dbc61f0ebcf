"""BRCN: Bidirectional Recurrent Convolutional Network for multi-frame super-resolution, as published.

Huang, Wang and Wang, NIPS 2015. The bicubic-upsampled luminance of each frame goes through a forward
and a backward sub-network; each is three layers with three kinds of connection:

* feedforward, within a frame: 9×9 (1→64), 1×1 (64→32), 5×5 (32→1);
* recurrent, from the same layer at the previous time step: 1×1 (64→64) and 1×1 (32→32);
* conditional, from the layer below at the previous time step: 9×9 (1→64), 1×1 (64→32), 5×5 (32→1).

The two sub-networks' outputs are summed. ``recurrent=False, conditional=False`` gives the paper's
feedforward-only ablation (a per-frame network). Convolutions are padded so every pixel is kept.

Here the module takes the low-resolution frames and does the bicubic upsampling itself (MATLAB
``imresize``), so every super-resolution model in Restore has the same interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.checks import check_tensor
from restore_app.core.resize import imresize


class _Direction(nn.Module):
    """One sub-network (forward or backward in time)."""

    def __init__(self, recurrent: bool, conditional: bool) -> None:
        super().__init__()
        self.v1, self.v2, self.v3 = nn.Conv2d(1, 64, 9, padding=4), nn.Conv2d(64, 32, 1), nn.Conv2d(32, 1, 5, padding=2)
        self.recurrent, self.conditional = recurrent, conditional
        if recurrent:
            self.r1, self.r2 = nn.Conv2d(64, 64, 1, bias=False), nn.Conv2d(32, 32, 1, bias=False)
        if conditional:
            self.t1 = nn.Conv2d(1, 64, 9, padding=4, bias=False)
            self.t2 = nn.Conv2d(64, 32, 1, bias=False)
            self.t3 = nn.Conv2d(32, 1, 5, padding=2, bias=False)

    def forward(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        outs = []
        h1 = h2 = prev_x = prev_h1 = prev_h2 = None
        for x in frames:
            a1 = self.v1(x)
            if prev_x is not None:
                if self.recurrent:
                    a1 = a1 + self.r1(h1)
                if self.conditional:
                    a1 = a1 + self.t1(prev_x)
            h1_new = F.relu(a1)
            a2 = self.v2(h1_new)
            if prev_x is not None:
                if self.recurrent:
                    a2 = a2 + self.r2(h2)
                if self.conditional:
                    a2 = a2 + self.t2(prev_h1)
            h2_new = F.relu(a2)
            out = self.v3(h2_new)
            if prev_x is not None and self.conditional:
                out = out + self.t3(prev_h2)
            outs.append(out)
            prev_x, prev_h1, prev_h2 = x, h1_new, h2_new
            h1, h2 = h1_new, h2_new
        return outs


class BRCN(nn.Module):
    """``(B, T, 1, h, w)`` low-resolution luminance → ``(B, T, 1, s·h, s·w)``.

    >>> net = BRCN(scale=2)
    >>> net(torch.rand(1, 3, 1, 8, 8)).shape
    torch.Size([1, 3, 1, 16, 16])
    """

    def __init__(self, scale: int = 4, recurrent: bool = True, conditional: bool = True) -> None:
        super().__init__()
        self.scale = int(scale)
        self.forward_net = _Direction(recurrent, conditional)
        self.backward_net = _Direction(recurrent, conditional)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=5)
        if x.shape[2] != 1:
            raise ValueError(f"BRCN works on luminance: (B, T, 1, H, W); got {tuple(x.shape)}")
        b, t, _, h, w = x.shape
        up = imresize(x.reshape(b * t, 1, h, w).float(), float(self.scale)).to(x.dtype)
        frames = list(up.reshape(b, t, 1, h * self.scale, w * self.scale).unbind(1))
        fwd = self.forward_net(frames)
        bwd = self.backward_net(frames[::-1])[::-1]
        return torch.stack([f + r for f, r in zip(fwd, bwd, strict=True)], dim=1)
