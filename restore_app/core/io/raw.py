"""Camera RAW files (DNG and every format LibRaw reads, through rawpy) as a CFA mosaic with metadata.

Only the sensor data and the numbers needed to develop it are read here; developing (black/white
levels, white balance, demosaicing, colour matrix, gamma) is :func:`restore_app.core.pipeline.develop_raw`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from restore_app.core.cfa import PATTERNS
from restore_app.core.errors import InputError

# Linear sRGB (D65) to XYZ, as dcraw's xyz_rgb.
SRGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])


@dataclass(frozen=True)
class RawImage:
    """A Bayer mosaic as stored by the camera, with what is needed to develop it.

    ``mosaic`` is ``(H, W)`` ``uint16`` (the visible area); ``pattern`` names its top-left 2×2 block
    (``"RGGB"``, ``"BGGR"``, ``"GRBG"`` or ``"GBRG"``); ``black_level`` is the 2×2 block of black
    levels at the same positions; ``wb_multipliers`` are (R, G, B) gains with G = 1;
    ``cam_to_srgb`` maps white-balanced camera RGB to linear sRGB. ``noise_profile`` is the DNG
    NoiseProfile ``(S, O)`` when the file has one: the noise variance of a normalized value ``x`` is
    ``S·x + O``.
    """

    mosaic: np.ndarray
    pattern: str
    black_level: np.ndarray
    white_level: float
    wb_multipliers: tuple[float, float, float]
    cam_to_srgb: np.ndarray
    path: Path | None = None
    noise_profile: tuple[float, float] | None = None
    metadata: dict = field(default_factory=dict)

    def normalized(self) -> np.ndarray:
        """The mosaic as ``float32`` with black at 0 and white at 1 (not clipped, not balanced)."""
        h, w = self.mosaic.shape
        black = np.tile(self.black_level.astype(np.float32), ((h + 1) // 2, (w + 1) // 2))[:h, :w]
        scale = np.float32(self.white_level) - black
        return (self.mosaic.astype(np.float32) - black) / np.maximum(scale, 1.0)


def cam_to_srgb_from_xyz(xyz_to_cam: np.ndarray) -> np.ndarray:
    """dcraw's construction: rows of camera←sRGB normalised to 1, then inverted."""
    cam_rgb = xyz_to_cam[:3, :3] @ SRGB_TO_XYZ
    cam_rgb = cam_rgb / cam_rgb.sum(axis=1, keepdims=True)
    return np.linalg.inv(cam_rgb)


def dng_noise_profile(path: Path) -> tuple[float, float] | None:
    """The DNG NoiseProfile tag (51041) as ``(S, O)``, averaged over planes; ``None`` if absent."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                tag = page.tags.get(51041)
                if tag is not None:
                    values = np.asarray(tag.value, dtype=np.float64).reshape(-1, 2)
                    return float(values[:, 0].mean()), float(values[:, 1].mean())
    except Exception:  # a RAW format tifffile cannot parse simply has no DNG profile
        return None
    return None


def read_raw(path: str | Path) -> RawImage:
    """Read a camera RAW file with LibRaw (rawpy).

    Raises :class:`InputError` naming the file if it is missing, empty, not a RAW file LibRaw
    understands, or not a 2×2 Bayer sensor (X-Trans and Foveon are not supported).
    """
    import rawpy  # imported here: LibRaw is only needed for RAW files

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    try:
        with rawpy.imread(str(path)) as raw:
            if raw.raw_type != rawpy.RawType.Flat:
                raise InputError(f"{path}: not a single-plane CFA raw file (already demosaiced?)")
            colors = np.asarray(raw.raw_colors_visible)
            desc = raw.color_desc.decode("ascii", "replace")
            if colors.shape[0] < 2 or colors.shape[1] < 2:
                raise InputError(f"{path}: image too small")
            block = colors[:2, :2]
            pattern = "".join(desc[i] for i in block.ravel())
            h4, w4 = min(4, colors.shape[0]), min(4, colors.shape[1])
            period_ok = (raw.raw_pattern.shape == (2, 2)
                         and np.array_equal(np.tile(block, (2, 2))[:h4, :w4], colors[:h4, :w4]))
            if pattern not in PATTERNS or not period_ok:
                raise InputError(f"{path}: unsupported colour filter array ({raw.raw_pattern.shape[0]}×"
                                 f"{raw.raw_pattern.shape[1]} pattern {desc!r}); only 2×2 Bayer sensors "
                                 f"are supported")
            mosaic = np.array(raw.raw_image_visible, dtype=np.uint16, copy=True)
            black_per_color = np.asarray(raw.black_level_per_channel, dtype=np.float64)
            black = black_per_color[block]
            white = float(raw.white_level)
            wb = np.asarray(raw.camera_whitebalance, dtype=np.float64)
            if not np.all(wb[:3] > 0):
                wb = np.asarray(raw.daylight_whitebalance, dtype=np.float64)
            idx = {c: desc.index(c) for c in "RGB"}
            if np.all(wb[:3] > 0):
                gains = (wb[idx["R"]] / wb[idx["G"]], 1.0, wb[idx["B"]] / wb[idx["G"]])
            else:
                gains = (1.0, 1.0, 1.0)
            color_matrix = np.asarray(raw.color_matrix, dtype=np.float64)[:3, :3]
            xyz_cam = np.asarray(raw.rgb_xyz_matrix, dtype=np.float64)[:3, :3]
            if np.any(color_matrix):
                cam_to_srgb = color_matrix[:, [idx["R"], idx["G"], idx["B"]]]
            elif np.any(xyz_cam):
                cam_to_srgb = cam_to_srgb_from_xyz(xyz_cam)
            else:
                cam_to_srgb = np.eye(3)
            metadata = {"color_desc": desc, "raw_pattern": raw.raw_pattern.tolist()}
    except InputError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read as camera RAW ({type(exc).__name__}: {exc})") from exc
    profile = dng_noise_profile(path) if path.suffix.lower() == ".dng" else None
    return RawImage(mosaic=mosaic, pattern=pattern, black_level=black, white_level=white,
                    wb_multipliers=tuple(float(g) for g in gains), cam_to_srgb=cam_to_srgb,
                    path=path, noise_profile=profile, metadata=metadata)
