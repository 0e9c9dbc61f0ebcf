"""A bidirectional recurrent super-resolution network that improves on BRCN where it is weak.

What changes from BRCN, and why:

* **Recurrence at low resolution.** BRCN runs every layer on bicubic-upsampled frames, 16× the
  pixels at ×4; here features are propagated forwards and backwards in time at the input
  resolution and only a pixel-shuffle tail works at the output resolution, so the network can be
  much wider and deeper for less time.
* **Residual learning on bicubic.** The network predicts the difference to the bicubic upsampling,
  which it does not have to learn again.
* **Features, not images, flow through time**, and each step sees its neighbour frames directly
  (the current frame with the previous and next ones stacked), with residual blocks that give a
  receptive field wide enough to follow small motion without explicit optical flow.
* **Colour.** It works on RGB (three channels), not on luminance with bicubic chroma.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.archs.demosaic_net import ResidualBlock
from restore_app.core.checks import check_tensor
from restore_app.core.resize import imresize


class _Propagate(nn.Module):
    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()
        self.fuse = nn.Conv2d(width * 2, width, 3, padding=1)
        self.body = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))

    def forward(self, feat: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return self.body(F.relu(self.fuse(torch.cat([feat, state], dim=1))))


class RecurrentVSR(nn.Module):
    """``(B, T, C, h, w)`` low-resolution frames → ``(B, T, C, s·h, s·w)`` (C = 3, or 1).

    >>> net = RecurrentVSR(width=16, blocks=1, scale=2)
    >>> net(torch.rand(1, 4, 3, 8, 8)).shape
    torch.Size([1, 4, 3, 16, 16])
    """

    def __init__(self, channels: int = 3, width: int = 48, blocks: int = 4, scale: int = 4) -> None:
        super().__init__()
        self.scale, self.channels, self.width = int(scale), int(channels), int(width)
        self.embed = nn.Conv2d(3 * channels, width, 3, padding=1)  # frame with its two neighbours
        self.backward_prop = _Propagate(width, blocks)
        self.forward_prop = _Propagate(width, blocks)
        self.merge = nn.Conv2d(2 * width, width, 1)
        self.up = nn.Sequential(
            nn.Conv2d(width, width * 4, 3, padding=1), nn.PixelShuffle(2), nn.ReLU(),
            *((nn.Conv2d(width, width * 4, 3, padding=1), nn.PixelShuffle(2), nn.ReLU()) if scale == 4 else ()),
        )
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.normal_(self.tail.weight, std=1e-3)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=5)
        b, t, c, h, w = x.shape
        if c != self.channels:
            raise ValueError(f"this model takes {self.channels} channels; got {tuple(x.shape)}")
        if self.scale not in (2, 4):
            raise ValueError("scale must be 2 or 4")
        padded = torch.cat([x[:, :1], x, x[:, -1:]], dim=1)
        triples = torch.cat([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], dim=2)  # (b, t, 3c, h, w)
        feats = F.relu(self.embed(triples.reshape(b * t, 3 * c, h, w))).reshape(b, t, self.width, h, w)
        state = feats.new_zeros(b, self.width, h, w)
        backward = [None] * t
        for i in range(t - 1, -1, -1):
            state = self.backward_prop(feats[:, i], state)
            backward[i] = state
        state = feats.new_zeros(b, self.width, h, w)
        # frame by frame into one output tensor: no clip-sized bicubic or residual stacks (memory)
        out = None
        for i in range(t):
            state = self.forward_prop(feats[:, i], state)
            merged = F.relu(self.merge(torch.cat([state, backward[i]], dim=1)))
            residual = self.tail(self.up(merged))
            frame = imresize(x[:, i].float(), float(self.scale)).to(x.dtype) + residual
            if out is None:
                out = frame.new_empty(b, t, *frame.shape[1:])
            out[:, i] = frame
            backward[i] = None
        return out
