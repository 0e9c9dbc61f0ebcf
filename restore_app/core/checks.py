"""The one input-checking helper family used across the core.

They raise :class:`~restore_app.core.errors.InputError` (a ``ValueError``) or ``TypeError`` with the
offending value in the message. Never ``assert`` on user input: asserts vanish under ``python -O``.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

import numpy as np
import torch

from restore_app.core.errors import InputError

T = TypeVar("T")


def check_choice(value: T, choices: Collection[T], name: str) -> T:
    """Return ``value`` if it is one of ``choices``, else raise with the allowed values listed.

    >>> check_choice("RGGB", ("RGGB", "BGGR"), "pattern")
    'RGGB'
    """
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise InputError(f"{name} must be one of {allowed}; got {value!r}")
    return value


def check_range(value: float, low: float | None, high: float | None, name: str) -> float:
    """Return ``value`` if ``low <= value <= high`` (either bound may be ``None``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number; got {type(value).__name__}")
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise InputError(f"{name} must be in [{lo}, {hi}]; got {value}")
    return value


def check_tensor(x: Any, name: str = "input", ndim: int | Collection[int] | None = None,
                 channels: int | Collection[int] | None = None) -> torch.Tensor:
    """Check that ``x`` is a floating tensor of the given rank and channel count (dim 1 for 4-D/5-D).

    >>> check_tensor(torch.zeros(1, 3, 8, 8), ndim=4, channels=(1, 3)).shape
    torch.Size([1, 3, 8, 8])
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            raise InputError(f"{name} must have {' or '.join(map(str, allowed))} dimensions; "
                             f"got shape {tuple(x.shape)}")
    if channels is not None:
        allowed_c = (channels,) if isinstance(channels, int) else tuple(channels)
        c = x.shape[-3] if x.ndim >= 3 else None
        if c not in allowed_c:
            raise InputError(f"{name} must have {' or '.join(map(str, allowed_c))} channels; "
                             f"got shape {tuple(x.shape)}")
    return x


def check_image_array(x: Any, name: str = "image") -> np.ndarray:
    """Check a numpy image: ``(H, W)`` or ``(H, W, C)`` with C in 1, 3, 4, and non-empty."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array; got {type(x).__name__}")
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[2] not in (1, 3, 4)):
        raise InputError(f"{name} must have shape (H, W) or (H, W, C) with C in 1, 3, 4; "
                         f"got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"{name} is empty: shape {x.shape}")
    return x


def check_same_shape(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
                     names: tuple[str, str] = ("a", "b")) -> None:
    """Raise if two arrays or tensors differ in shape."""
    if tuple(a.shape) != tuple(b.shape):
        raise InputError(f"{names[0]} and {names[1]} must have the same shape; "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
