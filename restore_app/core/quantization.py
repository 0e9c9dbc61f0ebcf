"""The JPEG quantisation constraint: what a decoded JPEG still says about the original image.

A baseline JPEG stores each 8×8 block's DCT coefficients as integers ``k`` times an entry ``q`` of its
quantisation table, so the original's coefficient lay in ``[(k − ½)q, (k + ½)q]``. Clipping a
restored image's coefficients into those intervals (projection onto the quantisation constraint set;
Zakhor 1992, Yang, Galatsanos and Katsaggelos 1995) cannot move any coefficient further from the
original's, and the DCT is orthonormal, so it cannot move the image further away either. A network
that removes artifacts leaves some coefficients outside their interval; this puts them back, a
little inside the edge (``shrink``; strictly, only the plain projection, shrink 0, is guaranteed).

The models stay blind: the table is estimated from the decoded pixels themselves
(:func:`estimate_table`), where the coefficients of the luma's blocks sit on the lattice ``k·q`` up to
the decoder's rounding. A JPEG cropped afterwards has its grid elsewhere than at the top-left corner
(:func:`find_grid`); an image that was never a JPEG, or was resized after it, shows no lattice, and
then nothing is changed. Only the luma is constrained: with chroma subsampling the decoder's chroma
upsampling hides the chroma lattice, and a change added equally to R, G and B changes Y alone.
Training can go through the same clipping (:func:`intervals` with the encoder's own table, then the
differentiable :func:`clip_tensor`), so that the loss sees what the engine will give.

>>> table = estimate_table(decoded)                               # doctest: +SKIP
>>> fixed = apply_constraint(restored, decoded, shrink=0.1)       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from restore_app.core.checks import check_range
from restore_app.core.errors import InputError

BLOCK = 8
# IJG's (libjpeg's) luminance table at quality 50 (ITU-T T.81 Annex K), in natural order
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)
JFIF_LUMA = np.array([0.299, 0.587, 0.114])  # JPEG's Y (full range BT.601)

# table estimation: a lattice step is trusted only where the decoder's rounding (σ ≈ 0.3) cannot fake it
_TOL = 1.25        # how far from a multiple of q a coefficient may lie (decoder rounding)
_MIN_STEP = 5      # smaller steps could be matched by chance
_CHANCE = 1e-9     # how unlikely it must be that coefficients off any lattice fit a step this well
_MIN_SAMPLES = 8   # non-zero coefficients needed to trust a step, at least
_FIT = 0.95        # share of them that must lie on the lattice
_MIN_ENTRIES = 3   # measured entries needed to call an image a JPEG
_STRIP = 64        # block rows worked on at a time (bounded memory on large images)
_MAX_SAMPLES = 200  # enough: a step needs at most 30 (_CHANCE)
_CROP = 512        # side of the crop on which an off-corner grid is confirmed
_SPREAD_BLOCKS = 8192  # blocks a corner grid is measured on
# a grid that shows a lattice in this many of the 64 frequencies is the true one: on 1,680 crops 1–7
# pixels off the grid (35 BSDS500 test and Classic5 images, JPEG q10–95) the wrong grid showed at most 13
_SURE_ENTRIES = 32
MAX_SHRINK = 0.49  # the interval shrink may not close an interval


@lru_cache(maxsize=1)
def _dct_matrix() -> np.ndarray:
    """The 2-D DCT of an 8×8 block as one 64×64 matrix on the row-major flattened block."""
    n = np.arange(BLOCK)
    c = np.sqrt(2.0 / BLOCK) * np.cos((2 * n[None, :] + 1) * n[:, None] * np.pi / (2 * BLOCK))
    c[0] /= np.sqrt(2.0)
    return np.kron(c, c)


def ijg_table(quality: int) -> np.ndarray:
    """The luminance table libjpeg (and so OpenCV, Pillow, most software) writes at ``quality`` 1–100."""
    check_range(quality, 1, 100, "quality")
    return _ijg_tables()[quality - 1].copy()


@lru_cache(maxsize=1)
def _ijg_tables() -> np.ndarray:
    """:func:`ijg_table` at qualities 1–100, ``(100, 8, 8)``."""
    q = np.arange(1, 101)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)
    return np.clip((IJG_LUMA[None] * scale[:, None, None] + 50) // 100, 1, 255)


def luma(image: np.ndarray) -> np.ndarray:
    """JPEG's Y of a float image in [0, 1] (``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``), on the 0–255
    scale, in float32."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        return x * np.float32(255.0)
    r, g, b = (np.float32(255.0 * c) for c in JFIF_LUMA)
    return x[..., 0] * r + x[..., 1] * g + x[..., 2] * b


