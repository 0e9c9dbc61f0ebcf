"""Blind JPEG artifact removal: a small U-Net aligned with the JPEG block grid.

JPEG damage lives on the 8×8 block grid (blocking, ringing inside blocks, chroma bleeding over 16×16
macroblocks at 4:2:0), so the network works at 1/2, 1/4 and 1/8 resolution: at the coarsest level one
feature vector is one 8×8 block, and a 3×3 convolution there sees each block with its neighbours.
Deep, narrow processing at full resolution (DnCNN-3: 20 layers × 64 channels) costs about six times
more per pixel for a smaller receptive field.

* Input and output ``(B, C, H, W)`` in [0, 1], ``C = channels``: 3 for the blind colour model
  (grey images go in with R = G = B; it is trained on grey JPEGs too), 1 for a grey specialist made
  from it by :func:`grey_state`. H and W need not be multiples of 8: the input is reflect-padded to
  them and the output cropped back.
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
    """``(B, C, H, W)`` → ``(B, C, H, W)`` with ``C = channels`` (3 or 1).

    >>> net = JpegUNet(widths=(16, 16, 16), blocks=(1, 1, 1))
    >>> net(torch.rand(1, 3, 30, 41)).shape
    torch.Size([1, 3, 30, 41])
    """

    def __init__(self, widths: tuple[int, int, int] = (48, 96, 128),
                 blocks: tuple[int, int, int] = (1, 2, 3), channels: int = 3) -> None:
        super().__init__()
        w1, w2, w3 = widths
        b1, b2, b3 = blocks
        self.widths, self.blocks, self.channels = tuple(widths), tuple(blocks), channels
        self.head = nn.Conv2d(4 * channels, w1, 3, padding=1)   # 1/2 resolution (pixel-unshuffled)
        self.enc1 = _stage(w1, b1)
        self.down2 = nn.Conv2d(w1, w2, 2, stride=2)                 # 1/4
        self.enc2 = _stage(w2, b2)
        self.down3 = nn.Conv2d(w2, w3, 2, stride=2)                 # 1/8: one vector per JPEG block
        self.mid = _stage(w3, b3)
        self.up3 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _stage(w2, b2)
        self.up2 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _stage(w1, b1)
        self.tail = nn.Conv2d(w1, 4 * channels, 3, padding=1)
        nn.init.normal_(self.tail.weight, std=1e-3)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=self.channels)
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


def grey_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of a colour :class:`JpegUNet` as a one-channel network for grey images.

    Pixel-unshuffling orders channels colour-major (``c * 4 + k``), so a grey input, R = G = B, meets
    the sum of the head's three colour slices; the tail's three colour outputs (equal for a model
    fine-tuned on grey alone, and close for the blind one) are averaged. On grey input the result
    equals the colour network's mean output over R, G and B.
    """
    out = dict(state)
    head = state["head.weight"]
    out["head.weight"] = head.reshape(head.shape[0], 3, 4, *head.shape[2:]).sum(1)
    tail_w, tail_b = state["tail.weight"], state["tail.bias"]
    out["tail.weight"] = tail_w.reshape(3, 4, *tail_w.shape[1:]).mean(0)
    out["tail.bias"] = tail_b.reshape(3, 4).mean(0)
    return out


def colour_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights of a one-channel :class:`JpegUNet` as a three-channel network (inverse of :func:`grey_state`).

    The head's one slice is split in three equal parts and the tail's output is repeated for R, G and
    B, so on grey input (R = G = B) the colour network gives the grey network's output in every channel
    and ``grey_state(colour_state(s))`` is ``s``. A grey specialist's shipped weights can so be trained
    further by ``restore train jpeg --grey-prob 1 --init <model>/weights.safetensors``.
    """
    out = dict(state)
    out["head.weight"] = (state["head.weight"] / 3).repeat(1, 3, 1, 1)
    out["tail.weight"] = state["tail.weight"].repeat(3, 1, 1, 1)
    out["tail.bias"] = state["tail.bias"].repeat(3)
    return out
