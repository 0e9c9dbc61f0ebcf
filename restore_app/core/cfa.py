"""Bayer colour-filter-array patterns.

A pattern names the colours of the mosaic's top-left 2×2 block in reading order: ``"RGGB"`` is
R G / G B. Models take RGGB mosaics; the other three are handled by shifting the packing with
:func:`to_rggb` / :func:`from_rggb` (reflect padding by one row or column keeps the 2-periodicity).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from restore_app.core.checks import check_choice

PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_CHANNEL = {"R": 0, "G": 1, "B": 2}


def channel_map(pattern: str) -> np.ndarray:
    """The 2×2 block of channel indices (R=0, G=1, B=2) of ``pattern``.

    >>> channel_map("GRBG").tolist()
    [[1, 0], [2, 1]]
    """
    check_choice(pattern, PATTERNS, "pattern")
    return np.array([[_CHANNEL[pattern[0]], _CHANNEL[pattern[1]]],
                     [_CHANNEL[pattern[2]], _CHANNEL[pattern[3]]]])


def channel_masks(height: int, width: int, pattern: str) -> np.ndarray:
    """``(3, H, W)`` boolean masks of where each of R, G, B is sampled."""
    cmap = channel_map(pattern)
    idx = np.tile(cmap, ((height + 1) // 2, (width + 1) // 2))[:height, :width]
    return np.stack([idx == c for c in range(3)])


def rggb_offset(pattern: str) -> tuple[int, int]:
    """``(dy, dx)``: padding on top and left that turns a ``pattern`` mosaic into an RGGB one."""
    cmap = channel_map(pattern)
    ry, rx = np.argwhere(cmap == 0)[0]
    return int(ry), int(rx)


def to_rggb(mosaic: torch.Tensor, pattern: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Reflect-pad a ``(B, 1, H, W)`` mosaic so it is RGGB with even height and width.

    Returns the padded mosaic and the crop ``(top, left, H, W)`` that :func:`from_rggb` undoes.
    Reflection (not replication) keeps each padded sample the colour its position implies.
    """
    dy, dx = rggb_offset(pattern)
    h, w = mosaic.shape[-2:]
    bottom = (h + dy) % 2
    right = (w + dx) % 2
    if min(h, w) < 2:
        raise ValueError(f"mosaic too small to shift: {h}×{w}")
    if dy or dx or bottom or right:
        mosaic = F.pad(mosaic, (dx, right, dy, bottom), mode="reflect")
    return mosaic, (dy, dx, h, w)


def from_rggb(image: torch.Tensor, crop: tuple[int, int, int, int]) -> torch.Tensor:
    """Undo :func:`to_rggb` on a full-resolution ``(B, C, H', W')`` result."""
    top, left, h, w = crop
    return image[..., top:top + h, left:left + w]