def block_dct(plane: np.ndarray) -> np.ndarray:
    """Orthonormal 2-D DCT (JPEG's FDCT) of the whole 8×8 blocks of ``plane`` from its top-left corner,
    level-shifted by 128: ``(H // 8, W // 8, 8, 8)``."""
    hb, wb = plane.shape[0] // BLOCK, plane.shape[1] // BLOCK
    blocks = plane[:hb * BLOCK, :wb * BLOCK].reshape(hb, BLOCK, wb, BLOCK).transpose(0, 2, 1, 3)
    coefs = (blocks.reshape(-1, BLOCK * BLOCK) - 128.0) @ _dct_matrix().astype(blocks.dtype).T
    return coefs.reshape(hb, wb, BLOCK, BLOCK)


def block_idct(coefs: np.ndarray) -> np.ndarray:
    """Inverse of :func:`block_dct` (without the level shift) as an ``(8·Hb, 8·Wb)`` plane."""
    hb, wb = coefs.shape[:2]
    blocks = (coefs.reshape(-1, BLOCK * BLOCK) @ _dct_matrix().astype(coefs.dtype)).reshape(hb, wb, BLOCK, BLOCK)
    return blocks.transpose(0, 2, 1, 3).reshape(hb * BLOCK, wb * BLOCK)


def _usable_blocks(decoded: np.ndarray) -> np.ndarray:
    """Blocks without clipped pixels (0 or 255 in any channel), whose coefficients the decoder's clipping
    did not move off the lattice: ``(H // 8, W // 8)`` bool."""
    x = np.asarray(decoded)
    x = x if x.ndim == 2 else x[..., :3]
    hb, wb = x.shape[0] // BLOCK, x.shape[1] // BLOCK
    channels = x.shape[2] if x.ndim == 3 else 1
    clipped = (x[:hb * BLOCK, :wb * BLOCK] < 0.5 / 255) | (x[:hb * BLOCK, :wb * BLOCK] > 254.5 / 255)
    # reduced along the contiguous last axis first (each block row's 8 pixels and their channels), then
    # over the block's 8 rows: four times faster on colour than one reduction over the strided axes
    in_rows = clipped.reshape(hb * BLOCK, wb, BLOCK * channels).any(axis=2)
    return ~in_rows.reshape(hb, BLOCK, wb).any(axis=1)


def _lattice_step(samples: np.ndarray) -> int:
    """The largest step ``q`` whose multiples hold the non-zero ``samples``, or 0 when none can be trusted."""
    samples = samples[np.abs(samples) > _TOL]
    if samples.size < _MIN_SAMPLES:
        return 0
    if samples.size > _MAX_SAMPLES:  # evenly spread over the image
        samples = samples[np.linspace(0, samples.size - 1, _MAX_SAMPLES).astype(np.int64)]
    # A step q fits only if at most a share 1 − _FIT of the samples lie below q − _TOL (those are near
    # no multiple of q: not 0, as |s| > _TOL, nor ±q), so the step can be at most the magnitude that
    # many samples reach, plus _TOL: the steps above it cannot fit and are not tried.
    allowed_off = min(samples.size - 1, int((1.0 - _FIT) * samples.size + 1e-6))
    top = np.partition(np.abs(samples), allowed_off)[allowed_off] + _TOL
    steps = np.arange(_MIN_STEP, int(min(255, top)) + 1, dtype=np.float32)
    # a coefficient off any lattice lands within _TOL of a multiple of q with chance 2·_TOL/q
    needed = np.maximum(_MIN_SAMPLES, np.log(_CHANCE) / np.log(2 * _TOL / steps))
    off = np.abs(samples[None, :] - steps[:, None] * np.rint(samples[None, :] / steps[:, None]))
    fits = ((off <= _TOL).mean(axis=1) >= _FIT) & (samples.size >= needed)
    if not fits.any():
        return 0
    # q and q ± 1 may all fit coefficients of ±q within _TOL; the true step fits them closest. Its
    # divisors fit exactly as closely (the same multiples), so of the closest the largest is taken.
    resid = np.minimum(off, _TOL).mean(axis=1)
    return int(steps[fits & (resid <= resid[fits].min() + 0.1)][-1])


