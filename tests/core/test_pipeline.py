"""The Restorer and process_file: patterns, channel adaptation, alpha, files in and out."""

from __future__ import annotations

import os

import numpy as np
import pytest

from restore_app.core.cfa import PATTERNS
from restore_app.core.degrade import downsample, mosaic
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.errors import Cancelled, InputError, OutputError
from restore_app.core.io import read_image, to_float, write_image
from restore_app.core.jobs import CancelToken
from restore_app.core.metrics import psnr
from restore_app.core.pipeline import Restorer, RunOptions, process_file
from restore_app.core.registry import Registry, default_registry, parse_manifest
from tests.helpers import smooth_rgb


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("size", [(64, 96), (63, 81)])
def test_every_bayer_pattern_and_odd_sizes(pattern, size):
    rgb = smooth_rgb(*size)
    out = Restorer.from_id("bilinear-demosaic").restore_image(mosaic(rgb, pattern), pattern=pattern)
    assert out.shape == size + (3,)
    assert psnr(rgb[2:-2, 2:-2], out[2:-2, 2:-2]) > 38  # smooth image: bilinear is near exact
    # samples the sensor recorded are kept exactly
    m = mosaic(rgb, pattern)
    np.testing.assert_allclose(mosaic(out, pattern)[1:-1, 1:-1], m[1:-1, 1:-1], atol=1e-6)


def test_patterns_agree_on_a_shifted_image(coffee):
    """Cropping one column of an RGGB mosaic gives a GRBG one: both must demosaic the same."""
    rgb = to_float(coffee)[:128, :129]
    r = Restorer.from_id("opencv-vng-demosaic")
    a = r.restore_image(mosaic(rgb, "RGGB"), pattern="RGGB")[:, 1:]
    b = r.restore_image(mosaic(rgb[:, 1:], "GRBG"), pattern="GRBG")
    assert np.abs(a - b)[8:-8, 8:-8].max() < 1e-6


def test_luma_model_on_colour_and_colour_model_on_grey(coffee):
    manifest = parse_manifest({"id": "bicubic-y", "task": "vsr", "name": "Y", "architecture": "bicubic",
                               "input": "rgb", "channels": [1], "scale": 2, "params": {"scale": 2},
                               "license": "MIT", "training_data": "none"})
    reg = Registry(paths=[], entry_points=False)
    luma = Restorer(reg.load(manifest))
    x = to_float(coffee[:64, :96])
    y = luma.restore_image(x)
    assert y.shape == (128, 192, 3)
    rgb_model = Restorer.from_id("bicubic-x2").restore_image(x)
    assert psnr(rgb_model, y) > 40  # bicubic on Y + bicubic chroma ≈ bicubic on RGB
    grey = Restorer.from_id("bicubic-x2").restore_image(x[..., 1])
    assert grey.shape == (128, 192)


def test_alpha_is_kept_and_resized(coffee):
    rgba = np.concatenate([to_float(coffee[:40, :50]), np.linspace(0, 1, 40 * 50).reshape(40, 50, 1)], axis=2)
    out = Restorer.from_id("bicubic-x2").restore_image(rgba.astype(np.float32))
    assert out.shape == (80, 100, 4)
    assert abs(out[..., 3].mean() - rgba[..., 3].mean()) < 0.01


def test_tiny_tiles_equal_whole_image(coffee):
    x = to_float(coffee[:200, :260])
    whole = Restorer(default_registry().load("bicubic-x4"), Engine(EngineConfig(tile=0))).restore_image(x)
    tiled = Restorer(default_registry().load("bicubic-x4"), Engine(EngineConfig(tile=48))).restore_image(x)
    assert np.abs(whole - tiled).max() < 1e-5


