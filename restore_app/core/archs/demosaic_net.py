"""Joint demosaicing and denoising network, after Gharbi et al. (SIGGRAPH Asia 2016).

What is kept from the paper: the Bayer mosaic packed 2×2 into four channels at quarter resolution,
the noise level given as an extra input channel, a stack of 3×3 convolutions of ``width`` channels at
quarter resolution whose last layer gives 12 channels unpacked to full resolution, and a
full-resolution stage that sees those features together with the mosaic (a 3×3 then a 1×1
convolution).

What is changed, and why:

* **Residual learning on bilinear demosaicing.** The network predicts the correction to a fixed
  bilinear interpolation instead of the image itself, so it starts from 32 dB rather than from
  nothing and spends its capacity on edges, aliasing and noise.
* **Padded convolutions.** Gharbi's unpadded stack loses 31 pixels a side; padding keeps every
  pixel, and the engine's tile overlap covers the receptive field instead.
* **A noise-level map, not a constant.** The second input channel is the noise standard deviation at
  each pixel: a constant for Gaussian noise, ``sqrt(a·x + b²)`` for sensor (Poisson-Gaussian)
  noise, so one model serves both.
* **Residual blocks.** The quarter-resolution stack is made of residual blocks (conv–ReLU–conv plus
  the identity, the second convolution starting at zero) with a skip over the whole stack, as in
  EDSR: the same depth as Gharbi's plain 15-layer stack trains many times faster, which matters when
  the training budget is a few CPU hours rather than weeks on a GPU.
* **bf16-friendly shapes.** Channel counts are multiples of 16 and there is no normalisation layer,
  so the whole network runs in bf16 autocast (about 2× faster on CPUs with AMX/AVX-512 BF16). Only the
  bilinear guess and the sum with the correction stay in float32, so that bf16 costs no precision
  in the output image itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.archs.bilinear_demosaic import BilinearDemosaic
from restore_app.core.checks import check_tensor


class ResidualBlock(nn.Module):
    """``x + conv(relu(conv(x)))``; the second convolution starts at zero, so the block starts as
    the identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DemosaicNet(nn.Module):
    """``(B, 2, H, W)`` → ``(B, 3, H, W)``; channel 0 is an RGGB mosaic, channel 1 the noise std map.

    H and W must be even. Values are in [0, 1]; the output is not clipped.

    >>> net = DemosaicNet(width=16, blocks=1)
    >>> net(torch.rand(1, 2, 32, 32)).shape
    torch.Size([1, 3, 32, 32])
    """

    def __init__(self, width: int = 64, blocks: int = 7, refine: int = 16) -> None:
        super().__init__()
        self.head = nn.Conv2d(5, width, 3, padding=1)
        self.body = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.tail = nn.Conv2d(width, 12, 3, padding=1)
        # full resolution: 3 unpacked feature channels, the mosaic spread over R/G/B, the bilinear guess
        self.refine = nn.Conv2d(3 + 3 + 3, refine, 3, padding=1)
        self.out = nn.Conv2d(refine, 3, 1)
        self.bilinear = BilinearDemosaic()
        # start as bilinear demosaicing: the correction paths begin (near) zero
        nn.init.normal_(self.tail.weight, std=1e-3)
        nn.init.zeros_(self.tail.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=2)
        mosaic, noise = x[:, :1], x[:, 1:]
        with torch.autocast(device_type=x.device.type, enabled=False):
            # the bilinear guess and the final sum stay in float32: a bf16 image has only 8 bits of
            # mantissa (steps of 1/256 near white), which would cost 0.1 dB on clean input
            base = self.bilinear(mosaic.float())
        packed = F.pixel_unshuffle(mosaic, 2)
        noise_q = F.avg_pool2d(noise, 2)
        f0 = F.relu(self.head(torch.cat([packed, noise_q], dim=1)))
        f = f0
        for block in self.body:
            f = block(f)
        feats = F.pixel_shuffle(self.tail(f + f0), 2)
        spread = mosaic * self.bilinear.mask.repeat(1, x.shape[2] // 2, x.shape[3] // 2)[None].to(x.dtype)
        r = F.relu(self.refine(torch.cat([feats, spread, base], dim=1)))
        return base + (feats + self.out(r)).float()
