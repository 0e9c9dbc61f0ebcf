"""Colour conversions: BT.601 luma as MATLAB's ``rgb2ycbcr``, YCbCr round trips, sRGB gamma."""

from __future__ import annotations

import numpy as np
import torch

_Y = (65.481, 128.553, 24.966)
_CB = (-37.797, -74.203, 112.0)
_CR = (112.0, -93.786, -18.214)
LUMA = (np.array(_Y, dtype=np.float64) / 219.0).astype(np.float32)  # full-range BT.601 weights (0.299, 0.587, 0.114)


def rgb_to_y(x, data_range: float = 1.0):
    """BT.601 luma as MATLAB ``rgb2ycbcr`` (Y in [16, 235]/255 of ``data_range``), not rounded.

    ``x`` is a tensor ``(..., 3, H, W)`` or a numpy array ``(H, W, 3)``; the result drops the
    channel axis for numpy and keeps it (size 1) for torch.
    """
    if isinstance(x, torch.Tensor):
        r, g, b = x.unbind(dim=-3)
        y = (16.0 * data_range + _Y[0] * r + _Y[1] * g + _Y[2] * b) / 255.0
        return y.unsqueeze(-3)
    x = np.asarray(x, dtype=np.float64)
    return (16.0 * data_range + x[..., 0] * _Y[0] + x[..., 1] * _Y[1] + x[..., 2] * _Y[2]) / 255.0


def rgb_to_ycbcr(x: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` float RGB in [0, 1] to YCbCr in [0, 1] (MATLAB ``rgb2ycbcr`` / 255)."""
    x = np.asarray(x, dtype=np.float32)
    m = np.array([_Y, _CB, _CR], dtype=np.float32) / 255.0
    return x @ m.T + np.array([16, 128, 128], dtype=np.float32) / 255.0


def ycbcr_to_rgb(x: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr`."""
    m = np.array([_Y, _CB, _CR], dtype=np.float64) / 255.0
    inv = np.linalg.inv(m).astype(np.float32)
    return (np.asarray(x, dtype=np.float32) - np.array([16, 128, 128], dtype=np.float32) / 255.0) @ inv.T


def srgb_gamma(linear: np.ndarray) -> np.ndarray:
    """Encode linear light in [0, 1] with the sRGB transfer curve."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def srgb_linear(encoded: np.ndarray) -> np.ndarray:
    """Decode sRGB-encoded values in [0, 1] to linear light."""
    x = np.clip(encoded, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, np.power((x + 0.055) / 1.055, 2.4)).astype(np.float32)


def srgb_gamma_slope(linear: np.ndarray) -> np.ndarray:
    """Derivative of :func:`srgb_gamma`: how much encoding scales a small (noise) deviation."""
    x = np.clip(linear, 0.0, 1.0)
    safe = np.maximum(x, 0.0031308)
    return np.where(x <= 0.0031308, 12.92, 1.055 / 2.4 * np.power(safe, 1 / 2.4 - 1)).astype(np.float32)
