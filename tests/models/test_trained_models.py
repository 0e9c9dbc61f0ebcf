"""The committed neural models, on a bundled photo: they beat their classical baselines, keep
high-quality input intact, and give the same answer at every precision their manifest lists."""

from __future__ import annotations

import numpy as np
import pytest

from restore_app.core.degrade import add_gaussian_noise, jpeg_compress, mosaic
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.io import read_image
from restore_app.core.metrics import psnr
from restore_app.core.paths import resources_dir
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import default_registry


def _photo() -> np.ndarray:
    img = read_image(resources_dir() / "samples" / "astronaut.png")
    # 192×256 of face and suit: edges and texture
    return np.ascontiguousarray(img[64:256, 96:352, :3]).astype(np.float32) / 255


def _restorer(model_id: str, precision: str = "fp32") -> Restorer:
    return Restorer(default_registry().load(model_id),
                    Engine(EngineConfig(device="cpu", precision=precision, tile=0)))


def _u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 1) * 255)


@pytest.mark.parametrize("model_id", ["restore-dm", "restore-dm-int8"])
@pytest.mark.parametrize("sigma", [0, 20])
def test_restore_dm_beats_bilinear(sigma, model_id):
    clean = _photo()
    noisy = add_gaussian_noise(mosaic(clean, "RGGB"), sigma / 255, seed=3)
    ours = _restorer(model_id).demosaic(noisy, sigma=sigma / 255)
    base = _restorer("bilinear-demosaic").demosaic(noisy)
    gain = psnr(_u8(clean), _u8(ours), 255.0, crop=10) - psnr(_u8(clean), _u8(base), 255.0, crop=10)
    assert gain > 3.0


def test_restore_dm_precisions_agree():
    clean = _photo()
    noisy = add_gaussian_noise(mosaic(clean, "GBRG"), 10 / 255, seed=4)
    manifest = default_registry().get("restore-dm")
    ref = _restorer("restore-dm").demosaic(noisy, pattern="GBRG", sigma=10 / 255)
    ref_psnr = psnr(_u8(clean), _u8(ref), 255.0, crop=10)
    for precision in manifest.precisions:
        if precision == "fp16":
            continue  # never on the CPU
        out = _restorer("restore-dm", precision).demosaic(noisy, pattern="GBRG", sigma=10 / 255)
        assert abs(psnr(_u8(clean), _u8(out), 255.0, crop=10) - ref_psnr) < 0.1, precision


def test_restore_jpeg_removes_artifacts_in_colour_and_grey():
    clean = np.rint(_photo() * 255).astype(np.uint8)
    restorer = _restorer("restore-jpeg")
    for img in (clean, clean[..., 1]):
        jpg = jpeg_compress(img, 10)
        out = _u8(restorer.restore_image(jpg.astype(np.float32) / 255))
        assert out.shape == img.shape
        assert psnr(img, out, 255.0) - psnr(img, jpg, 255.0) > 1.0


def test_restore_jpeg_does_not_harm_quality_90():
    clean = np.rint(_photo() * 255).astype(np.uint8)
    jpg = jpeg_compress(clean, 90)
    out = _u8(_restorer("restore-jpeg").restore_image(jpg.astype(np.float32) / 255))
    assert psnr(clean, out, 255.0) >= psnr(clean, jpg, 255.0)


def test_restore_jpeg_grey_restores_grey_and_quality_90():
    grey = np.rint(_photo()[..., 1] * 255).astype(np.uint8)
    restorer = _restorer("restore-jpeg-grey")
    assert restorer.manifest.channels == (1,)
    for quality, gain in ((10, 1.0), (90, 0.0)):
        jpg = jpeg_compress(grey, quality)
        out = _u8(restorer.restore_image(jpg.astype(np.float32) / 255))
        assert out.shape == grey.shape
        assert psnr(grey, out, 255.0) - psnr(grey, jpg, 255.0) >= gain, quality


def test_self_ensemble_is_not_worse_than_one_pass():
    """The passes restore-dm averages in by default (the transposed, turned and anti-transposed mosaics)."""
    clean = _photo()
    noisy = mosaic(clean, "RGGB")
    scores = {}
    for ensemble in (False, True):
        r = Restorer(default_registry().load("restore-dm"),
                     Engine(EngineConfig(device="cpu", precision="fp32", tile=0, ensemble=ensemble)))
        scores[ensemble] = psnr(_u8(clean), _u8(r.demosaic(noisy, sigma=0.0)), 255.0, crop=10)
    assert scores[True] >= scores[False]
    assert scores[True] != scores[False]  # the other passes really ran


def _moving_clip(frames: int = 6):
    """A camera pan over the bundled photo, shrunk ×4 the MATLAB way: ``(lr uint8 frames, hr frames)``."""
    from restore_app.core.train.vsr import VSRTrainConfig, synth_clip

    img = read_image(resources_dir() / "samples" / "astronaut.png")[..., :3].astype(np.float32) / 255
    cfg = VSRTrainConfig(frames=frames, blur_prob=0.0, noise_max=0.0)
    lr, hr = synth_clip(img, np.random.default_rng(5), cfg, 40)
    return [np.rint(f * 255).astype(np.uint8) for f in lr], hr


