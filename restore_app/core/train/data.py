"""Training images in memory, random patches, and the augmentations every task shares."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from restore_app.core.color import LUMA
from restore_app.core.degrade import downsample
from restore_app.core.errors import InputError
from restore_app.core.evaluate import list_images
from restore_app.core.io import read_image, to_float, to_rgb
from restore_app.core.paths import datasets_root


def bsds_train_val() -> tuple[Path, ...]:
    """The default training images: BSDS500 train and val from the shared datasets."""
    root = datasets_root()
    return (root / "bsds500" / "train", root / "bsds500" / "val")


def image_files(folders: Sequence[Path], exclude: Collection[Path] = ()) -> list[Path]:
    """Image files directly in ``folders`` (natural order), less the ``exclude`` paths."""
    skip = {Path(p).resolve() for p in exclude}
    return [p for folder in folders for p in list_images(Path(folder)) if p.resolve() not in skip]


def load_images(paths: Sequence[Path], downscale: int = 1) -> list[np.ndarray]:
    """Read images as float RGB in [0, 1], shrunk ×``downscale`` with MATLAB bicubic.

    Shrinking by 2 or more removes the traces of the camera's own demosaicing and JPEG, so they do
    not become part of the "clean" target.
    """
    if not paths:
        raise InputError("no training images given")
    images = []
    for path in paths:
        img = to_float(to_rgb(read_image(path)))
        if downscale > 1:
            img = np.clip(downsample(img, downscale), 0.0, 1.0)
        images.append(np.ascontiguousarray(img, dtype=np.float32))
    return images


def dihedral(patch: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of a square patch (``k`` in 0..7)."""
    out = np.rot90(patch, k % 4)
    return out[:, ::-1] if k >= 4 else out


def saturate(rgb: np.ndarray, gain: float, contrast: float = 1.0) -> np.ndarray:
    """``rgb`` with its chroma (the difference from BT.601 luma) scaled by ``gain`` and its luma's
    contrast about its mean scaled by ``contrast``, clipped to [0, 1]. Both make edges between colours
    of similar brightness, where the colour channels vary apart (as in McMaster's images)."""
    luma = rgb @ LUMA
    chroma = rgb - luma[..., None]
    if contrast != 1.0:
        mean = luma.mean()
        luma = mean + np.float32(contrast) * (luma - mean)
    return np.clip(luma[..., None] + np.float32(gain) * chroma, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Jitter:
    """Photometric augmentation: exposure gain (log-uniform in ``[1/exposure, exposure]``) and
    per-channel colour gains in ``[1 - colour, 1 + colour]``, clipped to [0, 1]; with probability
    ``saturation_prob``, chroma scaled by a gain uniform in ``[1, saturation]`` and luma contrast by
    one uniform in ``[luma_contrast, 1]`` (:func:`saturate`: vivid, weakly correlated colour channels,
    which natural photo sets hold few of)."""

    exposure: float = 1.4
    colour: float = 0.15
    saturation: float = 1.0
    saturation_prob: float = 0.0
    luma_contrast: float = 1.0

    def __call__(self, patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        gain = np.exp(rng.uniform(-np.log(self.exposure), np.log(self.exposure)))
        if patch.ndim == 3 and self.colour > 0:
            gain = gain * rng.uniform(1 - self.colour, 1 + self.colour, size=patch.shape[2])
        out = np.clip(patch * np.float32(1) * gain, 0.0, 1.0).astype(np.float32)
        if patch.ndim == 3 and self.saturation > 1 and rng.random() < self.saturation_prob:
            chroma_gain = rng.uniform(1.0, self.saturation)
            # drawn only when asked for, so recipes without it keep their random streams
            contrast = rng.uniform(self.luma_contrast, 1.0) if self.luma_contrast < 1 else 1.0
            out = saturate(out, chroma_gain, contrast)
        return out


class PatchSampler:
    """Random ``size``×``size`` patches from a pool of images, weighted by image area, with the 8
    dihedral transforms and an optional :class:`Jitter`."""

    def __init__(self, images: list[np.ndarray], size: int, jitter: Jitter | None = None) -> None:
        self.images = [im for im in images if min(im.shape[:2]) >= size]
        if not self.images:
            raise InputError(f"no training image is at least {size}×{size} pixels")
        areas = np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.size = size
        self.jitter = jitter

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        img = self.images[rng.choice(len(self.images), p=self.weights)]
        y = rng.integers(0, img.shape[0] - self.size + 1)
        x = rng.integers(0, img.shape[1] - self.size + 1)
        patch = dihedral(img[y:y + self.size, x:x + self.size], int(rng.integers(8)))
        if self.jitter is not None:
            patch = self.jitter(patch, rng)
        return np.ascontiguousarray(patch, dtype=np.float32)


def dead_leaves(rng: np.random.Generator, size: int) -> np.ndarray:
    """A synthetic "dead leaves" patch (``size``×``size`` RGB in [0, 1]): occluding ellipses and
    polygons of log-uniform size (many scales at once), drawn at twice the size and shrunk ×2 with
    MATLAB bicubic like the training photos.

    Half the patches take their colours from one brightness with random chroma, the rest uniformly
    from the RGB cube, so they are dense in what photo sets hold few of: sharp edges between saturated
    colours of similar brightness, corners and thin shapes in any orientation. Each shape is flat or
    shaded by a linear ramp. (Tried for the demosaicer at 20 % of patches: worse on every validation
    term; see ``models/restore-dm/CARD.md``.)"""
    big = 2 * size
    equal_luma = rng.random() < 0.5
    base = rng.uniform(0.2, 0.8)

    def colour() -> np.ndarray:
        if not equal_luma:
            return rng.uniform(0, 1, 3)
        chroma = rng.normal(size=3)
        chroma -= (chroma @ LUMA) * np.ones(3) / LUMA.sum()  # no luma of its own
        chroma *= rng.uniform(0, 0.35) / max(np.linalg.norm(chroma), 1e-6)
        return np.clip(base + rng.normal(0, 0.06) + chroma, 0, 1)

    canvas = np.empty((big, big, 3), np.float32)
    canvas[:] = colour()
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    for _ in range(int(rng.integers(60, 160))):
        r = np.exp(rng.uniform(np.log(3.0), np.log(big * 0.5)))
        cx, cy = rng.uniform(-0.1, 1.1, 2) * big
        mask = np.zeros((big, big), np.uint8)
        if rng.random() < 0.6:
            axes = (max(1, int(r)), max(1, int(r * rng.uniform(0.2, 1.0))))
            cv2.ellipse(mask, (int(cx), int(cy)), axes, rng.uniform(0, 180), 0, 360, 1, -1)
        else:
            n = int(rng.integers(3, 6))
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radii = r * rng.uniform(0.4, 1.0, n)
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
            cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 1)
        inside = mask.astype(bool)
        if not inside.any():
            continue
        fill = colour().astype(np.float32)
        if rng.random() < 0.4:  # shaded: a linear ramp across the patch
            gx, gy = rng.normal(0, 0.3, 2)
            ramp = 1 + gx * (xx[inside] - cx / big) + gy * (yy[inside] - cy / big)
            canvas[inside] = np.clip(fill[None] * ramp[:, None], 0, 1)
        else:
            canvas[inside] = fill
    return np.clip(downsample(canvas, 2), 0.0, 1.0).astype(np.float32)
