"""Every registered model, on a tiny input: builds, right shape, finite, tiled equals untiled."""

from __future__ import annotations

import numpy as np
import pytest

from restore_app.core.degrade import mosaic
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import default_registry
from tests.helpers import smooth_rgb

MANIFESTS = default_registry().manifests()


def _input(manifest):
    rgb = smooth_rgb(80, 112, seed=5)
    if manifest.input == "cfa":
        return mosaic(rgb, "RGGB")
    if manifest.output == "labels":
        yy, xx = np.mgrid[0:80, 0:112]
        img = np.full((80, 112, 3), 0.9, np.float32)
        img[(yy - 40) ** 2 + (xx - 50) ** 2 < 200] = (0.35, 0.2, 0.55)
        return img
    return rgb if 3 in manifest.channels else rgb[..., 1]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=[m.id for m in MANIFESTS])
def test_model_smoke(manifest):
    registry = default_registry()
    x = _input(manifest)
    whole = Restorer(registry.load(manifest), Engine(EngineConfig(device="cpu", tile=0)))
    sigma = 0.02 if "sigma" in manifest.conditioning else None
    out = whole.restore_image(x, sigma=sigma)
    h, w = x.shape[:2]
    s = manifest.scale
    if manifest.output == "labels":
        assert out.shape == (h, w) and out.dtype.kind == "i" and out.max() >= 1
        return
    expected_c = 3 if manifest.input == "cfa" or x.ndim == 3 else None
    assert out.shape[:2] == (h * s, w * s)
    assert (out.shape[2] if out.ndim == 3 else None) == expected_c
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    if manifest.tileable:
        tiled = Restorer(registry.load(manifest), Engine(EngineConfig(device="cpu", tile=32)))
        assert np.abs(tiled.restore_image(x, sigma=sigma) - out).max() <= 1 / 255