def _clip_psnr_y(model_id: str, lr, hr) -> float:
    from restore_app.core.color import rgb_to_y

    out = list(_restorer(model_id).restore_frames(lr))
    assert len(out) == len(hr) and out[0].shape == hr[0].shape
    return float(np.mean([psnr(rgb_to_y(_u8(h)), rgb_to_y(o.astype(np.float64)), 255.0)
                          for o, h in zip(out, hr, strict=True)]))


def test_trained_video_super_resolution_beats_bicubic():
    lr, hr = _moving_clip()
    bicubic = _clip_psnr_y("bicubic-x4", lr, hr)
    assert _clip_psnr_y("restore-vsr-x4", lr, hr) > bicubic + 1.0
    assert _clip_psnr_y("brcn-x4", lr, hr) > bicubic + 0.2
    assert _clip_psnr_y("brcn-ff-x4", lr, hr) > bicubic


@pytest.mark.parametrize("model_id", ["restore-dwt", "restore-dwt-int8"])
def test_dwt_fold_beats_the_classical_watershed_on_a_tile_it_never_saw(datasets, tmp_path, model_id):
    import shutil

    from restore_app.core.bench import bench_segment

    if model_id.endswith("-int8"):
        from restore_app.core import int8

        if not int8.available():
            pytest.skip("this PyTorch has no oneDNN quantised engine")
    tile = "image12.png"
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
        shutil.copy(datasets / "nuclei_he" / sub / tile, tmp_path / sub / tile)
    rows = {r.method: r for r in bench_segment(["he-watershed", model_id], tmp_path, log=lambda _: None)}
    ours, classical = rows[model_id].cells[tile], rows["he-watershed"].cells[tile]
    assert not rows[model_id].note
    assert ours["ap50"] > classical["ap50"] + 0.2 and ours["f1"] > classical["f1"] + 0.2


@pytest.mark.parametrize("model_id", ["restore-jpeg", "restore-jpeg-grey"])
def test_jpeg_ensemble_modes_gain_in_order(model_id):
    """The JPEG models' self-ensembles (a 180° turn by default, the four flips for "full") on an
    image whose size is off the 8×8 grid: each larger mode restores better than the one before."""
    img = np.rint(_photo()[:187, :229] * 255).astype(np.uint8)
    img = img[..., 1] if model_id.endswith("grey") else img
    jpg = jpeg_compress(img, 20).astype(np.float32) / 255
    scores = {}
    for mode in ("off", "on", "full"):
        r = Restorer(default_registry().load(model_id),
                     Engine(EngineConfig(device="cpu", precision="fp32", tile=0, ensemble=mode)))
        scores[mode] = psnr(img, _u8(r.restore_image(jpg)), 255.0)
    assert scores["off"] < scores["on"] < scores["full"], scores


@pytest.mark.parametrize("model_id", ["restore-jpeg", "restore-jpeg-grey"])
def test_jpeg_constraint_gains_on_jpegs_and_leaves_other_images_alone(model_id):
    """The quantisation constraint the JPEG manifests turn on: closer to the original at every
    quality on a JPEG; on an image that never was one (a noisy photo) it finds no table and changes
    nothing."""
    img = np.rint(_photo() * 255).astype(np.uint8)
    img = img[..., 1] if model_id.endswith("grey") else img

    def run(x: np.ndarray, constraint: bool) -> np.ndarray:
        engine = Engine(EngineConfig(device="cpu", precision="fp32", tile=0, ensemble="off",
                                     jpeg_constraint=constraint))
        return Restorer(default_registry().load(model_id), engine).restore_image(x)

    for quality in (10, 40, 90):
        jpg = jpeg_compress(img, quality).astype(np.float32) / 255
        on, off = psnr(img, _u8(run(jpg, True)), 255.0), psnr(img, _u8(run(jpg, False)), 255.0)
        assert on > off, (quality, on, off)
    noisy = add_gaussian_noise(img.astype(np.float32) / 255, 5 / 255, seed=5)
    np.testing.assert_array_equal(run(noisy, True), run(noisy, False))


