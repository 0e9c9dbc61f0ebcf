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

from restore_app.core import int8
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
        return _demosaic(self, x, lambda quarter: _blocks(F.relu(self.head(quarter)), self.body, self.tail))


def _blocks(f0: torch.Tensor, body: nn.ModuleList, tail: nn.Module) -> torch.Tensor:
    """The residual blocks on the first layer's output ``f0``, the long skip and the last
    quarter-resolution layer (12 channels, unpacked to full resolution by the caller)."""
    f = f0
    for block in body:
        f = block(f)
    return tail(f + f0)


def _demosaic(net: nn.Module, x: torch.Tensor, stack) -> torch.Tensor:
    """The network around its quarter-resolution ``stack``: packing, the bilinear guess and the
    full-resolution stage (shared by :class:`DemosaicNet` and its int8 form)."""
    mosaic, noise = x[:, :1], x[:, 1:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        # the bilinear guess and the final sum stay in float32: a bf16 image has only 8 bits of
        # mantissa (steps of 1/256 near white), which would cost 0.1 dB on clean input
        base = net.bilinear(mosaic.float())
    quarter = torch.cat([F.pixel_unshuffle(mosaic, 2), F.avg_pool2d(noise, 2)], dim=1)
    feats = F.pixel_shuffle(stack(quarter), 2)
    spread = mosaic * net.bilinear.mask.repeat(1, x.shape[2] // 2, x.shape[3] // 2)[None].to(x.dtype)
    r = F.relu(net.refine(torch.cat([feats.to(x.dtype), spread, base.to(x.dtype)], dim=1)))
    return base + (feats + net.out(r)).float()


class _Quarter(nn.Module):
    """A :class:`DemosaicNet`'s quarter-resolution layers; its forward is what is quantised."""

    def __init__(self, net: DemosaicNet) -> None:
        super().__init__()
        # the first convolution and its ReLU, kept in float by the int8 form: it reads the mosaic at full
        # precision (an 8-bit quantiser over a noisy mosaic's range would round more coarsely than the
        # image's own steps), and the ReLU makes its 8-bit output unsigned
        self.head = nn.Sequential(net.head, nn.ReLU())
        self.body, self.tail = net.body, net.tail

    def forward(self, quarter: torch.Tensor) -> torch.Tensor:
        return _blocks(self.head(quarter), self.body, self.tail)


class DemosaicNetInt8(int8.Int8Network):
    """:class:`DemosaicNet` with its quarter-resolution stack in 8-bit weights and activations
    (:mod:`restore_app.core.int8`).

    The first convolution (on the mosaic, in float) and the full-resolution stage (bilinear guess,
    refinement, the sum) stay fp32; the last quarter-resolution convolution reads the 8-bit
    activations with 8-bit weights and gives fp32 (:class:`~restore_app.core.int8.Int8InputConv2d`).
    In eval mode on the CPU the stack runs as the converted int8 graph; elsewhere, and in training,
    as the fake-quantised one in float. :meth:`load_float_state` starts it from a trained
    :class:`DemosaicNet`.

    >>> net = DemosaicNetInt8(width=16, blocks=1).eval()
    >>> net(torch.rand(1, 2, 32, 32)).shape
    torch.Size([1, 3, 32, 32])
    """

    def __init__(self, width: int = 64, blocks: int = 7, refine: int = 16) -> None:
        net = DemosaicNet(width, blocks, refine)
        super().__init__(_Quarter(net), torch.rand(1, 5, 16, 16), keep_float=("head", "tail"),
                         int8_input=("tail",))
        self.refine, self.out, self.bilinear = net.refine, net.out, net.bilinear
        self.width, self.blocks, self.refine_width = width, blocks, refine

    def load_float_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take the weights of a trained :class:`DemosaicNet` (same shape); the quantisers' ranges
        start afresh from the next batch seen in training mode."""
        net = DemosaicNet(self.width, self.blocks, self.refine_width)
        net.load_state_dict(state)
        self.take_float_parameters(_Quarter(net).parameters())
        self.refine.load_state_dict(net.refine.state_dict())
        self.out.load_state_dict(net.out.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=2)
        graph = self.graph_for(x)

        def stack(quarter: torch.Tensor) -> torch.Tensor:
            # channels-last like the int8 graph's own tensors: int8 additions of mixed layouts take a
            # slow path (the long skip's took 71 of 370 ms on a 1024² mosaic)
            return graph(quarter.float().contiguous(memory_format=torch.channels_last))

        return _demosaic(self, x, stack)
