"""Test helpers that make real files: DNGs written with tifffile, video clips encoded with ffmpeg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import tifffile

from restore_app.core.io.video import ffmpeg_exe

# XYZ (D65) → linear sRGB: as a DNG ColorMatrix1 it makes the camera's space linear sRGB.
XYZ_TO_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                        [-0.9692660, 1.8760108, 0.0415560],
                        [0.0556434, -0.2040259, 1.0572252]])
_CFA_CODES = {"R": 0, "G": 1, "B": 2}


def _srational(values, denom: int = 10000) -> tuple[int, ...]:
    out: list[int] = []
    for v in np.ravel(values):
        out += [int(round(float(v) * denom)), denom]
    return tuple(out)


def write_dng(path: Path, cfa: np.ndarray, pattern: str = "RGGB", black: int = 256, white: int = 4095,
              neutral: tuple[float, float, float] = (1.0, 1.0, 1.0),
              color_matrix: np.ndarray = XYZ_TO_SRGB,
              noise_profile: tuple[float, float] | None = None) -> Path:
    """Write a minimal CFA DNG (uint16 mosaic already offset by ``black``) that LibRaw reads."""
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),                       # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),                       # DNGBackwardVersion
        (33421, "H", 2, (2, 2), True),                             # CFARepeatPatternDim
        (33422, "B", 4, tuple(_CFA_CODES[c] for c in pattern), True),  # CFAPattern
        (50710, "B", 3, (0, 1, 2), True),                          # CFAPlaneColor
        (50711, "H", 1, 1, True),                                  # CFALayout
        (50714, "H", 1, black, True),                              # BlackLevel
        (50717, "H", 1, white, True),                              # WhiteLevel
        (50721, "2i", 9, _srational(color_matrix), True),          # ColorMatrix1
        (50728, "2I", 3, _srational(neutral), True),               # AsShotNeutral
        (50778, "H", 1, 21, True),                                 # CalibrationIlluminant1 = D65
        (271, "s", 0, "Restore", True),                            # Make
        (272, "s", 0, "TestCam", True),                            # Model
        (50708, "s", 0, "Restore TestCam", True),                  # UniqueCameraModel
    ]
    if noise_profile is not None:
        tags.append((51041, "d", 2, tuple(noise_profile), True))  # NoiseProfile (S, O)
    with tifffile.TiffWriter(path) as tif:
        tif.write(cfa.astype(np.uint16), photometric=32803, compression=None, subfiletype=0,
                  extratags=tags, metadata=None)
    return path


def make_clip(path: Path, seconds: float = 1.0, size: str = "96x64", rate: str = "10",
              audio: bool = True, extra: list[str] | None = None) -> Path:
    """Encode a test-pattern clip (and a sine tone) with the bundled ffmpeg."""
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}"]
    if audio:
        cmd += ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]
    if audio:
        cmd += ["-c:a", "aac", "-ac", "2"]
    cmd += (extra or []) + [str(path)]
    subprocess.run(cmd, check=True)
    return path


def smooth_rgb(h: int = 96, w: int = 128, seed: int = 0) -> np.ndarray:
    """A smooth float RGB image in [0.1, 0.9] (low-frequency cosines), easy to demosaic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    chans = []
    for _ in range(3):
        fy, fx, ph = rng.uniform(0.01, 0.04), rng.uniform(0.01, 0.04), rng.uniform(0, 6.28)
        chans.append(0.5 + 0.4 * np.cos(fy * yy * 3.1416 + fx * xx * 3.1416 + ph))
    return np.stack(chans, axis=-1).astype(np.float32)
