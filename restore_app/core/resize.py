"""MATLAB-compatible bicubic resizing (``imresize``), for numpy arrays and torch tensors.

Cubic kernel with a = -0.5, antialiasing when shrinking (the kernel is stretched by 1/scale),
symmetric padding at the borders, output size ``ceil(in * scale)``. The weights are computed once in
numpy and applied along each axis, height first, so numpy and torch give the same numbers.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from restore_app.core.checks import check_range


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax ** 2, ax ** 3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


@lru_cache(maxsize=64)
def resize_weights(in_len: int, out_len: int, scale: float,
                   antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(out_len, P)`` and source indices ``(out_len, P)`` of a 1-D MATLAB bicubic resize."""
    kernel_width = 4.0
    shrink = scale < 1 and antialias
    if shrink:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(distance * scale) if shrink else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    keep = np.any(weights != 0, axis=0)
    weights, indices = weights[:, keep], indices[:, keep]
    # symmetric padding, as MATLAB: 1..L then L..1, repeated
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    return weights.astype(np.float64), indices


def _apply_axis(x, weights: np.ndarray, indices: np.ndarray, axis: int):
    if isinstance(x, torch.Tensor):
        w = torch.as_tensor(weights, dtype=x.dtype if x.is_floating_point() else torch.float32,
                            device=x.device)
        idx = torch.as_tensor(indices, device=x.device)
        shape = [1] * x.ndim
        shape[axis] = weights.shape[0]
        out = None
        for p in range(weights.shape[1]):
            term = x.index_select(axis, idx[:, p]) * w[:, p].reshape(shape)
            out = term if out is None else out + term
        return out
    shape = [1] * x.ndim
    shape[axis] = weights.shape[0]
    out = np.zeros_like(np.take(x, indices[:, 0], axis=axis), dtype=np.float64)
    for p in range(weights.shape[1]):
        out += np.take(x, indices[:, p], axis=axis) * weights[:, p].reshape(shape)
    return out


def imresize(x, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True):
    """Resize like MATLAB's ``imresize(x, scale, 'bicubic')``.

    ``x`` is a numpy array ``(H, W)`` / ``(H, W, C)`` (returned as ``float32``, not clipped or
    rounded) or a torch tensor ``(..., H, W)`` (same dtype). Give ``scale`` or ``size=(H', W')``.

    >>> imresize(np.ones((8, 8), np.float32), 0.5).shape
    (4, 4)
    """
    is_torch = isinstance(x, torch.Tensor)
    h_axis, w_axis = (x.ndim - 2, x.ndim - 1) if is_torch else (0, 1)
    h, w = x.shape[h_axis], x.shape[w_axis]
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale and size")
    if scale is not None:
        check_range(scale, 1e-3, 1e3, "scale")
        out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
        sy = sx = float(scale)
    else:
        out_h, out_w = int(size[0]), int(size[1])
        sy, sx = out_h / h, out_w / w
    if not is_torch:
        x = np.asarray(x, dtype=np.float64)
    for axis, n_in, n_out, s in ((h_axis, h, out_h, sy), (w_axis, w, out_w, sx)):
        if n_in != n_out:
            wts, idx = resize_weights(n_in, n_out, s, antialias)
            x = _apply_axis(x, wts, idx, axis)
    return x if is_torch else x.astype(np.float32)
