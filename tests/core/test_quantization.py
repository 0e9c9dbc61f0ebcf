"""The JPEG quantisation constraint, on real JPEGs written by OpenCV and read back with Pillow."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from restore_app.core.color import rgb_to_ycbcr
from restore_app.core.degrade import gaussian_blur, jpeg_compress
from restore_app.core.errors import InputError
from restore_app.core.quantization import (
    apply_constraint,
    block_dct,
    block_idct,
    clip_tensor,
    estimate_table,
    find_grid,
    ijg_table,
    intervals,
    project,
)


def _jpeg(img: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    """``img`` (uint8, grey or RGB) through OpenCV's JPEG: the decoded image and the luma table the file holds."""
    bgr = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    table = np.array(Image.open(io.BytesIO(buf.tobytes())).quantization[0]).reshape(8, 8)  # natural order
    return jpeg_compress(img, quality), table


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.parametrize("quality", [5, 10, 30, 50, 75, 90])
def test_ijg_table_is_the_table_opencv_writes(coffee, quality):
    _, table = _jpeg(coffee[:64, :64, 1], quality)
    np.testing.assert_array_equal(ijg_table(quality), table)


def test_block_dct_is_orthonormal_and_inverted(rng):
    plane = rng.uniform(0, 255, (24, 40))
    coefs = block_dct(plane)
    assert coefs.shape == (3, 5, 8, 8)
    np.testing.assert_allclose(block_idct(coefs) + 128, plane, atol=1e-9)
    np.testing.assert_allclose(np.sum(coefs ** 2), np.sum((plane - 128) ** 2), rtol=1e-12)


@pytest.mark.parametrize("quality", [10, 30, 90])
def test_estimate_table_finds_the_files_table_in_grey_and_colour(astronaut, coffee, quality):
    for img in (astronaut[:256, :256, 0], coffee[:200, :304]):
        decoded, table = _jpeg(img, quality)
        np.testing.assert_array_equal(estimate_table(decoded.astype(np.float32) / 255), table)


def test_estimate_table_is_not_misled_by_flat_blocks(astronaut, rng):
    """A flat block's pixels all round the same way, moving its DC up to 4 off the lattice: with
    many of them (flat backgrounds, as in Classic5) the DC step must still come out right."""
    img = astronaut[:256, :256, 0].copy()
    levels = rng.integers(20, 235, size=(8, 16))
    img[:128] = np.kron(levels, np.ones((16, 16), dtype=np.int64)).astype(np.uint8)
    for quality in (30, 40):
        decoded, table = _jpeg(img, quality)
        np.testing.assert_array_equal(estimate_table(decoded.astype(np.float32) / 255), table)


def test_estimate_table_finds_nothing_where_there_is_no_lattice(coffee):
    clean = coffee[:200, :304].astype(np.float32) / 255
    assert estimate_table(clean) is None  # never a JPEG (a PNG from a raw photo)
    decoded = jpeg_compress(coffee[:200, :304], 30).astype(np.float32) / 255
    assert estimate_table(decoded[3:, 5:]) is None  # cropped off the 8×8 grid
    assert estimate_table(cv2.resize(decoded, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)) is None


@pytest.mark.parametrize("quality", [10, 40, 90])  # q90: no visible blocking, most frequencies on the lattice
def test_find_grid_locates_a_jpeg_cropped_off_its_grid(astronaut, coffee, quality):
    """A JPEG cropped by (dy, dx) has its 8×8 grid starting at ((8 − dy) % 8, (8 − dx) % 8). Half a
    block off (4 pixels), areas of flat blocks show a lattice at the corner too; the true grid must
    still win. The projection then works on that grid: closer to the original, the cropped-away rows
    and columns of partial blocks untouched."""
    for img in (astronaut[..., 0], coffee):
        decoded = jpeg_compress(img, quality)
        for dy, dx in ((0, 0), (0, 4), (3, 0), (5, 2)):
            found = find_grid(decoded[dy:, dx:].astype(np.float32) / 255)
            assert found is not None and found.offset == ((8 - dy) % 8, (8 - dx) % 8), (img.shape, dy, dx)
            np.testing.assert_array_equal(found.table, ijg_table(quality))
    clean, dec = astronaut[3:256, 5:256, 0], jpeg_compress(astronaut[:256, :256, 0], 20)[3:, 5:]
    dec = dec.astype(np.float32) / 255
    restored = gaussian_blur(dec, 1.0)
    grid = find_grid(dec)
    offset = grid.offset
    fixed = project(restored, dec, grid.table, 0.0, offset)
    target = clean.astype(np.float64) / 255
    assert _psnr(fixed, target) > _psnr(restored, target) + 0.5
    np.testing.assert_array_equal(fixed[:offset[0]], restored[:offset[0]])
    np.testing.assert_array_equal(fixed[:, :offset[1]], restored[:, :offset[1]])


def test_find_grid_keeps_a_small_images_coefficients_for_the_projection(astronaut):
    """On an image small enough to be searched whole, the search keeps the decoded coefficients, and
    the projection given them is the projection that computes them itself."""
    dec = jpeg_compress(astronaut[:256, :256, 0], 20).astype(np.float32) / 255
    grid = find_grid(dec)
    assert grid is not None and grid.offset == (0, 0) and grid.blocks is not None
    restored = gaussian_blur(dec, 1.0)
    np.testing.assert_array_equal(project(restored, dec, grid.table, 0.15, grid.offset, blocks=grid.blocks),
                                  project(restored, dec, grid.table, 0.15, grid.offset))
    assert find_grid(dec[3:, 5:]).blocks is None  # off the corner: searched on a crop