def _strips(block_rows: int) -> list[slice]:
    """Runs of at most ``_STRIP`` block rows: large images are worked on a strip at a time."""
    return [slice(r, min(r + _STRIP, block_rows)) for r in range(0, block_rows, _STRIP)]


def _pixels(rows: slice, block_cols: int) -> tuple[slice, slice]:
    return slice(rows.start * BLOCK, rows.stop * BLOCK), slice(0, block_cols * BLOCK)


def _decoded_blocks(decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The luma DCT coefficients of a decoded image (whose Y was integer before colour conversion)
    and which of its blocks are usable (:func:`_usable_blocks`)."""
    usable = _usable_blocks(decoded)
    coefs = np.empty((*usable.shape, BLOCK, BLOCK), np.float32)
    for rows in _strips(usable.shape[0]):
        coefs[rows] = block_dct(np.rint(luma(decoded[_pixels(rows, usable.shape[1])])))
    return coefs, usable


def _measure(coefs: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """The lattice step of each of the 64 frequencies (0 where none can be trusted)."""
    # a flat block's pixels all round the same way, which moves its DC up to 4 off the lattice
    flat = np.all(np.abs(coefs.reshape(*coefs.shape[:2], BLOCK * BLOCK)[..., 1:]) < 1e-3, axis=-1)
    samples = coefs[usable & ~flat]  # (N, 8, 8)
    if not len(samples):
        return np.zeros((BLOCK, BLOCK), np.int64)
    return np.array([[_lattice_step(samples[:, u, v]) for v in range(BLOCK)] for u in range(BLOCK)])


def _complete(table: np.ndarray, min_entries: int) -> np.ndarray | None:
    """The measured steps as a table, ``None`` if fewer than ``min_entries``; completed where they are
    an IJG table."""
    known = table > 0
    if known.sum() < min_entries:
        return None
    # an IJG table that fits: exact at most measured entries, and within ±1 at all of them (a step
    # seen only at ±q is pinned down to about ±1)
    tables = _ijg_tables()
    diff = np.abs(tables[:, known] - table[known])
    exact = (diff == 0).sum(axis=1)
    fits = np.all(diff <= 1, axis=1) & (exact >= 0.75 * known.sum())
    matches = tables[fits & (exact == exact[fits].max())] if fits.any() else tables[:0]
    if len(matches):  # where several qualities fit, keep only the entries they agree on
        return np.where(np.all(matches == matches[0], axis=0), matches[0], 0).astype(np.int64)
    return table.astype(np.int64)


def estimate_table(decoded: np.ndarray, *, min_entries: int = _MIN_ENTRIES) -> np.ndarray | None:
    """Estimate the luma quantisation table of a decoded JPEG (float in [0, 1], grey or RGB).

    Returns an ``(8, 8)`` int table in natural order, 0 where an entry is unknown, or ``None`` when
    fewer than ``min_entries`` entries show a lattice (not a JPEG, or not on the 8×8 grid from the
    top-left corner). Entries too small to measure are filled in when the measured ones are an IJG
    table (libjpeg's tables scaled by quality, as nearly all software writes): all of them within
    ±1 and at least three quarters exactly.
    """
    return _complete(_measure(*_decoded_blocks(decoded)), min_entries)


def _bounds(coefs: np.ndarray, usable: np.ndarray, table: np.ndarray, shrink: float) -> tuple[np.ndarray, np.ndarray]:
    """The narrowed quantisation interval ``(lo, hi)`` of each coefficient of ``coefs`` ``(Hb, Wb, 8, 8)``;
    unbounded (±inf) in unusable blocks and at unknown table entries (0)."""
    q = np.asarray(table, dtype=np.float32)
    qs = np.where(q > 0, q, np.float32(1.0))
    centre = np.rint(coefs / qs) * qs
    half = np.float32(0.5 - shrink) * qs
    lo, hi = centre - half, centre + half
    unknown = ~((q > 0) & usable[:, :, None, None])
    np.copyto(lo, -np.inf, where=unknown)
    np.copyto(hi, np.inf, where=unknown)
    return lo, hi


def _project(res: np.ndarray, coefs: np.ndarray, usable: np.ndarray, table: np.ndarray, shrink: float) -> None:
    """Project ``res`` (float32, grid at its corner) in place."""
    for rows in _strips(usable.shape[0]):
        region = _pixels(rows, usable.shape[1])
        out = block_dct(luma(res[region]))
        delta = block_idct(np.clip(out, *_bounds(coefs[rows], usable[rows], table, shrink)) - out) / np.float32(255.0)
        res[region] += delta if res.ndim == 2 else delta[..., None]


def _check(restored: np.ndarray, decoded: np.ndarray, shrink: float) -> None:
    check_range(shrink, 0.0, MAX_SHRINK, "shrink")
    if restored.shape != decoded.shape:
        raise InputError(f"restored {restored.shape} and decoded {decoded.shape} differ in shape")


def _boundary_steps(plane: np.ndarray, axis: int) -> np.ndarray:
    """Mean absolute step across the pixel boundaries before each phase 0–7 along ``axis``: a JPEG's
    block boundaries (its grid's phase) have the largest."""
    steps = np.abs(np.diff(plane, axis=axis)).mean(axis=1 - axis)
    phase = (np.arange(steps.size) + 1) % BLOCK
    return np.array([steps[phase == p].mean() for p in range(BLOCK)])


def _block_rows(image: np.ndarray) -> np.ndarray:
    """Every n-th row of 8×8 blocks of ``image``, stacked, so that about ``_SPREAD_BLOCKS`` blocks remain."""
    rows = image.shape[0] // BLOCK
    step = max(1, -(-rows * (image.shape[1] // BLOCK) // _SPREAD_BLOCKS))
    if step == 1:
        return image
    return np.concatenate([image[r * BLOCK:(r + 1) * BLOCK] for r in range(0, rows, step)])


def _central_crop(image: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """At most ``_CROP`` pixels a side from the middle of ``image``, starting on the grid at ``offset``."""
    (dy, dx), (h, w) = offset, image.shape[:2]
    top = dy + max(0, (h - dy - _CROP) // 2) // BLOCK * BLOCK
    left = dx + max(0, (w - dx - _CROP) // 2) // BLOCK * BLOCK
    return image[top:top + _CROP, left:left + _CROP]


@dataclass(frozen=True, eq=False)
class JpegGrid:
    """What :func:`find_grid` found in a decoded JPEG: where its 8×8 grid starts, ``offset`` ``(dy, dx)``
    in 0–7, and its luma ``table`` (as :func:`estimate_table`). ``blocks``: the decoded image's luma
    coefficients and usable blocks from the offset, kept where the search transformed the whole image
    (a small one), so that :func:`project` need not transform it again."""

    offset: tuple[int, int]
    table: np.ndarray
    blocks: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


def find_grid(decoded: np.ndarray) -> JpegGrid | None:
    """Where a decoded JPEG's 8×8 grid starts and its luma table (:class:`JpegGrid`); ``None`` when
    there is none.

    Most images are on the grid from the top-left corner. A JPEG cropped afterwards (a screenshot,
    an edit saved without recompression) has it elsewhere: there the largest steps between pixels
    fall on the block boundaries. When they are not where a corner grid puts them, the two strongest
    phases per axis and the corner are the candidates, and the one whose central crop shows the
    lattice in the most frequencies wins (the first to show it in half of them, if one does).
    """
    y = luma(decoded)
    phases = [np.argsort(_boundary_steps(y, axis))[::-1][:2] if y.shape[axis] > 4 * BLOCK else np.zeros(1, int)
              for axis in (0, 1)]
    if phases[0][0] == 0 and phases[1][0] == 0:  # the block boundaries are where a corner grid puts them
        # measured on block rows spread over the image: samples enough, while :func:`project`
        # transforms the whole image once
        rows = _block_rows(decoded)
        blocks = _decoded_blocks(rows)
        table = _complete(_measure(*blocks), _MIN_ENTRIES)
        return None if table is None else JpegGrid((0, 0), table, blocks if rows is decoded else None)
    # elsewhere: the corner and the two strongest phases on each axis, compared by how many of the 64
    # frequencies show a lattice on a central crop starting on each one's grid (a grid half a block
    # off can show a few by chance; the true one shows the most). They are tried in that order, up to
    # one sure to be the grid: a high-quality JPEG shows no blocking, so it comes here with its grid
    # at the corner, where most frequencies show the lattice.
    candidates = dict.fromkeys([(0, 0)] + [(int(r), int(c)) for r in phases[0] for c in phases[1]])
    measured = {}
    for o in candidates:
        measured[o] = _measure(*_decoded_blocks(_central_crop(decoded, o)))
        if (measured[o] > 0).sum() >= _SURE_ENTRIES:
            break
    offset = max(measured, key=lambda o: int((measured[o] > 0).sum()))
    table = _complete(measured[offset], _MIN_ENTRIES)
    return None if table is None else JpegGrid(offset, table)


def project(restored: np.ndarray, decoded: np.ndarray, table: np.ndarray, shrink: float = 0.0,
            offset: tuple[int, int] = (0, 0), *, blocks: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Clip the luma DCT coefficients of ``restored`` into the quantisation intervals of ``decoded``.

    Both are float images in [0, 1] of the same shape (grey or RGB), with the 8×8 grid starting at
    ``offset`` ``(dy, dx)``. ``shrink`` (0 to ``MAX_SHRINK``) narrows every interval by that fraction
    of its step on each side: a restoration whose coefficient falls outside its interval is more
    likely to belong somewhat inside the edge than on it. Blocks with clipped pixels, partial blocks
    at the edges and unknown table entries (0) are left alone. The luma change is added to every
    channel, which leaves the chroma as it was. ``blocks``: the decoded image's coefficients, as
    :class:`JpegGrid` may hold them.
    """
    _check(restored, decoded, shrink)
    dy, dx = offset
    res = np.array(restored, dtype=np.float32, copy=True)
    _project(res[dy:, dx:], *(blocks or _decoded_blocks(decoded[dy:, dx:])), table, shrink)
    return res


def apply_constraint(restored: np.ndarray, decoded: np.ndarray, shrink: float = 0.0) -> np.ndarray:
    """:func:`project` ``restored`` with the grid and table :func:`find_grid` finds in ``decoded``;
    unchanged when it finds none."""
    _check(restored, decoded, shrink)
    grid = find_grid(decoded)
    return restored if grid is None else project(restored, decoded, grid.table, shrink, grid.offset,
                                                 blocks=grid.blocks)


def intervals(decoded: np.ndarray, table: np.ndarray, shrink: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """The narrowed quantisation interval ``(lo, hi)`` of every luma coefficient of ``decoded`` (grid at
    the corner, whole blocks), each ``(H // 8, W // 8, 8, 8)`` float32, ±inf where :func:`project`
    leaves a coefficient alone: what training through the constraint (:func:`clip_tensor`) needs."""
    check_range(shrink, 0.0, MAX_SHRINK, "shrink")
    return _bounds(*_decoded_blocks(decoded), table, shrink)


def clip_tensor(restored: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """:func:`project` as a differentiable torch function, for training through the constraint.

    ``restored`` ``(B, C, H, W)`` (C = 1 grey or 3 RGB, values in [0, 1]); ``lo`` and ``hi``
    ``(B, H // 8, W // 8, 8, 8)`` from :func:`intervals` (grid at the corner). The gradient passes
    through the coefficients left inside their intervals.
    """
    with torch.autocast(restored.device.type, enabled=False):  # coefficients of up to ±1024 need fp32
        return _clip_tensor(restored.float(), lo.float(), hi.float())


def _clip_tensor(restored: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    b, c = restored.shape[:2]
    hb, wb = lo.shape[1:3]
    h, w = hb * BLOCK, wb * BLOCK
    weights = restored.new_tensor(JFIF_LUMA if c == 3 else [1.0]) * 255.0
    y = torch.einsum("bchw,c->bhw", restored[:, :, :h, :w], weights) - 128.0
    m = torch.from_numpy(_dct_matrix()).to(restored)
    coefs = y.reshape(b, hb, BLOCK, wb, BLOCK).transpose(2, 3).reshape(b, hb, wb, BLOCK * BLOCK) @ m.T
    change = torch.clamp(coefs, lo.reshape(coefs.shape), hi.reshape(coefs.shape)) - coefs
    delta = (change @ m).reshape(b, hb, wb, BLOCK, BLOCK).transpose(2, 3).reshape(b, 1, h, w) / 255.0
    return restored + F.pad(delta, (0, restored.shape[-1] - w, 0, restored.shape[-2] - h))
