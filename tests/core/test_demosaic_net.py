"""The joint demosaicing network: shapes, noise conditioning, patterns, bf16, starting as bilinear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_app.core.archs.bilinear_demosaic import BilinearDemosaic
from restore_app.core.archs.demosaic_net import DemosaicNet
from restore_app.core.errors import InputError
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import LoadedModel, parse_manifest
from restore_app.core.train.demosaic import DemosaicTrainConfig, manifest_fields
from tests.helpers import smooth_rgb


def test_shapes_and_bad_input():
    net = DemosaicNet(width=16, blocks=2).eval()
    assert net(torch.rand(3, 2, 32, 48)).shape == (3, 3, 32, 48)
    with pytest.raises(InputError, match="must have 2 channels"):
        net(torch.rand(1, 1, 32, 32))


def test_untrained_network_is_bilinear():
    """The correction paths start at zero: a new network is bilinear demosaicing (to within the
    tiny initial tail)."""
    torch.manual_seed(0)
    net = DemosaicNet(width=16, blocks=2).eval()
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        diff = (net(x) - BilinearDemosaic()(x[:, :1])).abs().max()
    assert diff < 0.02


def test_noise_map_reaches_the_output():
    torch.manual_seed(0)
    net = DemosaicNet(width=16, blocks=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    mosaic = torch.rand(1, 1, 32, 32)
    low = net(torch.cat([mosaic, torch.zeros_like(mosaic)], 1))
    high = net(torch.cat([mosaic, torch.full_like(mosaic, 0.08)], 1))
    assert (low - high).abs().max() > 1e-4


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_every_pattern_and_sigma_estimation_through_the_restorer(pattern):
    cfg = DemosaicTrainConfig(width=16, blocks=1)
    manifest = parse_manifest({**manifest_fields(cfg), "id": "tiny-dm"})
    restorer = Restorer(LoadedModel(manifest, DemosaicNet(width=16, blocks=1)))
    from restore_app.core.degrade import mosaic

    m = mosaic(smooth_rgb(40, 56), pattern)
    out = restorer.restore_image(m, pattern=pattern)  # σ not given: estimated
    assert out.shape == (40, 56, 3) and np.isfinite(out).all()
    given = restorer.restore_image(m, pattern=pattern, sigma=np.full(m.shape, 0.01, np.float32))
    assert given.shape == out.shape
    with pytest.raises(InputError, match="noise map of shape"):
        restorer.restore_image(m, pattern=pattern, sigma=np.zeros((4, 4), np.float32))


def test_bf16_close_to_fp32():
    torch.manual_seed(0)
    net = DemosaicNet(width=32, blocks=2).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    assert (ref - low).abs().max() < 0.02
