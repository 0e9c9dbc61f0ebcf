"""Synthetic degradations, one function each, shared by simulation, training and evaluation.

Images are numpy arrays ``(H, W)`` or ``(H, W, C)``: float in ``[0, 1]`` (returned as ``float32``)
or ``uint8`` where stated. Random functions take ``seed`` (an int, a ``numpy.random.Generator`` or
``None``) so every result can be reproduced.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from restore_app.core.cfa import channel_masks
from restore_app.core.checks import check_choice, check_image_array, check_range
from restore_app.core.errors import InputError
from restore_app.core.resize import imresize

Seed = int | np.random.Generator | None


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def mosaic(rgb: np.ndarray, pattern: str = "RGGB") -> np.ndarray:
    """Sample an ``(H, W, 3)`` RGB image through a Bayer filter: ``(H, W)`` of the same dtype.

    >>> mosaic(np.arange(12, dtype=np.float32).reshape(2, 2, 3)).tolist()  # R G / G B
    [[0.0, 4.0], [7.0, 11.0]]
    """
    rgb = check_image_array(rgb, "rgb")
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise InputError(f"mosaic needs an (H, W, 3) RGB image; got {rgb.shape}")
    masks = channel_masks(rgb.shape[0], rgb.shape[1], pattern)
    return (rgb * np.moveaxis(masks, 0, -1)).sum(axis=2).astype(rgb.dtype)


def add_gaussian_noise(image: np.ndarray, sigma: float, seed: Seed = None,
                       clip: bool = False) -> np.ndarray:
    """Add white Gaussian noise of standard deviation ``sigma`` (in units of the [0, 1] range)."""
    check_range(sigma, 0.0, None, "sigma")
    x = np.asarray(image, dtype=np.float32)
    out = x + _rng(seed).standard_normal(x.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(out, 0.0, 1.0) if clip else out


def add_poisson_gaussian_noise(image: np.ndarray, shot: float, read: float, seed: Seed = None,
                               clip: bool = False) -> np.ndarray:
    """Sensor noise: Poisson shot noise of gain ``shot`` plus Gaussian read noise of std ``read``.

    The clean value ``x`` becomes ``shot * Poisson(x / shot) + N(0, read²)``, so the variance is
    ``shot * x + read²`` (the Poisson-Gaussian model of Foi et al. 2008).
    """
    check_range(shot, 0.0, None, "shot")
    check_range(read, 0.0, None, "read")
    rng = _rng(seed)
    x = np.clip(np.asarray(image, dtype=np.float32), 0.0, None)
    out = (rng.poisson(x / shot).astype(np.float32) * np.float32(shot)) if shot > 0 else x.copy()
    out += rng.standard_normal(x.shape, dtype=np.float32) * np.float32(read)
    return np.clip(out, 0.0, 1.0) if clip else out


def jpeg_compress(image: np.ndarray, quality: int, subsampling: str = "420") -> np.ndarray:
    """Encode and decode with OpenCV's JPEG at ``quality`` (1–100); returns the input's dtype.

    Colour images use chroma ``subsampling`` "420" (OpenCV's default), "422" or "444". Float input
    is rounded to 8 bits first.
    """
    check_range(quality, 1, 100, "quality")
    check_choice(subsampling, ("420", "422", "444"), "subsampling")
    image = check_image_array(image)
    is_float = image.dtype.kind == "f"
    u8 = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8) if is_float else image
    if u8.dtype != np.uint8:
        raise InputError(f"jpeg_compress needs uint8 or float input; got {image.dtype}")
    if u8.ndim == 3 and u8.shape[2] == 4:
        raise InputError("jpeg_compress takes grey or RGB, not RGBA")
    factor = {"420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "422": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_422,
              "444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}[subsampling]
    bgr = u8 if u8.ndim == 2 else cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                         cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])
    if not ok:
        raise RuntimeError("OpenCV JPEG encoder failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if dec.ndim == 3:
        dec = cv2.cvtColor(dec, cv2.COLOR_BGR2RGB)
    return dec.astype(np.float32) / 255.0 if is_float else dec


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Blur with a Gaussian of std ``sigma`` pixels (kernel ±3σ, reflected borders)."""
    check_range(sigma, 0.0, None, "sigma")
    x = np.asarray(image, dtype=np.float32)
    if sigma == 0:
        return x.copy()
    k = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(x, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)


def downsample(image: np.ndarray, factor: int, blur_sigma: float | None = None) -> np.ndarray:
    """Shrink by an integer ``factor`` with MATLAB bicubic (antialiased), after an optional blur.

    The result is ``float32``, not clipped or rounded; the output size is ``ceil(size / factor)``.
    """
    check_range(factor, 1, 64, "factor")
    x = np.asarray(image, dtype=np.float32)
    if blur_sigma:
        x = gaussian_blur(x, blur_sigma)
    return imresize(x, 1.0 / factor)


def upsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge by an integer ``factor`` with MATLAB bicubic (``float32``, not clipped)."""
    check_range(factor, 1, 64, "factor")
    return imresize(np.asarray(image, dtype=np.float32), float(factor))
