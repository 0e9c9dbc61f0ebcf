"""Degradations: correct sampling, the noise statistics they claim, OpenCV JPEG, MATLAB bicubic."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from restore_app.core import degrade
from restore_app.core.cfa import PATTERNS, channel_map
from restore_app.core.errors import InputError
from restore_app.core.io import to_float
from restore_app.core.metrics import psnr
from restore_app.core.resize import imresize


@pytest.mark.parametrize("pattern", PATTERNS)
def test_mosaic_samples_the_pattern(rng, pattern):
    rgb = rng.random((6, 8, 3)).astype(np.float32)
    m = degrade.mosaic(rgb, pattern)
    cmap = channel_map(pattern)
    for y in range(6):
        for x in range(8):
            assert m[y, x] == rgb[y, x, cmap[y % 2, x % 2]]
    assert degrade.mosaic((rgb * 255).astype(np.uint8), pattern).dtype == np.uint8


def test_mosaic_bad_input():
    with pytest.raises(InputError, match="pattern must be one of"):
        degrade.mosaic(np.zeros((4, 4, 3), np.float32), "RGBG")
    with pytest.raises(InputError, match="needs an"):
        degrade.mosaic(np.zeros((4, 4), np.float32))


def test_gaussian_noise_is_seeded_and_has_its_sigma():
    x = np.full((256, 256), 0.5, np.float32)
    a = degrade.add_gaussian_noise(x, 0.1, seed=7)
    np.testing.assert_array_equal(a, degrade.add_gaussian_noise(x, 0.1, seed=7))
    assert not np.array_equal(a, degrade.add_gaussian_noise(x, 0.1, seed=8))
    assert abs((a - x).std() - 0.1) < 0.002 and abs((a - x).mean()) < 0.002
    assert degrade.add_gaussian_noise(x, 0.3, seed=1, clip=True).max() <= 1.0
    with pytest.raises(InputError, match="sigma"):
        degrade.add_gaussian_noise(x, -0.1)


@pytest.mark.parametrize("level", [0.05, 0.3, 0.8])
def test_poisson_gaussian_variance(level):
    shot, read = 0.01, 0.02
    x = np.full((400, 400), level, np.float32)
    y = degrade.add_poisson_gaussian_noise(x, shot, read, seed=3)
    expected = shot * level + read ** 2
    assert abs(y.var() / expected - 1) < 0.05
    assert abs(y.mean() - level) < 0.003


def test_jpeg_matches_opencv_and_pil(coffee):
    for q in (10, 50, 90):
        ours = degrade.jpeg_compress(coffee, q)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(coffee, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
        direct = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(ours, direct)
        bio = io.BytesIO()
        Image.fromarray(coffee).save(bio, format="JPEG", quality=q)  # libjpeg-turbo, 4:2:0
        np.testing.assert_array_equal(ours, np.asarray(Image.open(bio)))


def test_jpeg_quality_and_types(coffee):
    grey = coffee[..., 0].copy()
    assert degrade.jpeg_compress(grey, 20).shape == grey.shape
    f = degrade.jpeg_compress(to_float(coffee), 30)
    assert f.dtype == np.float32 and f.max() <= 1.0
    high, low = degrade.jpeg_compress(coffee, 90), degrade.jpeg_compress(coffee, 10)
    assert psnr(coffee, high, 255) > psnr(coffee, low, 255) + 6
    with pytest.raises(InputError, match="quality"):
        degrade.jpeg_compress(coffee, 0)


@pytest.mark.parametrize("scale", [0.5, 0.25, 2.0, 4.0])
def test_imresize_matches_pil_bicubic_away_from_borders(coffee, scale):
    """MATLAB's imresize and PIL's BICUBIC agree but for border handling (symmetric vs clamped)."""
    x = to_float(coffee[..., 1])
    y = imresize(x, scale)
    assert y.shape == (int(np.ceil(400 * scale)), int(np.ceil(600 * scale)))
    ref = np.asarray(Image.fromarray(x, "F").resize((y.shape[1], y.shape[0]), Image.BICUBIC))
    m = int(4 * max(scale, 1 / scale))
    np.testing.assert_allclose(y[m:-m, m:-m], ref[m:-m, m:-m], atol=1e-5)


def test_imresize_numpy_and_torch_agree_and_preserve_constants(coffee):
    x = to_float(coffee)
    t = torch.from_numpy(x).permute(2, 0, 1)[None]
    for s in (0.25, 3.0):
        np.testing.assert_allclose(imresize(t, s)[0].permute(1, 2, 0).numpy(), imresize(x, s), atol=1e-5)
    const = np.full((31, 17), 0.37, np.float32)
    np.testing.assert_allclose(imresize(const, 0.25), 0.37, atol=1e-6)
    np.testing.assert_allclose(imresize(const, 3), 0.37, atol=1e-6)


def test_imresize_symmetric_border():
    """Upscaling a ramp keeps it linear inside; at the border MATLAB mirrors, so the edge flattens."""
    ramp = np.tile(np.arange(8, dtype=np.float32), (4, 1))
    up = imresize(ramp, 2)
    inner = np.diff(up[0, 6:-6])
    np.testing.assert_allclose(inner, 0.5, atol=1e-5)
    assert up[0, 0] > -0.25  # mirrored, not extrapolated


def test_downsample_blur_and_upsample(coffee):
    x = to_float(coffee)
    lr = degrade.downsample(x, 4)
    assert lr.shape == (100, 150, 3)
    lr_blur = degrade.downsample(x, 4, blur_sigma=1.5)
    assert lr_blur.std() < lr.std()
    assert degrade.upsample(lr, 4).shape == x.shape
    with pytest.raises(InputError, match="factor"):
        degrade.downsample(x, 0)