def test_self_ensemble_averages_the_transposed_pass(coffee):
    """A model naming ``ensemble = ["transpose"]`` is averaged with its pass on the transposed image
    (here a horizontal-only filter, which the transpose turns vertical); the engine can turn it off,
    and tiling does not change the result."""
    import torch

    from restore_app.core.registry import LoadedModel

    conv = torch.nn.Conv2d(3, 3, (1, 3), padding=(0, 1), bias=False, groups=3)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([-1.0, 2.0, 0.0]).expand(3, 1, 1, 3))
    manifest = parse_manifest({"id": "h-filter", "task": "jpeg", "name": "H", "architecture": "identity",
                               "input": "rgb", "ensemble": ["transpose"], "overlap": 8,
                               "license": "MIT", "training_data": "none"})
    x = to_float(coffee[:96, :130])
    t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]
    with torch.no_grad():
        horizontal = conv(t)[0].permute(1, 2, 0).numpy()
        vertical = conv(t.transpose(-2, -1))[0].transpose(-2, -1).permute(1, 2, 0).numpy()

    def run(**engine) -> np.ndarray:
        model = LoadedModel(manifest, conv)
        return Restorer(model, Engine(EngineConfig(device="cpu", precision="fp32", **engine))).restore_image(x)

    assert np.abs(run(ensemble="off", tile=0) - np.clip(horizontal, 0, 1)).max() < 1e-5
    assert np.abs(run(ensemble=False, tile=0) - np.clip(horizontal, 0, 1)).max() < 1e-5  # False means "off"
    both = np.clip((horizontal + vertical) / 2, 0, 1)
    assert np.abs(run(tile=0) - both).max() < 1e-5
    assert np.abs(run(tile=48) - both).max() < 1e-5
    assert np.abs(both - np.clip(horizontal, 0, 1)).max() > 0.1  # the two passes really differ


def test_cancel_stops_a_run(coffee):
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        Restorer.from_id("bicubic-x2").restore_image(to_float(coffee), cancel=token)


def test_process_file_image(tmp_path, coffee):
    src = write_image(tmp_path / "in.png", downsample(to_float(coffee), 2))
    out = process_file(src, tmp_path / "out.png", Restorer.from_id("bicubic-x2"))
    assert read_image(out).shape == (400, 600, 3)
    out16 = process_file(src, tmp_path / "out.tif", Restorer.from_id("bicubic-x2"))
    assert read_image(out16).dtype == np.uint16


