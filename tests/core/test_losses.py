"""Zhao et al.'s Mix loss against a direct convolution implementation, and its behaviour."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from restore_app.core.errors import InputError
from restore_app.core.losses import ZHAO_SIGMAS, MixLoss, l1_loss, mix_loss


def _reference_mix(x, y, alpha=0.84):
    """Straight from the paper: Gaussian windows by convolution, MS-SSIM = l_M · Π cs_j."""
    def blur(t, s):
        r = math.ceil(3 * s)
        g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / s) ** 2)
        g = (g / g.sum()).to(t.dtype)
        c = t.shape[1]
        t = F.pad(t, (r, r, r, r), mode="reflect")
        t = F.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
        return F.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    cs = 1
    for s in ZHAO_SIGMAS:
        mx, my = blur(x, s), blur(y, s)
        vx, vy = blur(x * x, s) - mx ** 2, blur(y * y, s) - my ** 2
        cov = blur(x * y, s) - mx * my
        cs = cs * (2 * cov + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx ** 2 + my ** 2 + c1)
    return (alpha * (1 - lum * cs) + (1 - alpha) * blur((x - y).abs(), ZHAO_SIGMAS[-1])).mean()


def test_mix_matches_reference_and_is_differentiable():
    torch.manual_seed(0)
    y = torch.rand(2, 3, 40, 52, dtype=torch.float64)
    x = (y + 0.05 * torch.randn_like(y)).requires_grad_(True)
    ours = mix_loss(x, y)
    assert ours.dtype == torch.float32  # computed in float32 whatever the input
    torch.testing.assert_close(ours, _reference_mix(x, y).float(), rtol=1e-5, atol=1e-6)
    ours.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert MixLoss()(x.detach(), y) == pytest.approx(float(ours.detach()))


def test_mix_orders_degradations():
    torch.manual_seed(1)
    y = torch.rand(1, 3, 64, 64)
    assert float(mix_loss(y, y)) == pytest.approx(0.0, abs=1e-6)
    small = mix_loss(y + 0.01 * torch.randn_like(y), y)
    large = mix_loss(y + 0.1 * torch.randn_like(y), y)
    assert 0 < small < large
    assert float(l1_loss(y + 0.1, y)) == pytest.approx(0.1, abs=1e-6)


def test_mix_rejects_tiny_patches():
    with pytest.raises(InputError, match="larger than 24 pixels"):
        mix_loss(torch.rand(1, 3, 20, 20), torch.rand(1, 3, 20, 20))
