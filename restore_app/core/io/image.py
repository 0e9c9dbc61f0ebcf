"""Read and write PNG, JPEG, TIFF (8/16-bit, float), BMP and WebP images.

Arrays are ``(H, W)`` for grey, ``(H, W, 3)`` for RGB and ``(H, W, 4)`` for RGBA, in RGB order (not
OpenCV's BGR), ``uint8`` or ``uint16`` as stored (``float32`` for floating-point TIFF). EXIF
orientation is applied on read, so arrays are upright. Decoding checks the pixel count from the header
first, so a decompression bomb is refused before any memory is spent on it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import tifffile
from PIL import Image

from restore_app.core.checks import check_image_array, check_range
from restore_app.core.errors import InputError, OutputError
from restore_app.core.io.atomic import atomic_output
from restore_app.core.io.formats import IMAGE_EXTENSIONS, sniff_image_format

#: Largest image accepted, in pixels (PIL's own hard limit); override with RESTORE_MAX_PIXELS.
DEFAULT_MAX_PIXELS = 2 * 89_478_485
_ORIENTATION_TAG = 0x0112
# Our own check (from the header, before decoding) replaces PIL's, so that every format — PIL's,
# tifffile's and OpenCV's — is held to the same limit with the same message.
Image.MAX_IMAGE_PIXELS = None


def max_pixels() -> int:
    """The decompression-bomb limit in pixels (environment variable ``RESTORE_MAX_PIXELS``)."""
    value = os.environ.get("RESTORE_MAX_PIXELS")
    if not value:
        return DEFAULT_MAX_PIXELS
    try:
        return min(int(value), DEFAULT_MAX_PIXELS)
    except ValueError as exc:
        raise InputError(f"RESTORE_MAX_PIXELS must be an integer; got {value!r}") from exc


def _check_size(path: Path, width: int, height: int) -> None:
    limit = max_pixels()
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: invalid image size {width}×{height}")
    if width * height > limit:
        raise InputError(f"{path}: image of {width}×{height} pixels ({width * height / 1e6:.0f} MP) "
                         f"exceeds the limit of {limit / 1e6:.0f} MP (possible decompression bomb)")


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an array stored with EXIF ``orientation`` (1–8) upright, as ``PIL.ImageOps.exif_transpose``."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops.get(orientation, ops[1])(image))


def _png_bit_depth(head: bytes) -> int:
    # signature (8) + chunk length (4) + b"IHDR" (4) + width (4) + height (4) + bit depth (1)
    if len(head) < 25 or head[12:16] != b"IHDR":
        return 8
    return head[24]


def _read_tiff(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise InputError(f"{path}: TIFF file holds no image")
        page = tif.pages.first
        if page.photometric == 32803:  # CFA
            raise InputError(f"{path}: this TIFF holds a raw CFA mosaic; open it as camera RAW (.dng)")
        shape = page.shape
        height, width = (shape[0], shape[1]) if page.planarconfig != 2 or len(shape) < 3 \
            else (shape[1], shape[2])
        _check_size(path, width, height)
        data = page.asarray()
        orientation = page.tags.valueof(274, default=1)
    if data.ndim == 3 and data.shape[0] in (3, 4) and data.shape[2] not in (3, 4):
        data = np.moveaxis(data, 0, -1)  # planar storage
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * 255
    elif data.dtype.kind == "f":
        data = data.astype(np.float32)
    elif data.dtype not in (np.uint8, np.uint16):
        raise InputError(f"{path}: unsupported TIFF sample type {data.dtype}")
    return apply_orientation(data, int(orientation))


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        _check_size(path, *im.size)
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
        if im.mode in ("I;16", "I;16B", "I;16L"):
            data = np.asarray(im).astype(np.uint16)
        elif im.mode == "I":
            data = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        elif im.mode == "F":
            data = np.asarray(im, dtype=np.float32)
        else:
            has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
            target = "L" if im.mode in ("1", "L") else ("RGBA" if has_alpha else "RGB")
            data = np.asarray(im.convert(target) if im.mode != target else im)
    return apply_orientation(data, int(orientation))


def _read_png16(path: Path) -> np.ndarray:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None:
        raise InputError(f"{path}: cannot decode PNG (corrupt or truncated)")
    if data.ndim == 3:
        code = cv2.COLOR_BGRA2RGBA if data.shape[2] == 4 else cv2.COLOR_BGR2RGB
        data = cv2.cvtColor(data, code)
    with Image.open(path) as im:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    return apply_orientation(data, int(orientation))


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file into an upright array in RGB order.

    Returns ``(H, W)`` grey, ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA, ``uint8``/``uint16`` as stored.
    Raises :class:`InputError` naming the file if it is missing, empty, truncated, corrupt, of an
    unsupported type, or larger than :func:`max_pixels`.

    >>> img = read_image("resources/samples/coffee.png")  # doctest: +SKIP
    >>> img.shape, img.dtype  # doctest: +SKIP
    ((400, 600, 3), dtype('uint8'))
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    with open(path, "rb") as fh:
        head = fh.read(32)
    fmt = sniff_image_format(head)
    if fmt is None:
        raise InputError(f"{path}: not a PNG, JPEG, TIFF, BMP or WebP image "
                         f"(the content does not match any of them)")
    try:
        if fmt == "tiff":
            data = _read_tiff(path)
        elif fmt == "png" and _png_bit_depth(head) == 16:
            width, height = struct.unpack(">II", head[16:24])
            _check_size(path, width, height)
            data = _read_png16(path)
        else:
            data = _read_pil(path)
    except InputError:
        raise
    except MemoryError as exc:
        raise InputError(f"{path}: not enough memory to decode this image") from exc
    except Exception as exc:  # decoders fail on corrupt data in many ways (zlib, struct, OSError…)
        raise InputError(f"{path}: cannot decode {fmt.upper()} image "
                         f"({type(exc).__name__}: {exc})") from exc
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim == 3 and data.shape[2] == 2:  # grey + alpha: keep alpha with grey replicated
        data = np.concatenate([np.repeat(data[:, :, :1], 3, axis=2), data[:, :, 1:]], axis=2)
    return check_image_array(data, str(path))


def to_float(image: np.ndarray) -> np.ndarray:
    """Scale an integer image to ``float32`` in ``[0, 1]`` (float input is returned as float32)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    if image.dtype.kind == "f":
        return image.astype(np.float32, copy=False)
    raise TypeError(f"unsupported image dtype {image.dtype}")


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Three channels: grey is repeated, an alpha channel dropped; the dtype is kept."""
    return image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def from_float(image: np.ndarray, bit_depth: int = 8) -> np.ndarray:
    """Clip a float image to ``[0, 1]`` and round it to ``uint8`` (8) or ``uint16`` (16)."""
    if bit_depth not in (8, 16):
        raise InputError(f"bit_depth must be 8 or 16; got {bit_depth}")
    if image.dtype.kind != "f":
        raise TypeError(f"from_float expects a float image; got {image.dtype}")
    peak = 255.0 if bit_depth == 8 else 65535.0
    out = np.rint(np.clip(image, 0.0, 1.0) * peak)
    return out.astype(np.uint8 if bit_depth == 8 else np.uint16)


def _as_storage(image: np.ndarray, bit_depth: int | None, allowed: tuple[int, ...],
                fmt: str) -> np.ndarray:
    """Convert to the integer type the format stores: float is rounded; 16→8 bit is scaled."""
    if image.dtype.kind == "f":
        depth = bit_depth or allowed[0]
        if depth not in allowed:
            raise OutputError(f"{fmt} cannot store {depth}-bit images")
        return from_float(image, depth)
    depth = bit_depth or (16 if image.dtype == np.uint16 else 8)
    if depth not in allowed:
        depth = allowed[0] if image.dtype == np.uint8 else max(allowed)
    if image.dtype == np.uint16 and depth == 8:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if image.dtype == np.uint8 and depth == 16:
        return image.astype(np.uint16) * 257
    if image.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"unsupported image dtype {image.dtype}")
    return image


def write_image(path: str | Path, image: np.ndarray, *, quality: int = 95,
                bit_depth: int | None = None) -> Path:
    """Write an image atomically; the format follows the extension.

    ``image`` is ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` in RGB order: ``uint8``, ``uint16``, or
    float in ``[0, 1]`` (rounded to ``bit_depth`` bits: 8 by default, 16 for TIFF). PNG and TIFF
    store 8 or 16 bits; JPEG, BMP and WebP store 8 (``quality`` 1–100 for JPEG and WebP).
    """
    path = Path(path)
    image = check_image_array(image)
    check_range(quality, 1, 100, "quality")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise OutputError(f"{path}: cannot write images of type {ext or '(no extension)'!r}; "
                          f"use one of {' '.join(sorted(IMAGE_EXTENSIONS))}")
    with atomic_output(path) as tmp:
        if ext in (".tif", ".tiff"):
            data = _as_storage(image, bit_depth, (16, 8), "TIFF")
            photometric = "minisblack" if data.ndim == 2 else "rgb"
            extrasamples = ("unassalpha",) if data.ndim == 3 and data.shape[2] == 4 else None
            tifffile.imwrite(tmp, data, photometric=photometric, compression="zlib",
                             extrasamples=extrasamples)
        elif ext == ".png":
            data = _as_storage(image, bit_depth, (8, 16), "PNG")
            if data.dtype == np.uint16:
                bgr = data if data.ndim == 2 else cv2.cvtColor(
                    data, cv2.COLOR_RGBA2BGRA if data.shape[2] == 4 else cv2.COLOR_RGB2BGR)
                if not cv2.imwrite(str(tmp), bgr):
                    raise OutputError(f"{path}: PNG encoder failed")
            else:
                Image.fromarray(data).save(tmp, format="PNG", compress_level=6)
        else:
            data = _as_storage(image, 8, (8,), ext.upper()[1:])
            if ext in (".jpg", ".jpeg"):
                if data.ndim == 3 and data.shape[2] == 4:
                    data = data[:, :, :3]
                Image.fromarray(data).save(tmp, format="JPEG", quality=int(quality),
                                           subsampling=0 if quality >= 90 else 2)
            elif ext == ".webp":
                Image.fromarray(data).save(tmp, format="WEBP", quality=int(quality),
                                           lossless=quality >= 100)
            else:
                if data.ndim == 3 and data.shape[2] == 4:
                    data = data[:, :, :3]
                Image.fromarray(data).save(tmp, format="BMP")
    return path
