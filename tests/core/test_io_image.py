"""Images: every format round-trips, orientation is applied, bad files give clear errors."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from restore_app.core.errors import InputError, OutputError
from restore_app.core.io import (
    MediaKind,
    atomic_output,
    check_not_overwriting,
    from_float,
    media_kind,
    read_image,
    to_float,
    write_image,
)
from restore_app.core.io.image import apply_orientation
from restore_app.core.metrics import psnr


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp", ".webp"])
@pytest.mark.parametrize("layout", ["grey", "rgb"])
def test_lossless_roundtrip_8bit(tmp_path, coffee, ext, layout):
    img = coffee if layout == "rgb" else coffee[..., 1].copy()
    quality = {".webp": 100}.get(ext, 95)
    path = write_image(tmp_path / f"x{ext}", img, quality=quality)
    back = read_image(path)
    assert back.dtype == np.uint8
    if ext == ".webp" and layout == "grey":  # WebP stores colour only: grey comes back as R = G = B
        back = back[..., 0]
    assert back.shape == img.shape
    np.testing.assert_array_equal(back, img)


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_roundtrip_16bit(tmp_path, rng, ext, channels):
    shape = (37, 53) if channels == 1 else (37, 53, channels)
    img = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    back = read_image(write_image(tmp_path / f"x{ext}", img))
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, img)


def test_rgba_png_roundtrip(tmp_path, coffee, rng):
    rgba = np.concatenate([coffee, rng.integers(0, 256, coffee.shape[:2] + (1,), dtype=np.uint8)], axis=2)
    np.testing.assert_array_equal(read_image(write_image(tmp_path / "a.png", rgba)), rgba)


def test_float_written_as_requested_depth(tmp_path, coffee):
    f = to_float(coffee)
    assert read_image(write_image(tmp_path / "a.png", f)).dtype == np.uint8
    assert read_image(write_image(tmp_path / "b.png", f, bit_depth=16)).dtype == np.uint16
    tif = read_image(write_image(tmp_path / "c.tif", f))
    assert tif.dtype == np.uint16  # TIFF defaults to 16 bits for float data
    np.testing.assert_allclose(to_float(tif), f, atol=1 / 65535)


def test_float_tiff_is_read_as_float(tmp_path, rng):
    data = rng.random((20, 30, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="rgb")
    back = read_image(tmp_path / "f.tif")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, data)


def test_jpeg_quality_controls_fidelity(tmp_path, coffee):
    low = read_image(write_image(tmp_path / "low.jpg", coffee, quality=10))
    high = read_image(write_image(tmp_path / "high.jpg", coffee, quality=95))
    assert psnr(coffee, high, 255) > psnr(coffee, low, 255) + 5
    assert (tmp_path / "high.jpg").stat().st_size > (tmp_path / "low.jpg").stat().st_size


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path, orientation):
    img = np.zeros((30, 50, 3), np.uint8)
    img[:10, :20] = (255, 0, 0)  # a marker in one corner makes every transform distinguishable
    img[25:, 40:] = (0, 0, 255)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    pil.save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)


def test_tiff_orientation_tag_is_applied(tmp_path):
    img = np.arange(6 * 4, dtype=np.uint8).reshape(6, 4)
    tifffile.imwrite(tmp_path / "o.tif", img, extratags=[(274, "H", 1, 6, True)])
    np.testing.assert_array_equal(read_image(tmp_path / "o.tif"), apply_orientation(img, 6))
    assert read_image(tmp_path / "o.tif").shape == (4, 6)


def test_to_float_from_float_roundtrip(coffee):
    np.testing.assert_array_equal(from_float(to_float(coffee)), coffee)
    u16 = coffee.astype(np.uint16) * 257
    np.testing.assert_array_equal(from_float(to_float(u16), 16), u16)
    with pytest.raises(InputError, match="bit_depth"):
        from_float(to_float(coffee), 12)


# -- bad input -----------------------------------------------------------------------------------

def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty\.png: file is empty"):
        read_image(tmp_path / "empty.png")


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".bmp", ".webp"])
def test_truncated_files_are_errors_naming_the_file(tmp_path, coffee, ext):
    path = write_image(tmp_path / f"t{ext}", coffee, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"t\\{ext}"):
        read_image(path)


def test_content_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image")
    with pytest.raises(InputError, match="notes.png: not a PNG, JPEG"):
        read_image(path)


def test_wrong_extension_is_read_by_content(tmp_path, coffee):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(write_image(tmp_path / "x.png", coffee).read_bytes())
    np.testing.assert_array_equal(read_image(path), coffee)


def test_unsupported_extension(tmp_path):
    with pytest.raises(InputError, match=r"notes\.txt: unsupported file type '\.txt'"):
        media_kind(tmp_path / "notes.txt")
    assert media_kind("a.NEF") is MediaKind.RAW and media_kind("b.mkv") is MediaKind.VIDEO


def _png_with_header(path, width, height):
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_refused_before_decoding(tmp_path):
    bomb = _png_with_header(tmp_path / "bomb.png", 100_000, 100_000)
    assert bomb.stat().st_size < 200
    with pytest.raises(InputError, match=r"bomb\.png: image of 100000×100000 pixels .*decompression bomb"):
        read_image(bomb)


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_pixel_limit_is_configurable(tmp_path, monkeypatch, coffee, ext):
    path = write_image(tmp_path / f"x{ext}", coffee)
    monkeypatch.setenv("RESTORE_MAX_PIXELS", "1000")
    with pytest.raises(InputError, match="exceeds the limit"):
        read_image(path)


# -- output safety -------------------------------------------------------------------------------

def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_atomic_output_gives_normal_permissions(tmp_path, coffee):
    path = write_image(tmp_path / "p.png", coffee)
    assert path.stat().st_mode & 0o644 == 0o644


def test_write_refuses_unknown_type_and_missing_folder(tmp_path, coffee):
    with pytest.raises(OutputError, match="cannot write images of type '.gif'"):
        write_image(tmp_path / "x.gif", coffee)
    with pytest.raises(OutputError, match="does not exist"):
        write_image(tmp_path / "missing" / "x.png", coffee)


def test_check_not_overwriting(tmp_path, coffee):
    src = write_image(tmp_path / "in.png", coffee)
    with pytest.raises(OutputError, match="refusing to overwrite the input"):
        check_not_overwriting(tmp_path / "." / "in.png", [src])
    (tmp_path / "link.png").symlink_to(src)
    with pytest.raises(OutputError):
        check_not_overwriting(tmp_path / "link.png", [src])
    check_not_overwriting(tmp_path / "out.png", [src])
