"""Noise estimation on real images with synthetic noise of known σ, and sensor noise maps."""

from __future__ import annotations

import numpy as np
import pytest

from restore_app.core.degrade import add_gaussian_noise, add_poisson_gaussian_noise, mosaic
from restore_app.core.errors import InputError
from restore_app.core.io import to_float
from restore_app.core.noise import bayer_block_mean, estimate_sigma, sensor_noise_map


@pytest.mark.parametrize("sigma", [5, 10, 20])
def test_estimate_sigma_on_mosaics(coffee, astronaut, sigma):
    for i, img in enumerate((coffee, astronaut)):
        m = mosaic(to_float(img), "RGGB")
        est = estimate_sigma(add_gaussian_noise(m, sigma / 255, seed=i), cfa=True) * 255
        assert abs(est - sigma) < 0.15 * sigma + 1.0, (i, est)


def test_estimate_sigma_on_images_and_clean_input(coffee):
    x = to_float(coffee)
    est = estimate_sigma(add_gaussian_noise(x, 12 / 255, seed=3)) * 255
    assert abs(est - 12) < 2.5
    assert estimate_sigma(x) * 255 < 3  # a clean photo reads as nearly noise-free
    assert estimate_sigma(x) < estimate_sigma(add_gaussian_noise(x, 4 / 255, seed=1))
    with pytest.raises(InputError, match="too small"):
        estimate_sigma(np.zeros((6, 6)), cfa=True)


def test_sensor_noise_map_matches_the_noise():
    clean = np.tile(np.linspace(0.05, 0.95, 64, dtype=np.float32), (2048, 1))
    shot, read = 0.004, 0.01
    noisy = add_poisson_gaussian_noise(clean, shot, read, seed=0)
    predicted = sensor_noise_map(noisy, shot, read)
    assert predicted.shape == clean.shape
    # per column (constant signal), the predicted σ matches the measured one within 10 %
    measured = (noisy - clean).std(axis=0)
    np.testing.assert_allclose(predicted.mean(axis=0), measured, rtol=0.1)


def test_bayer_block_mean_odd_sizes():
    m = np.arange(15, dtype=np.float32).reshape(3, 5)
    b = bayer_block_mean(m)
    assert b.shape == (3, 5)
    assert b[0, 0] == b[1, 1] == np.mean([0, 1, 5, 6])
