"""Camera RAW: DNGs written here with tifffile are read by LibRaw with their metadata and developed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_app.core.archs.bilinear_demosaic import BilinearDemosaic
from restore_app.core.cfa import PATTERNS
from restore_app.core.color import srgb_gamma, srgb_gamma_slope
from restore_app.core.degrade import add_gaussian_noise, add_poisson_gaussian_noise, mosaic
from restore_app.core.errors import InputError
from restore_app.core.io import read_image, read_raw, to_float, write_image
from restore_app.core.pipeline import Restorer, develop_raw, process_file
from restore_app.core.registry import LoadedModel, parse_manifest
from tests.helpers import smooth_rgb, write_dng

BLACK, WHITE = 256, 4095


def _raw_counts(linear_rgb: np.ndarray, pattern: str, neutral=(1.0, 1.0, 1.0)) -> np.ndarray:
    """What a camera whose space is linear sRGB records: channel × neutral, offset by black."""
    cam = linear_rgb * np.asarray(neutral, np.float32)
    return np.rint(BLACK + mosaic(cam, pattern) * (WHITE - BLACK)).astype(np.uint16)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_dng_mosaic_and_metadata(tmp_path, pattern):
    lin = smooth_rgb(64, 96)
    counts = _raw_counts(lin, pattern, neutral=(0.5, 1.0, 0.8))
    raw = read_raw(write_dng(tmp_path / "a.dng", counts, pattern, BLACK, WHITE, neutral=(0.5, 1.0, 0.8)))
    assert raw.pattern == pattern
    np.testing.assert_array_equal(raw.mosaic, counts)
    np.testing.assert_array_equal(raw.black_level, np.full((2, 2), BLACK))
    assert raw.white_level == WHITE
    np.testing.assert_allclose(raw.wb_multipliers, (2.0, 1.0, 1.25), rtol=1e-3)
    np.testing.assert_allclose(raw.cam_to_srgb, np.eye(3), atol=2e-3)
    norm = raw.normalized()
    np.testing.assert_allclose(norm, (counts.astype(np.float32) - BLACK) / (WHITE - BLACK), atol=1e-6)


@pytest.mark.parametrize(("pattern", "model"), [("RGGB", "bilinear-demosaic"), ("GBRG", "bilinear-demosaic"),
                                               ("GRBG", "restore-dm"), ("BGGR", "restore-dm"),
                                               ("GBRG", "restore-dm-int8")])
def test_raw_end_to_end_colours_come_back(tmp_path, pattern, model):
    lin = smooth_rgb(96, 128, seed=3)
    neutral = (0.6, 1.0, 0.75)
    dng = write_dng(tmp_path / "scene.dng", _raw_counts(lin, pattern, neutral), pattern, BLACK, WHITE,
                    neutral=neutral)
    restorer = Restorer.from_id(model)
    out = process_file(dng, tmp_path / "scene.tif", restorer)
    developed = read_image(out)
    assert developed.dtype == np.uint16 and developed.shape == (96, 128, 3)
    expected = srgb_gamma(lin)
    got = to_float(developed)
    inner = (slice(4, -4), slice(4, -4))
    assert np.abs(got[inner] - expected[inner]).mean() < 0.01
    # white balance and colour matrix bring each channel's mean back
    np.testing.assert_allclose(got[inner].mean(axis=(0, 1)), expected[inner].mean(axis=(0, 1)), atol=0.01)
    # and PNG/JPEG on request
    assert read_image(process_file(dng, tmp_path / "scene.png", restorer)).dtype == np.uint16
    assert read_image(process_file(dng, tmp_path / "scene.jpg", restorer)).dtype == np.uint8


def test_noisy_raw_is_cleaner_with_the_neural_model(tmp_path):
    lin = smooth_rgb(96, 128, seed=7)
    shot, offset = 2e-3, 1e-5
    clean = (_raw_counts(lin, "RGGB").astype(np.float32) - BLACK) / (WHITE - BLACK)
    noisy = np.clip(add_poisson_gaussian_noise(clean, shot, np.sqrt(offset), seed=2), 0, 1)
    counts = np.rint(BLACK + noisy * (WHITE - BLACK)).astype(np.uint16)
    dng = write_dng(tmp_path / "noisy.dng", counts, "RGGB", BLACK, WHITE, noise_profile=(shot, offset))
    expected = srgb_gamma(lin)[8:-8, 8:-8]
    errors = {}
    for model in ("bilinear-demosaic", "restore-dm"):
        out = process_file(dng, tmp_path / f"{model}.tif", Restorer.from_id(model))
        errors[model] = np.abs(to_float(read_image(out))[8:-8, 8:-8] - expected).mean()
    assert errors["restore-dm"] < 0.7 * errors["bilinear-demosaic"]


def test_raw_requires_a_demosaicing_model(tmp_path):
    dng = write_dng(tmp_path / "a.dng", _raw_counts(smooth_rgb(32, 32), "RGGB"))
    with pytest.raises(InputError, match="need a demosaicing model"):
        process_file(dng, tmp_path / "a.png", Restorer.from_id("jpeg-identity"))


def test_not_a_raw_file(tmp_path, coffee):
    fake = tmp_path / "photo.dng"
    fake.write_bytes(write_image(tmp_path / "x.png", coffee).read_bytes())
    with pytest.raises(InputError, match="photo.dng: cannot read as camera RAW"):
        read_raw(fake)
    (tmp_path / "empty.nef").write_bytes(b"")
    with pytest.raises(InputError, match="empty.nef: file is empty"):
        read_raw(tmp_path / "empty.nef")
    with pytest.raises(InputError, match="no such file"):
        read_raw(tmp_path / "missing.cr2")


def test_truncated_dng(tmp_path):
    dng = write_dng(tmp_path / "t.dng", _raw_counts(smooth_rgb(64, 64), "RGGB"))
    data = dng.read_bytes()
    dng.write_bytes(data[:200])
    with pytest.raises(InputError, match="t.dng"):
        read_raw(dng)


class _NoiseRecorder(torch.nn.Module):
    """Bilinear demosaicing that keeps the noise map it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.bilinear = BilinearDemosaic()
        self.seen: list[np.ndarray] = []

    def forward(self, x):
        self.seen.append(x[0, 1].numpy().copy())
        return self.bilinear(x[:, :1])