@pytest.mark.parametrize("model_id", ["restore-dm", "restore-dm-int8"])
@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_restore_dm_keeps_the_samples_of_a_noise_free_mosaic(pattern, model_id):
    """At σ = 0 the measured samples are exact, and restore-dm (``keep_samples``) returns them as
    they are, which is closer to the original than the network's own values there; at σ > 0 the
    samples are noisy and the network's denoised values stay."""
    from dataclasses import replace

    from restore_app.core.cfa import channel_masks
    from restore_app.core.registry import LoadedModel

    clean = _photo()
    flat = mosaic(clean, pattern)
    measured = channel_masks(*flat.shape, pattern).transpose(1, 2, 0)
    restorer = _restorer(model_id)
    out = restorer.demosaic(flat, pattern=pattern, sigma=0.0)
    np.testing.assert_array_equal(out[measured], np.broadcast_to(flat[..., None], out.shape)[measured])
    loaded = default_registry().load(model_id)
    free = Restorer(LoadedModel(replace(loaded.manifest, keep_samples=False), loaded.module),
                    Engine(EngineConfig(device="cpu", precision="fp32", tile=0)))
    plain = free.demosaic(flat, pattern=pattern, sigma=0.0)
    assert psnr(_u8(clean), _u8(out), 255.0, crop=10) > psnr(_u8(clean), _u8(plain), 255.0, crop=10)
    noisy = add_gaussian_noise(flat, 10 / 255, seed=6)
    out = restorer.demosaic(noisy, pattern=pattern, sigma=10 / 255)
    assert np.abs(out[measured] - np.broadcast_to(noisy[..., None], out.shape)[measured]).mean() > 2 / 255


def test_jpeg_model_restores_a_jpeg_cropped_off_its_grid():
    """A JPEG cropped by a few pixels (its 8×8 grid no longer at the corner) is padded so that the
    model sees its blocks on its own grid: much better than the model on the crop as it is, and as
    good as on the uncropped file."""
    from dataclasses import replace

    from restore_app.core.registry import LoadedModel

    img = np.rint(_photo() * 255).astype(np.uint8)
    jpg = jpeg_compress(img, 20)
    loaded = default_registry().load("restore-jpeg")
    engine = Engine(EngineConfig(device="cpu", precision="fp32", tile=0, ensemble="off"))
    product = Restorer(loaded, engine)
    unaware = Restorer(LoadedModel(replace(loaded.manifest, jpeg_constraint=None), loaded.module), engine)
    clean, crop = img[1:, 7:], jpg[1:, 7:].astype(np.float32) / 255
    ours = psnr(clean, _u8(product.restore_image(crop)), 255.0)
    assert ours > psnr(clean, _u8(unaware.restore_image(crop)), 255.0) + 0.2
    whole = _u8(product.restore_image(jpg.astype(np.float32) / 255))[1:, 7:]
    assert ours > psnr(clean, whole, 255.0) - 0.05


INT8_JPEG = [m.id for m in default_registry().manifests("jpeg") if m.architecture == "jpeg_unet_int8"]


@pytest.mark.parametrize("model_id", INT8_JPEG)
def test_int8_jpeg_models_restore_almost_as_well_as_their_float_models(model_id):
    """The int8 JPEG models (8-bit weights and activations) against the fp32 models they were trained
    from, one pass each: within 0.1 dB, far above the input at quality 10, not below it at 90."""
    from restore_app.core import int8

    if not int8.available():
        pytest.skip("this PyTorch has no oneDNN quantised engine")
    grey = model_id.startswith("restore-jpeg-grey")
    img = np.rint(_photo() * 255).astype(np.uint8)
    img = img[..., 1] if grey else img

    def run(mid: str, jpg: np.ndarray) -> float:
        engine = Engine(EngineConfig(device="cpu", precision="fp32", tile=0, ensemble="off"))
        return psnr(img, _u8(Restorer(default_registry().load(mid), engine).restore_image(jpg)), 255.0)

    for quality in (10, 40, 90):
        jpg = jpeg_compress(img, quality)
        ours = run(model_id, jpg.astype(np.float32) / 255)
        ref = run(model_id.removesuffix("-int8"), jpg.astype(np.float32) / 255)
        assert abs(ours - ref) < 0.1, (quality, ours, ref)
        assert ours - psnr(img, jpg, 255.0) > (1.0 if quality == 10 else 0.0), quality


def test_int8_demosaicer_restores_almost_as_well_as_the_float_one():
    """restore-dm-int8 (8-bit quarter-resolution layers) against restore-dm, one pass each, on a
    noise-free and a noisy mosaic of another Bayer phase: within 0.25 dB; its three-pass default
    within 0.25 dB of the float model's four-pass default or better (on validation 0.19 dB lower
    noise-free and level with noise, where it stands in for it: a CPU with fast int8 but no AMX)."""
    from restore_app.core import int8

    if not int8.available():
        pytest.skip("this PyTorch has no oneDNN quantised engine")
    clean = _photo()

    def run(model_id: str, noisy: np.ndarray, sigma: float, ensemble: str) -> float:
        engine = Engine(EngineConfig(device="cpu", precision="auto", tile=0, ensemble=ensemble))
        out = Restorer(default_registry().load(model_id), engine).demosaic(noisy, pattern="GRBG", sigma=sigma)
        return psnr(_u8(clean), _u8(out), 255.0, crop=10)

    for sigma in (0, 10 / 255):
        noisy = add_gaussian_noise(mosaic(clean, "GRBG"), sigma, seed=8)
        ours, ref = run("restore-dm-int8", noisy, sigma, "off"), run("restore-dm", noisy, sigma, "off")
        assert abs(ours - ref) < 0.25, (sigma, ours, ref)
        assert run("restore-dm-int8", noisy, sigma, "on") > run("restore-dm", noisy, sigma, "on") - 0.25, sigma
