"""Shared fixtures. Qt runs offscreen (assigned, not setdefault: an empty value would abort Qt)."""

from __future__ import annotations

import os

os.environ["QT_QPA_PLATFORM"] = "offscreen"

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from restore_app.core.io import read_image  # noqa: E402
from restore_app.core.paths import datasets_dir, resources_dir  # noqa: E402


@pytest.fixture(scope="session")
def datasets() -> Path:
    """``../shared/datasets`` (or ``RESTORE_DATA``); tests needing it skip when it is absent."""
    path = datasets_dir()
    if path is None:
        pytest.skip("shared datasets not found (set RESTORE_DATA or provide ../shared/datasets)")
    return path


@pytest.fixture(scope="session")
def coffee() -> np.ndarray:
    """The bundled CC0 sample, 400×600 RGB uint8."""
    return read_image(resources_dir() / "samples" / "coffee.png")


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """The bundled public-domain sample, 512×512 RGB uint8."""
    return read_image(resources_dir() / "samples" / "astronaut.png")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