def test_process_file_checks_before_work(tmp_path, coffee):
    src = write_image(tmp_path / "in.png", coffee)
    r = Restorer.from_id("jpeg-identity")
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        process_file(src, src, r)
    assert read_image(src).shape == coffee.shape
    with pytest.raises(OutputError, match="cannot write an image as '.mp4'"):
        process_file(src, tmp_path / "out.mp4", r)
    with pytest.raises(OutputError, match="does not exist"):
        process_file(src, tmp_path / "nowhere" / "out.png", r)
    with pytest.raises(InputError, match="demosaics single-channel Bayer mosaics"):
        process_file(src, tmp_path / "out.png", Restorer.from_id("bilinear-demosaic"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(tmp_path, coffee):
    src = write_image(tmp_path / "in.png", coffee)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="not writable"):
        process_file(src, locked / "out.png", Restorer.from_id("jpeg-identity"))


def test_grey_mosaic_file_with_pattern(tmp_path, coffee):
    m = mosaic(coffee, "GBRG")
    src = write_image(tmp_path / "mosaic.png", m)
    out = process_file(src, tmp_path / "rgb.png", Restorer.from_id("opencv-vng-demosaic"),
                       RunOptions(pattern="GBRG"))
    assert psnr(coffee[8:-8, 8:-8], read_image(out)[8:-8, 8:-8], 255) > 30


def test_labels_written_as_16bit(tmp_path):
    rgb = np.full((80, 80, 3), 0.9, np.float32)
    yy, xx = np.mgrid[0:80, 0:80]
    for cy, cx in ((20, 20), (20, 55), (58, 40)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 90] = (0.35, 0.2, 0.55)  # haematoxylin-like purple
    src = write_image(tmp_path / "cells.png", rgb)
    out = process_file(src, tmp_path / "labels.png", Restorer.from_id("he-watershed"))
    labels = read_image(out)
    assert labels.dtype == np.uint16 and len(np.unique(labels)) - 1 == 3
    overlay = read_image(tmp_path / "labels.overlay.png")
    assert overlay.shape == (80, 80, 3)
    rows = (tmp_path / "labels.csv").read_text().splitlines()
    assert rows[0].startswith("id,area,centroid_x") and len(rows) == 4
    with pytest.raises(OutputError, match="gives a label map"):
        process_file(src, tmp_path / "labels.jpg", Restorer.from_id("he-watershed"))


def test_run_options_validation():
    with pytest.raises(InputError, match="pattern"):
        RunOptions(pattern="XYZW")
    with pytest.raises(InputError, match="quality"):
        RunOptions(quality=101)


def test_chains():
    from restore_app.core.pipeline import check_chain, restore_chain

    reg = default_registry()
    ok = [reg.get("jpeg-identity"), reg.get("bicubic-x2")]
    check_chain(ok)
    with pytest.raises(InputError, match="cannot follow"):
        check_chain(ok[::-1])
    with pytest.raises(InputError, match="not useful"):
        check_chain([reg.get("bilinear-demosaic"), reg.get("jpeg-identity")])
    with pytest.raises(InputError, match="at least one"):
        check_chain([])
    seen = []
    rgb = smooth_rgb(40, 48)
    out = restore_chain([Restorer(reg.load(m)) for m in ok], rgb, progress=lambda d, t: seen.append((d, t)))
    assert out.shape == (80, 96, 3)
    assert seen[-1] == (2000, 2000) and all(t == 2000 for _, t in seen)
    demosaiced_then_upscaled = restore_chain(
        [Restorer(reg.load("bilinear-demosaic")), Restorer(reg.load("bicubic-x2"))], mosaic(rgb, "RGGB"))
    assert demosaiced_then_upscaled.shape == (80, 96, 3)


def test_simulate_degradations(coffee):
    from restore_app.core.simulate import Degradation, parse_degradation, simulate

    clean = to_float(coffee)
    sim = simulate(clean, parse_degradation("mosaic:10"))
    assert sim.model_input.shape == clean.shape[:2] and sim.sigma == pytest.approx(10 / 255)
    assert sim.display.shape == clean.shape
    sim = simulate(clean[:101, :99], Degradation("downscale", factor=4))
    assert sim.reference.shape == (100, 96, 3) and sim.model_input.shape == (25, 24, 3)
    assert sim.display.shape == sim.reference.shape
    sim = simulate(clean, parse_degradation("jpeg:10"))
    assert psnr(sim.reference, sim.model_input) < 30
    with pytest.raises(InputError, match="unknown degradation"):
        parse_degradation("blur:3")
    with pytest.raises(InputError, match="quality"):
        parse_degradation("jpeg:0")


def test_a_segmenters_time_includes_its_post_processing():
    """Throughput figures count the maps → instances step, as they count a classical pipeline's."""
    import time

    import torch

    from restore_app.core.registry import LoadedModel

    class SlowPost(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :1]

        def postprocess(self, maps: torch.Tensor) -> torch.Tensor:
            time.sleep(0.3)
            return (maps > 0.5).to(torch.int64)

    manifest = parse_manifest({"id": "slow-post", "task": "segment", "name": "S", "architecture": "identity",
                               "input": "rgb", "output": "labels", "license": "MIT", "training_data": "none"})
    restorer = Restorer(LoadedModel(manifest, SlowPost()), Engine(EngineConfig(device="cpu", precision="fp32")))
    labels = restorer.restore_image(np.full((16, 16, 3), 0.75, np.float32))
    assert labels.dtype == np.int64 and (labels == 1).all()
    assert restorer.seconds >= 0.3


@pytest.mark.parametrize("name", ["fliplr", "flipud", "rot180", "rot90", "rot270", "antitranspose"])
def test_ensemble_transforms_are_mapped_back(name):
    """Each named transform, applied to the input and undone on the output, gives an equivariant
    model's own result: averaging a position-independent filter that is symmetric under it changes
    nothing, and an identity model comes back exactly, for sizes off the grid too."""
    import torch

    from restore_app.core.pipeline import ensemble_transforms, with_ensemble

    x = torch.rand(1, 3, 37, 50)
    same = with_ensemble(lambda z: z * 2, ensemble_transforms([name]), align=8)(x)
    assert torch.allclose(same, x * 2, atol=1e-6)
    blur = torch.nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate", bias=False, groups=3)
    with torch.no_grad():
        blur.weight.copy_(torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]).div(16).expand(3, 1, 3, 3))
        assert torch.allclose(with_ensemble(blur, ensemble_transforms([name]))(x), blur(x), atol=1e-5)


