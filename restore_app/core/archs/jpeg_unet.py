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

from restore_app.core import int8
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
        return _on_block_grid(x, lambda xp: _correction(self, xp))


def on_whole_blocks(x: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` of ``x`` reflect-padded to whole 8×8 blocks (the JPEG grid; the DWT's three poolings),
    cropped back to ``x``'s size."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
    return fn(xp)[..., :h, :w]


def _on_block_grid(x: torch.Tensor, correction) -> torch.Tensor:
    """``x`` plus ``correction`` of ``x`` reflect-padded to whole 8×8 blocks, cropped back."""
    return on_whole_blocks(x, lambda xp: xp + correction(xp))


def _correction(net: nn.Module, xp: torch.Tensor) -> torch.Tensor:
    """The network's correction to its (padded) input: the layers of :class:`JpegUNet`, shared by
    its int8 form, which holds the same layers."""
    f1 = net.enc1(F.relu(net.head(F.pixel_unshuffle(xp, 2))))
    f2 = net.enc2(F.relu(net.down2(f1)))
    f3 = net.mid(F.relu(net.down3(f2)))
    g2 = net.dec2(F.relu(net.up3(f3)) + f2)
    g1 = net.dec1(F.relu(net.up2(g2)) + f1)
    return F.pixel_shuffle(net.tail(g1), 2)


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


class SubPixelUp(nn.Module):
    """×2 up-sampling by a 1×1 convolution to four times the channels and a pixel shuffle: the same map
    as a 2×2, stride-2 transposed convolution, in the form int8 backends quantise per channel (their
    transposed convolutions take one weight scale for all channels, which cost 1 dB here)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 4 * cout, 1)

    @classmethod
    def from_transpose(cls, t: nn.ConvTranspose2d) -> SubPixelUp:
        """The same map as ``t`` (2×2 kernel, stride 2): output channel ``o`` at sub-pixel ``(a, b)`` is
        the convolution's channel ``4 o + 2 a + b``, as :func:`torch.nn.functional.pixel_shuffle` orders them."""
        cin, cout = t.weight.shape[:2]
        up = cls(cin, cout)
        with torch.no_grad():
            up.conv.weight.copy_(t.weight.permute(1, 2, 3, 0).reshape(4 * cout, cin, 1, 1))
            up.conv.bias.copy_(t.bias.repeat_interleave(4))
        return up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # channels-last like the rest of the graph: int8 adds of mixed layouts take a slow path (20×)
        return F.pixel_shuffle(self.conv(x), 2).contiguous(memory_format=torch.channels_last)


class _Layers(nn.Module):
    """A :class:`JpegUNet`'s layers, up-sampling by :class:`SubPixelUp`; its forward (the correction,
    without padding and the residual) is what is quantised."""

    def __init__(self, net: JpegUNet) -> None:
        super().__init__()
        for name, child in net.named_children():
            setattr(self, name, SubPixelUp.from_transpose(child) if isinstance(child, nn.ConvTranspose2d) else child)

    def forward(self, xp: torch.Tensor) -> torch.Tensor:
        return _correction(self, xp)


class JpegUNetInt8(int8.Int8Network):
    """:class:`JpegUNet` with 8-bit weights and activations (:mod:`restore_app.core.int8`).

    Holds the fake-quantised graph (``qat``) that trains by quantisation-aware training and runs in
    float on any device; in eval mode on the CPU the forward runs the int8 graph converted from it (and
    cached until the weights or the mode change). The last convolution's output, the pixel shuffle of
    it and the residual addition to the image stay fp32; that convolution reads the 8-bit activations
    with 8-bit weights (:class:`~restore_app.core.int8.Int8InputConv2d`). :meth:`load_float_state`
    starts it from a trained :class:`JpegUNet`.

    >>> net = JpegUNetInt8(widths=(16, 16, 16), blocks=(1, 1, 1), channels=1).eval()
    >>> net(torch.rand(1, 1, 30, 41)).shape
    torch.Size([1, 1, 30, 41])
    """

    def __init__(self, widths: tuple[int, int, int] = (48, 96, 128),
                 blocks: tuple[int, int, int] = (1, 2, 3), channels: int = 3) -> None:
        # the last convolution's output stays fp32 (on 8-bit input, with 8-bit weights), and so does the
        # pixel shuffle of it (the correction)
        super().__init__(_Layers(JpegUNet(widths, blocks, channels)), torch.rand(1, channels, 16, 16),
                         keep_float=("tail",), keep_float_calls=(("", torch.pixel_shuffle, 0),),
                         int8_input=("tail",))
        self.widths, self.blocks, self.channels = tuple(widths), tuple(blocks), channels

    def load_float_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take the weights of a trained :class:`JpegUNet` (same widths, blocks and channels); the
        quantisers' ranges start afresh from the next batch seen in training mode."""
        net = JpegUNet(self.widths, self.blocks, self.channels)
        net.load_state_dict(state)
        # the quantised graph holds the same parameters in the same order, some renamed by fusion
        # (``enc1.0.conv2.weight`` is ``enc1.0.conv2.0.weight`` once fused with its addition)
        self.take_float_parameters(_Layers(net).parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=self.channels)
        return _on_block_grid(x, self.graph_for(x))
