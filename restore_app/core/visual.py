"""Pictures for people: side-by-side comparison strips and error heat-maps (uint8 RGB arrays)."""

from __future__ import annotations

import cv2
import numpy as np


def to_u8(img: np.ndarray) -> np.ndarray:
    """Float in [0, 1] (or uint8/uint16) to ``uint8`` RGB; grey becomes three equal channels."""
    if img.dtype == np.uint8:
        u8 = img
    elif img.dtype == np.uint16:
        u8 = (img.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    else:
        u8 = np.rint(np.clip(img, 0, 1) * 255).astype(np.uint8)
    if u8.ndim == 2:
        u8 = np.repeat(u8[..., None], 3, axis=2)
    return np.ascontiguousarray(u8[..., :3])


def heatmap(error: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Colour an ``(H, W)`` error map (turbo colour map, 0 → blue, ``vmax`` → red) as uint8 RGB.

    ``vmax`` defaults to the 99th percentile, so a few outliers do not wash the map out.
    """
    err = np.asarray(error, dtype=np.float32)
    top = float(np.percentile(err, 99)) if vmax is None else float(vmax)
    scaled = np.clip(err / top, 0, 1) if top > 0 else np.zeros_like(err)
    bgr = cv2.applyColorMap(np.rint(scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def comparison_strip(panels: list[tuple[str, np.ndarray]], height: int = 360) -> np.ndarray:
    """Side-by-side ``uint8`` RGB panels of equal height with a caption bar over each."""
    out = []
    for caption, img in panels:
        u8 = to_u8(img)
        w = max(1, round(u8.shape[1] * height / u8.shape[0]))
        interp = cv2.INTER_NEAREST if u8.shape[0] < height else cv2.INTER_AREA
        panel = cv2.resize(u8, (w, height), interpolation=interp)
        bar = np.full((28, w, 3), 32, np.uint8)
        cv2.putText(bar, caption, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (235, 235, 235), 1, cv2.LINE_AA)
        out.append(np.concatenate([bar, panel], axis=0))
        out.append(np.full((height + 28, 4, 3), 255, np.uint8))
    return np.concatenate(out[:-1], axis=1)