def test_flip_ensemble_keeps_the_block_grid():
    """A flip would move the 8×8 JPEG grid of an image whose size is not a multiple of 8; the
    ensemble pads to the manifest's ``align`` first (edge replication), so a model that works block
    by block (here: each 8×8 block's mean) sees the same blocks in the mirrored passes."""
    import torch
    import torch.nn.functional as F

    from restore_app.core.pipeline import ensemble_transforms, with_ensemble

    def block_means(z: torch.Tensor) -> torch.Tensor:
        h, w = z.shape[-2:]
        means = F.avg_pool2d(z, 8, ceil_mode=True)
        return means.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)[..., :h, :w]

    x = torch.rand(1, 1, 21, 29)
    padded = block_means(F.pad(x, (0, 3, 0, 3), mode="replicate"))[..., :21, :29]
    flips = ensemble_transforms(["fliplr", "flipud", "rot180"])
    on_grid = with_ensemble(block_means, flips, align=8)(x)
    assert on_grid.shape == x.shape and torch.allclose(on_grid, padded, atol=1e-6)
    off_grid = with_ensemble(block_means, flips, align=1)(x)
    assert (off_grid - padded).abs().max() > 0.05  # without the padding the mirrored blocks differ


def test_ensemble_modes_choose_the_manifest_sets():
    """``off`` runs one pass, ``on`` the manifest's ``ensemble``, ``full`` its ``ensemble_full``
    (the same as ``on`` when a manifest has none); the engine takes the old true/false too."""
    base = {"id": "m", "task": "jpeg", "name": "M", "architecture": "identity", "input": "rgb",
            "license": "MIT", "training_data": "none", "ensemble": ["rot180"]}
    m = parse_manifest({**base, "ensemble_full": ["fliplr", "flipud", "rot180"]})
    assert [m.ensemble_for(k) for k in ("off", "on", "full")] == [(), ("rot180",), ("fliplr", "flipud", "rot180")]
    assert parse_manifest(base).ensemble_for("full") == ("rot180",)
    assert EngineConfig(ensemble=True).ensemble == "on" and EngineConfig(ensemble=False).ensemble == "off"
    with pytest.raises(InputError, match="ensemble"):
        EngineConfig(ensemble="best")


def test_mosaic_ensemble_keeps_the_bayer_phase(coffee):
    """Flips turn an RGGB mosaic into another Bayer phase; the ensemble re-pads the flipped mosaic
    to RGGB, so bilinear demosaicing (symmetric under every transform) comes back unchanged inside
    a two-pixel border, while skipping the re-padding would demosaic with the wrong colours."""
    import torch

    from restore_app.core.degrade import mosaic
    from restore_app.core.pipeline import ensemble_transforms, with_ensemble

    bilinear = default_registry().load("bilinear-demosaic").module
    m = torch.from_numpy(mosaic(to_float(coffee[:64, :90]), "RGGB"))[None, None]
    every = ensemble_transforms(["transpose", "rot180", "fliplr", "flipud", "rot90", "rot270", "antitranspose"])
    plain = bilinear(m)
    ens = with_ensemble(bilinear, every, align=2, cfa=True)(m)
    assert ens.shape == plain.shape
    assert (ens - plain)[..., 2:-2, 2:-2].abs().max() < 1e-5
    wrong = with_ensemble(bilinear, ensemble_transforms(["fliplr"]), align=2)(m)
    assert (wrong - plain)[..., 2:-2, 2:-2].abs().max() > 0.1
    with pytest.raises(InputError, match="even"):
        with_ensemble(bilinear, every, cfa=True)(m[..., :63, :])


def test_every_manifest_transform_has_an_implementation():
    """The names a manifest may give (registry) and the transforms the pipeline applies agree."""
    from restore_app.core.pipeline import TRANSFORMS
    from restore_app.core.registry import ENSEMBLE_TRANSFORMS

    assert set(TRANSFORMS) - {"identity"} == set(ENSEMBLE_TRANSFORMS)
    assert len(set(TRANSFORMS.values())) == 8  # the 8 symmetries of the square, each once