def _recording_restorer():
    manifest = parse_manifest({"id": "recorder", "task": "demosaic", "name": "r", "architecture": "identity",
                               "input": "cfa", "conditioning": ["sigma"], "align": 2, "tileable": False,
                               "license": "MIT", "training_data": "none"})
    module = _NoiseRecorder()
    return Restorer(LoadedModel(manifest, module)), module


def test_noise_profile_drives_the_noise_map(tmp_path):
    shot, offset = 2e-4, 1e-6
    lin = np.full((64, 64, 3), 0.02, np.float32)
    lin[:, 32:] = 0.5  # a dark half and a bright half
    clean = (_raw_counts(lin, "RGGB").astype(np.float32) - BLACK) / (WHITE - BLACK)
    noisy = np.clip(add_poisson_gaussian_noise(clean, shot, np.sqrt(offset), seed=0), 0, 1)
    counts = np.rint(BLACK + noisy * (WHITE - BLACK)).astype(np.uint16)
    dng = write_dng(tmp_path / "n.dng", counts, "RGGB", BLACK, WHITE, noise_profile=(shot, offset))
    raw = read_raw(dng)
    assert raw.noise_profile == pytest.approx((shot, offset))
    restorer, module = _recording_restorer()
    develop_raw(raw, restorer)
    noise = module.seen[-1]
    expected = [srgb_gamma_slope(np.float32(v)) * np.sqrt(shot * v + offset) for v in (0.02, 0.5)]
    assert np.median(noise[8:-8, 8:24]) == pytest.approx(expected[0], rel=0.15)
    assert np.median(noise[8:-8, 40:56]) == pytest.approx(expected[1], rel=0.15)
    # the encoding curve is steep in the shadows: the dark half carries the larger σ
    assert np.median(noise[:, :32]) > np.median(noise[:, 32:])


def test_without_a_profile_sigma_is_estimated(tmp_path):
    lin = smooth_rgb(64, 64)
    clean = (_raw_counts(lin, "RGGB").astype(np.float32) - BLACK) / (WHITE - BLACK)
    noisy = add_gaussian_noise(clean, 0.01, seed=1)
    counts = np.rint(BLACK + np.clip(noisy, 0, 1) * (WHITE - BLACK)).astype(np.uint16)
    raw = read_raw(write_dng(tmp_path / "e.dng", counts, "RGGB", BLACK, WHITE))
    assert raw.noise_profile is None
    restorer, module = _recording_restorer()
    develop_raw(raw, restorer)
    assert np.ptp(module.seen[-1]) == 0 and module.seen[-1].max() > 0.005  # one estimated constant
    develop_raw(raw, restorer, sigma=0.03)
    assert np.allclose(module.seen[-1], 0.03)