def test_estimate_table_reads_a_camera_jpeg_and_not_h264_frames(datasets, astronaut, tmp_path):
    """A camera's JPEG file read from disk gives the table stored in it; frames of an H.264 video
    (real ffmpeg, a coarse CRF) give none: a video through a JPEG
    model is left as the network gives it."""
    from restore_app.core.io import VideoReader, VideoWriter, read_image

    photo = datasets / "bsds500" / "test" / "100007.jpg"
    stored = np.array(Image.open(photo).quantization[0]).reshape(8, 8)
    np.testing.assert_array_equal(estimate_table(read_image(photo).astype(np.float32) / 255), stored)
    with VideoWriter(tmp_path / "clip.mp4", 256, 256, 10, quality=40) as writer:
        for i in range(3):
            writer.write(np.ascontiguousarray(np.roll(astronaut[:256, :256], 4 * i, axis=1)))
    frames = list(VideoReader(tmp_path / "clip.mp4"))
    assert len(frames) == 3
    assert all(estimate_table(f.astype(np.float32) / 255) is None for f in frames)


def test_projection_moves_a_restoration_towards_the_original(astronaut):
    """A stand-in restoration (the decoded image blurred) leaves many coefficients outside their
    intervals; the projection must bring it closer to the original, and more so than it moves it."""
    clean = astronaut[:256, :256, 0]
    decoded, table = _jpeg(clean, 20)
    dec = decoded.astype(np.float32) / 255
    restored = gaussian_blur(dec, 1.0)
    target = clean.astype(np.float64) / 255
    fixed = project(restored, dec, table)
    assert _psnr(fixed, target) > _psnr(restored, target) + 0.5
    # every coefficient of the result lies in its interval, except in blocks with clipped pixels
    k = np.rint(block_dct(decoded.astype(np.float64)) / table)
    coefs = block_dct(fixed.astype(np.float64) * 255)
    clipped = ((decoded == 0) | (decoded == 255)).reshape(32, 8, 32, 8).any(axis=(1, 3))
    inside = np.all(np.abs(coefs - k * table) <= table / 2 + 1e-3, axis=(2, 3))
    assert inside[~clipped].all() and (~clipped).mean() > 0.5
    # a narrower interval pulls further in; the decoded image itself is left where it is
    assert np.abs(project(restored, dec, table, 0.25) - fixed).max() > 0
    np.testing.assert_allclose(project(dec, dec, table), dec, atol=1e-6)


def test_projection_changes_luma_only_and_keeps_clipped_blocks(coffee):
    img = coffee[:160, :240]
    decoded, table = _jpeg(img, 20)
    dec = decoded.astype(np.float32) / 255
    restored = gaussian_blur(dec, 1.5)
    restored[:8, :8] = 1.0  # white block: clipped in the decoded image too
    dec = dec.copy()
    dec[:8, :8] = 1.0
    fixed = project(restored, dec, table, 0.15)
    np.testing.assert_allclose(rgb_to_ycbcr(fixed)[..., 1:], rgb_to_ycbcr(restored)[..., 1:], atol=1e-5)
    assert np.abs(fixed - restored)[..., 0].max() > 1 / 255
    np.testing.assert_array_equal(fixed[:8, :8], restored[:8, :8])


def test_apply_constraint_leaves_images_that_are_not_jpegs_alone(coffee, rng):
    clean = coffee[:96, :96].astype(np.float32) / 255
    restored = np.clip(clean + rng.normal(0, 0.02, clean.shape).astype(np.float32), 0, 1)
    assert apply_constraint(restored, clean, 0.15) is restored
    with pytest.raises(InputError, match="differ in shape"):
        apply_constraint(restored[:64], jpeg_compress(clean, 20), 0.15)


@pytest.mark.parametrize("shape", [(2, 2), (5, 5, 3), (7, 30, 3), (1, 64, 3), (64, 1, 3), (8, 8, 3), (17, 9, 1)])
def test_images_smaller_than_the_search_are_left_alone(shape, rng):
    """Images with no whole block, or too small to look for a grid, pass through unchanged."""
    x = rng.random(shape).astype(np.float32)
    assert find_grid(x) is None
    assert apply_constraint(x, x, 0.15) is x


@pytest.mark.parametrize("grey", [True, False])
def test_torch_clip_is_the_projection_and_passes_gradients(coffee, grey):
    """Training through the constraint uses :func:`clip_tensor`; it must give what the engine's
    :func:`project` gives (edges of a size that is no multiple of 8 included), under bf16 autocast
    too, and let the gradient through where coefficients lie inside their intervals."""
    img = coffee[:83, :130].mean(axis=2).astype(np.uint8) if grey else coffee[:83, :130]
    decoded, table = _jpeg(img, 25)
    dec = decoded.astype(np.float32) / 255
    restored = gaussian_blur(dec, 1.0)
    want = project(restored, dec, table, 0.15)
    lo, hi = (torch.from_numpy(b)[None] for b in intervals(dec, table, 0.15))
    assert lo.shape == (1, 10, 16, 8, 8) and bool((lo < hi).all())
    x = torch.from_numpy(restored[None, None] if grey else restored.transpose(2, 0, 1)[None].copy())
    x.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = clip_tensor(x, lo, hi)
    assert got.dtype == torch.float32
    got_np = got[0, 0].detach().numpy() if grey else got[0].detach().numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got_np, want, atol=2e-6)
    assert np.abs(want - restored).max() > 1 / 255  # the projection did change something
    got.sum().backward()
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0
