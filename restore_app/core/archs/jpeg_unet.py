"""Blind JPEG artifact removal: a small U-Net aligned with the JPEG block grid.

JPEG damage lives on the 8×8 block grid (blocking, ringing inside blocks, chroma bleeding over 16×16
macroblocks at 4:2:0), so the network works at 1/2, 1/4 and 1/8 resolution: at the coarsest level one
feature vector is one 8×8 block, and a 3×3 convolution there sees each block with its neighbours.
Deep, narrow processing at full resolution (DnCNN-3: 20 layers × 64 channels) costs about six times
more per pixel for a smaller receptive field.

* Input and output ``(B, 3, H, W)`` in [0, 1]; grey images go in with R = G = B (one model serves
  both; it is trained on grey JPEGs too). H and W need not be multiples of 8: the input is
  reflect-padded to them and the output cropped back.
* Residual learning: the network predicts the correction to its input.
* No normalisation layers; residual blocks whose second convolution starts at zero; channel counts
  that are multiples of 16 (bf16-friendly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.archs.demosaic_net import ResidualBlock
from restore_app.core.checks import check_tensor


def _stage(width: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))


class JpegUNet(nn.Module):
    """``(B, 3, H, W)`` → ``(B, 3, H, W)``.

    >>> net = JpegUNet(widths=(16, 16, 16), blocks=(1, 1, 1))
    >>> net(torch.rand(1, 3, 30, 41)).shape
    torch.Size([1, 3, 30, 41])
    """

    def __init__(self, widths: tuple[int, int, int] = (48, 96, 128),
                 blocks: tuple[int, int, int] = (1, 2, 3)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        b1, b2, b3 = blocks
        self.head = nn.Conv2d(12, w1, 3, padding=1)               # 1/2 resolution (pixel-unshuffled)
        self.enc1 = _stage(w1, b1)
        self.down2 = nn.Conv2d(w1, w2, 2, stride=2)                 # 1/4
        self.enc2 = _stage(w2, b2)
        self.down3 = nn.Conv2d(w2, w3, 2, stride=2)                 # 1/8: one vector per JPEG block
        self.mid = _stage(w3, b3)
        self.up3 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _stage(w2, b2)
        self.up2 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _stage(w1, b1)
        self.tail = nn.Conv2d(w1, 12, 3, padding=1)
        nn.init.normal_(self.tail.weight, std=1e-3)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=3)
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        f1 = self.enc1(F.relu(self.head(F.pixel_unshuffle(xp, 2))))
        f2 = self.enc2(F.relu(self.down2(f1)))
        f3 = self.mid(F.relu(self.down3(f2)))
        g2 = self.dec2(F.relu(self.up3(f3)) + f2)
        g1 = self.dec1(F.relu(self.up2(g2)) + f1)
        out = xp + F.pixel_shuffle(self.tail(g1), 2)
        return out[..., :h, :w]
