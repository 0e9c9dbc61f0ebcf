"""Simulation: degrade a clean image the way a task expects, so a restoration can be scored against
the original. Used by the demo, the GUI's simulate mode and ``restore batch --simulate``.

A degradation is written ``mosaic[:SIGMA]`` (Bayer RGGB mosaic plus Gaussian noise σ in 8-bit
units), ``jpeg:QUALITY`` or ``downscale:FACTOR`` (MATLAB bicubic).

>>> parse_degradation("jpeg:20")
Degradation(kind='jpeg', sigma=0.0, quality=20, factor=4, pattern='RGGB')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from restore_app.core.cfa import PATTERNS, channel_masks
from restore_app.core.checks import check_choice, check_range
from restore_app.core.degrade import add_gaussian_noise, downsample, jpeg_compress, mosaic
from restore_app.core.errors import InputError

KINDS = ("mosaic", "jpeg", "downscale")
#: The task whose models undo each degradation.
TASK_OF = {"mosaic": "demosaic", "jpeg": "jpeg", "downscale": "vsr"}


@dataclass(frozen=True)
class Degradation:
    kind: str
    sigma: float = 0.0    # mosaic: noise σ in 8-bit units
    quality: int = 20     # jpeg
    factor: int = 4       # downscale
    pattern: str = "RGGB"

    def __post_init__(self) -> None:
        check_choice(self.kind, KINDS, "degradation")
        check_range(self.sigma, 0.0, 255.0, "sigma")
        check_range(self.quality, 1, 100, "quality")
        check_range(self.factor, 2, 8, "factor")
        check_choice(self.pattern, PATTERNS, "pattern")

    @property
    def task(self) -> str:
        return TASK_OF[self.kind]

    def describe(self) -> str:
        if self.kind == "mosaic":
            return f"{self.pattern} mosaic" + (f" + noise σ={self.sigma:g}/255" if self.sigma else "")
        if self.kind == "jpeg":
            return f"JPEG quality {self.quality}"
        return f"bicubic downscale ×{self.factor}"


def parse_degradation(text: str) -> Degradation:
    """Parse ``mosaic[:SIGMA]``, ``jpeg:QUALITY`` or ``downscale:FACTOR``."""
    kind, _, arg = text.strip().lower().partition(":")
    try:
        if kind == "mosaic":
            return Degradation("mosaic", sigma=float(arg) if arg else 0.0)
        if kind == "jpeg":
            return Degradation("jpeg", quality=int(arg) if arg else 20)
        if kind == "downscale":
            return Degradation("downscale", factor=int(arg) if arg else 4)
    except ValueError as exc:
        raise InputError(f"bad degradation {text!r}: {exc}") from exc
    raise InputError(f"unknown degradation {text!r}; use mosaic[:SIGMA], jpeg:QUALITY or downscale:FACTOR")


@dataclass(frozen=True)
class Simulated:
    """A simulated input: what the model gets, what a person sees, and the reference to score against."""

    model_input: np.ndarray   # mosaic (H, W), JPEG-decoded or downscaled image, float in [0, 1]
    display: np.ndarray       # the degraded image as a person sees it, at the reference's size
    reference: np.ndarray     # the clean image, cropped to what the degradation keeps
    sigma: float | None       # the noise σ in [0, 1] units the model may be told (mosaic)


def simulate(clean: np.ndarray, degradation: Degradation, seed: int = 0) -> Simulated:
    """Degrade a clean float RGB (or grey) image in [0, 1]."""
    d = degradation
    if d.kind == "mosaic":
        if clean.ndim != 3 or clean.shape[2] < 3:
            raise InputError("mosaic simulation needs a colour image")
        ref = np.ascontiguousarray(clean[..., :3])
        m = mosaic(ref, d.pattern)
        if d.sigma:
            m = add_gaussian_noise(m, d.sigma / 255.0, seed=seed)
        masks = np.moveaxis(channel_masks(*m.shape, d.pattern), 0, -1)
        display = np.clip(masks * m[..., None], 0, 1).astype(np.float32)
        return Simulated(m, display, ref, d.sigma / 255.0)
    if d.kind == "jpeg":
        ref = clean[..., :3] if clean.ndim == 3 else clean
        degraded = jpeg_compress(np.ascontiguousarray(ref, dtype=np.float32), d.quality)
        return Simulated(degraded, degraded, ref, None)
    f = d.factor
    h, w = clean.shape[0] // f * f, clean.shape[1] // f * f
    if h == 0 or w == 0:
        raise InputError(f"image too small to downscale ×{f}")
    ref = np.ascontiguousarray(clean[:h, :w, :3] if clean.ndim == 3 else clean[:h, :w])
    low = np.clip(np.rint(downsample(ref, f) * 255) / 255, 0, 1).astype(np.float32)
    display = np.repeat(np.repeat(low, f, axis=0), f, axis=1)
    return Simulated(low, display, ref, None)
