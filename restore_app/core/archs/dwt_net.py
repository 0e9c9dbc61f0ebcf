"""Deep Watershed Transform (Bai and Urtasun, CVPR 2017) as one small encoder-decoder for the CPU.

One shared U-Net (four scales, batch-normalised conv pairs) feeds three heads:

* **foreground**: one logit per pixel (the paper took this from a separate semantic network; here the
  same network predicts it);
* **direction** (the paper's Direction Network): a unit vector per pixel pointing away from the
  nearest instance boundary, the normalised gradient of the distance transform;
* **energy** (the Watershed Transform Network): 16 quantised levels of distance to the boundary,
  computed from the decoder features *and* the predicted direction field, as the paper's WTN takes
  the DN's output as its input.

``forward`` returns the heads as one ``(B, 19, H, W)`` map (logit, dx, dy, 16 energy logits) so the
engine can tile and blend it; :func:`restore_app.core.segment.instances_from_maps` turns the
stitched maps into instances (the post-processing is its own function, and the Restorer calls it
through :meth:`DWTNet.postprocess`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core import int8
from restore_app.core.archs.jpeg_unet import SubPixelUp, on_whole_blocks
from restore_app.core.checks import check_tensor

ENERGY_LEVELS = 16


def _pair(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DWTNet(nn.Module):
    """``(B, 3, H, W)`` RGB in [0, 1] → ``(B, 19, H, W)``: foreground logit, direction (2), energy
    logits (16). Sizes need not be multiples of 8 (reflect padding inside).

    >>> DWTNet(widths=(8, 8, 8, 8))(torch.rand(1, 3, 30, 45)).shape
    torch.Size([1, 19, 30, 45])
    """

    def __init__(self, widths: tuple[int, int, int, int] = (24, 48, 96, 128), cut_level: int = 3,
                 min_area: int = 8) -> None:
        super().__init__()
        w0, w1, w2, w3 = widths
        self.cut_level, self.min_area = int(cut_level), int(min_area)
        self.enc0, self.enc1, self.enc2, self.enc3 = _pair(3, w0), _pair(w0, w1), _pair(w1, w2), _pair(w2, w3)
        self.up2, self.dec2 = nn.ConvTranspose2d(w3, w2, 2, stride=2), _pair(2 * w2, w2)
        self.up1, self.dec1 = nn.ConvTranspose2d(w2, w1, 2, stride=2), _pair(2 * w1, w1)
        self.up0, self.dec0 = nn.ConvTranspose2d(w1, w0, 2, stride=2), _pair(2 * w0, w0)
        self.fg = nn.Conv2d(w0, 1, 1)
        self.direction = nn.Conv2d(w0, 2, 1)
        self.energy = nn.Sequential(nn.Conv2d(w0 + 2, w0, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(w0, w0, 3, padding=1), nn.ReLU(inplace=True),
                                    nn.Conv2d(w0, ENERGY_LEVELS, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=3)
        return on_whole_blocks(x, lambda xp: _maps(self, xp))

    @staticmethod
    def transpose_maps(maps: torch.Tensor) -> torch.Tensor:
        """Maps predicted on a transposed image, transposed back: the direction's two components
        trade places too (the self-ensemble's inverse transform)."""
        # a copy in the maps' own layout with x and y swapped, then the transposition as a view (a
        # channels-last cat of the transposed slices took five times as long)
        maps = maps.clone(memory_format=torch.preserve_format)
        x = maps[:, 1].clone()
        maps[:, 1].copy_(maps[:, 2])
        maps[:, 2].copy_(x)
        return maps.transpose(-2, -1)

    @staticmethod
    def flip_maps(maps: torch.Tensor, dims: list[int]) -> torch.Tensor:
        """Maps predicted on a mirrored image, mirrored back: a left-right mirror (dim -1) negates
        the direction's x component, an up-down one (dim -2) its y component."""
        maps = maps.flip(dims)  # a copy, so the direction's components can be negated in place (a
        # broadcast sign over all 19 channels of a channels-last map took five times as long)
        if -1 in dims:
            maps[:, 1].neg_()
        if -2 in dims:
            maps[:, 2].neg_()
        return maps

    def postprocess(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, 19, H, W)`` maps → ``(B, 1, H, W)`` int64 instance labels (0 = background)."""
        from restore_app.core.segment import instances_from_maps

        labels = [instances_from_maps(m.float().cpu().numpy(), self.cut_level, self.min_area) for m in maps]
        return torch.from_numpy(np.stack(labels)[:, None]).to(torch.int64)


def _maps(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The heads' maps of a padded input: the layers of :class:`DWTNet`, shared by its int8 form."""
    e0 = net.enc0(x)
    e1 = net.enc1(F.max_pool2d(e0, 2))
    e2 = net.enc2(F.max_pool2d(e1, 2))
    e3 = net.enc3(F.max_pool2d(e2, 2))
    d2 = net.dec2(torch.cat([net.up2(e3), e2], dim=1))
    d1 = net.dec1(torch.cat([net.up1(d2), e1], dim=1))
    d0 = net.dec0(torch.cat([net.up0(d1), e0], dim=1))
    direction = F.normalize(net.direction(d0), dim=1, eps=1e-6)
    energy = net.energy(torch.cat([d0, direction], dim=1))
    return torch.cat([net.fg(d0), direction, energy], dim=1)


def _folded(pair: nn.Sequential) -> nn.Sequential:
    """A conv pair with each batch norm (in its running statistics) folded into its convolution."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    conv1, bn1, _, conv2, bn2, _ = pair
    return nn.Sequential(fuse_conv_bn_eval(conv1.eval(), bn1.eval()), nn.ReLU(),
                         fuse_conv_bn_eval(conv2.eval(), bn2.eval()), nn.ReLU())


class _Layers(nn.Module):
    """A :class:`DWTNet`'s layers as the int8 graph takes them: batch norms folded into the
    convolutions, up-sampling by :class:`~restore_app.core.archs.jpeg_unet.SubPixelUp` (per-channel
    weight scales); its forward (the maps of a padded input) is what is quantised."""

    def __init__(self, net: DWTNet) -> None:
        super().__init__()
        for name, child in net.named_children():
            if name.startswith(("enc", "dec")):
                child = _folded(child)
            elif isinstance(child, nn.ConvTranspose2d):
                child = SubPixelUp.from_transpose(child)
            setattr(self, name, child)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _maps(self, x)


class DWTNetInt8(int8.Int8Network):
    """:class:`DWTNet` with 8-bit weights and activations (:mod:`restore_app.core.int8`).

    Holds the fake-quantised graph (``qat``), built from the float network with its batch norms
    folded, which trains by quantisation-aware training and runs in float on any device; in eval mode
    on the CPU the forward runs the int8 graph converted from it (cached until the weights or the
    mode change). The three heads' last convolutions (foreground and energy logits, direction) and
    the maps they give stay fp32. :meth:`load_float_state` starts it from a trained :class:`DWTNet`.

    >>> net = DWTNetInt8(widths=(8, 8, 8, 8)).eval()
    >>> net(torch.rand(1, 3, 30, 45)).shape
    torch.Size([1, 19, 30, 45])
    """

    transpose_maps = staticmethod(DWTNet.transpose_maps)
    flip_maps = staticmethod(DWTNet.flip_maps)
    postprocess = DWTNet.postprocess

    def __init__(self, widths: tuple[int, int, int, int] = (24, 48, 96, 128), cut_level: int = 3,
                 min_area: int = 8) -> None:
        # the last cat (index 4) joins the float heads' outputs: it stays float too
        super().__init__(_Layers(DWTNet(widths).eval()), torch.rand(1, 3, 32, 32),
                         keep_float=("fg", "direction", "energy.4"), keep_float_calls=(("", torch.cat, 4),))
        self.widths, self.cut_level, self.min_area = tuple(widths), int(cut_level), int(min_area)

    def load_float_state(self, state: dict[str, torch.Tensor]) -> None:
        """Take the weights of a trained :class:`DWTNet` (same widths), batch norms folded; the
        quantisers' ranges start afresh from the next batch seen in training mode."""
        net = DWTNet(self.widths)
        net.load_state_dict(state)
        # the quantised graph holds the same parameters under the same names, in the order of the calls
        source = dict(_Layers(net.eval()).named_parameters())
        self.take_float_parameters(source[name] for name, _ in self.qat.named_parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "input", ndim=4, channels=3)
        return on_whole_blocks(x, self.graph_for(x))
