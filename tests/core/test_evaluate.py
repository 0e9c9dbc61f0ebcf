"""Eval protocols on small data the tests make, and the published anchors on the shared datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio

from restore_app.core.degrade import jpeg_compress
from restore_app.core.errors import InputError
from restore_app.core.evaluate import DemosaicProtocol, JpegProtocol, SegmentProtocol, VSRProtocol, evaluate
from restore_app.core.io import VideoWriter, write_image
from restore_app.core.pipeline import Restorer


@pytest.fixture
def photo_dir(tmp_path, coffee, astronaut):
    d = tmp_path / "photos"
    d.mkdir()
    write_image(d / "2.png", coffee[:200, :240])
    write_image(d / "10.png", astronaut[:220, :200])
    return d


def test_demosaic_protocol(photo_dir):
    r = Restorer.from_id("bilinear-demosaic")
    clean = evaluate(r, "demosaic", photo_dir)
    noisy = evaluate(r, "demosaic", photo_dir, DemosaicProtocol(sigma=20))
    assert [it["name"] for it in clean.items] == ["2.png", "10.png"]  # natural order
    assert set(clean.mean) == {"psnr", "ssim", "ms_ssim"}
    assert noisy.mean["psnr"] < clean.mean["psnr"] - 5
    assert evaluate(r, "demosaic", photo_dir).mean == clean.mean  # seeded: reproducible
    data = json.loads(clean.to_json())
    assert set(data) == {"task", "model", "protocol", "mean", "items", "seconds_per_mp", "megapixels"}
    assert data["megapixels"] == pytest.approx((200 * 240 + 220 * 200) / 1e6)
    assert data["protocol"] == {"sigma": 0.0, "crop": 10, "seed": 0}


def test_jpeg_protocol_matches_direct_computation(photo_dir, coffee):
    report = evaluate(Restorer.from_id("jpeg-identity"), "jpeg", photo_dir, JpegProtocol(quality=30))
    img = coffee[:200, :240]
    expected = peak_signal_noise_ratio(img, jpeg_compress(img, 30), data_range=255)
    assert report.items[0]["psnr"] == pytest.approx(expected, abs=1e-6)
    assert report.items[0]["grey"] is False


def test_vsr_protocol_on_frames_and_videos(tmp_path, coffee):
    data = tmp_path / "clips"
    (data / "seq").mkdir(parents=True)
    for i in range(3):
        write_image(data / "seq" / f"f{i:03d}.png", np.roll(coffee[:96, :128], 4 * i, axis=1))
    with VideoWriter(data / "clip.mp4", 128, 96, 10, quality=5) as w:
        for i in range(4):
            w.write(np.ascontiguousarray(np.roll(coffee[100:196, :128], 3 * i, axis=0)))
    report = evaluate(Restorer.from_id("bicubic-x2"), "vsr", data, VSRProtocol(scale=2))
    assert [(it["name"], it["frames"]) for it in report.items] == [("clip.mp4", 4), ("seq", 3)]
    assert report.mean["psnr"] == pytest.approx(np.mean([it["psnr"] for it in report.items]))
    assert 20 < report.mean["psnr"] < 45
    with pytest.raises(InputError, match="upscales ×2; the protocol asks for ×4"):
        evaluate(Restorer.from_id("bicubic-x2"), "vsr", data, VSRProtocol(scale=4))


def test_segment_protocol(tmp_path):
    d = tmp_path / "seg"
    (d / "images").mkdir(parents=True)
    (d / "labels").mkdir()
    yy, xx = np.mgrid[0:96, 0:96]
    rgb = np.full((96, 96, 3), 0.92, np.float32)
    labels = np.zeros((96, 96), np.uint16)
    for i, (cy, cx) in enumerate(((20, 20), (22, 70), (70, 30), (68, 72)), start=1):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < 110
        rgb[disk] = (0.35, 0.2, 0.55)
        labels[disk] = i
    write_image(d / "images" / "a.png", rgb)
    write_image(d / "labels" / "a.png", labels)
    report = evaluate(Restorer.from_id("he-watershed"), "segment", d, SegmentProtocol())
    assert report.items[0]["instances"] == 4
    assert report.mean["ap50"] == pytest.approx(1.0)  # well separated disks are easy


def test_task_mismatch_and_missing_data(tmp_path):
    with pytest.raises(InputError, match="is a jpeg model, not a demosaic model"):
        evaluate(Restorer.from_id("jpeg-identity"), "demosaic", tmp_path)
    with pytest.raises(InputError, match="no such folder"):
        evaluate(Restorer.from_id("jpeg-identity"), "jpeg", tmp_path / "missing")


@pytest.mark.data
def test_protocols_reproduce_the_published_anchors(datasets):
    """The issue tracker's anchors, measured with these protocols: bilinear on McMaster and raw JPEG
    on Classic5 (both have no free parameter, so they pin the protocol, not a model)."""
    bil = evaluate(Restorer.from_id("bilinear-demosaic"), "demosaic", datasets / "mcmaster")
    assert bil.mean["psnr"] == pytest.approx(32.30, abs=0.01)
    jpg = evaluate(Restorer.from_id("jpeg-identity"), "jpeg", datasets / "classic5", JpegProtocol(10))
    assert jpg.mean["psnr"] == pytest.approx(27.82, abs=0.01)
    assert all(it["grey"] for it in jpg.items)
