"""From files and arrays to restored results: a model bound to the engine, per input kind.

:class:`Restorer` takes float images in ``[0, 1]`` and handles what a model does not: Bayer
patterns other than RGGB, grey images on colour models and colour images on luma models (run on Y,
chroma upscaled bicubically), alpha channels, clipping. :func:`process_file` goes from an input file
(image, camera RAW or video) to an output file, used alike by the CLI, the batch runner and the GUI.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from restore_app.core.cfa import PATTERNS, channel_map, channel_masks, from_rggb, to_rggb
from restore_app.core.checks import check_choice, check_image_array, check_range
from restore_app.core.color import rgb_to_ycbcr, srgb_gamma, srgb_gamma_slope, srgb_linear, ycbcr_to_rgb
from restore_app.core.engine import Engine, TensorFn
from restore_app.core.errors import InputError, OutputError
from restore_app.core.io import (
    MediaKind,
    RawImage,
    VideoReader,
    VideoWriter,
    check_not_overwriting,
    from_float,
    media_kind,
    probe_video,
    read_image,
    read_raw,
    to_float,
    to_rgb,
    write_image,
)
from restore_app.core.io.atomic import check_output_dir
from restore_app.core.io.formats import IMAGE_EXTENSIONS, VIDEO_OUTPUT_EXTENSIONS
from restore_app.core.jobs import CancelToken, ProgressCallback, check_cancel
from restore_app.core.noise import bayer_block_mean, estimate_sigma, sensor_noise_map
from restore_app.core.quantization import find_grid, project
from restore_app.core.registry import LoadedModel, ModelManifest, Registry, default_registry
from restore_app.core.resize import imresize
from restore_app.core.segment import write_segmentation


class Restorer:
    """A loaded model bound to an :class:`Engine`: numpy images in, numpy images out.

    >>> restorer = Restorer.from_id("bilinear-demosaic")            # doctest: +SKIP
    >>> rgb = restorer.restore_image(mosaic, pattern="GRBG")         # doctest: +SKIP
    """

    def __init__(self, model: LoadedModel, engine: Engine | None = None) -> None:
        self.model = model
        self.manifest = model.manifest
        self.engine = engine or Engine()
        self.precision = self.engine.precision_for(self.manifest.precisions)
        self.module = self.engine.prepare(model.module)
        self.seconds = 0.0  # time spent in the model, for throughput figures

    @classmethod
    def from_id(cls, model_id: str, engine: Engine | None = None,
                registry: Registry | None = None) -> Restorer:
        return cls((registry or default_registry()).load(model_id), engine)

    def __repr__(self) -> str:
        return f"Restorer({self.manifest.id!r}, {self.engine.device}, {self.precision})"

    # -- tensors -------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, progress: ProgressCallback | None,
                 cancel: CancelToken | None) -> torch.Tensor:
        """Run the model on ``(B, C, H, W)``. For clip models the batch is the frame sequence: it is
        folded into channels, so spatial tiles stay aligned across time."""
        m = self.manifest
        fn, x_in = self.module, x
        if m.input == "clip":
            t, c = x.shape[0], x.shape[1]

            def fn(z: torch.Tensor) -> torch.Tensor:
                n, _, h, w = z.shape
                out = self.module(z.reshape(n, t, c, h, w))
                return out.reshape(n, t * out.shape[2], out.shape[3], out.shape[4])

            x_in = x.reshape(1, t * c, *x.shape[-2:])
        names = m.ensemble_for(self.engine.config.ensemble)
        if names:
            fn = with_ensemble(fn, ensemble_transforms(names), align=m.align, scale=m.scale, maps=self.module,
                               cfa=m.input == "cfa")
        start = time.perf_counter()
        try:
            out = self.engine.run(fn, x_in, scale=m.scale, align=m.align, overlap=m.overlap,
                                  tileable=m.tileable, max_tile=m.max_tile, precision=self.precision,
                                  progress=progress, cancel=cancel)
        finally:
            self.seconds += time.perf_counter() - start
        return out.reshape(x.shape[0], -1, *out.shape[-2:]) if m.input == "clip" else out

    @property
    def needs_sigma(self) -> bool:
        return "sigma" in self.manifest.conditioning

    def _with_noise_map(self, x: torch.Tensor, sigma: float | np.ndarray | None,
                        planes: np.ndarray, cfa: bool) -> torch.Tensor:
        """Append the noise-σ map channel a noise-conditioned model takes (estimated if not given)."""
        if not self.needs_sigma:
            return x
        if sigma is None:
            sigma = estimate_sigma(planes, cfa=cfa)
        if isinstance(sigma, np.ndarray):
            if sigma.shape != tuple(x.shape[-2:]):
                raise InputError(f"noise map of shape {sigma.shape} does not match the image {tuple(x.shape[-2:])}")
            noise = torch.from_numpy(np.ascontiguousarray(sigma, dtype=np.float32)).expand(x.shape[0], 1, -1, -1)
        else:
            check_range(float(sigma), 0.0, 1.0, "sigma")
            noise = torch.full((x.shape[0], 1, *x.shape[-2:]), float(sigma), dtype=torch.float32)
        return torch.cat([x, noise], dim=1)

    # -- images ----------------------------------------------------------------------------------
    def restore_image(self, image: np.ndarray, *, pattern: str = "RGGB",
                      sigma: float | np.ndarray | None = None,
                      progress: ProgressCallback | None = None,
                      cancel: CancelToken | None = None) -> np.ndarray:
        """Restore one float image in ``[0, 1]``.

        For ``cfa`` models ``image`` is an ``(H, W)`` mosaic of the given Bayer ``pattern`` and the
        result ``(H, W, 3)`` RGB. For ``rgb`` models it is ``(H, W)``, ``(H, W, 3)`` or
        ``(H, W, 4)`` and the result has the same channels, ``scale`` times larger. ``labels``
        models return an ``(H, W)`` integer label map. Image results are clipped to ``[0, 1]``.
        """
        image = check_image_array(image)
        kind = self.manifest.input
        if kind == "cfa":
            return self.demosaic(image, pattern=pattern, sigma=sigma, progress=progress, cancel=cancel)
        # a clip model restores a single image as a one-frame sequence
        return self._restore_rgb(image[None], sigma, progress, cancel)[0]

    def demosaic(self, mosaic: np.ndarray, *, pattern: str = "RGGB",
                 sigma: float | np.ndarray | None = None, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> np.ndarray:
        """``(H, W)`` Bayer mosaic of ``pattern`` (float, black 0, white 1) → ``(H, W, 3)`` RGB.

        ``sigma`` is the noise standard deviation (a number, or an ``(H, W)`` map for sensor noise)
        for models conditioned on it; ``None`` estimates it from the mosaic. Given as 0, it declares the
        mosaic noise-free, and a ``keep_samples`` model keeps the measured samples exactly.
        """
        if self.manifest.input != "cfa":
            raise InputError(f"model {self.manifest.id!r} does not demosaic (it takes {self.manifest.input})")
        if mosaic.ndim != 2:
            raise InputError(f"a CFA mosaic must be a single-channel (H, W) image; got shape {mosaic.shape}")
        x = torch.from_numpy(np.ascontiguousarray(mosaic, dtype=np.float32))[None, None]
        x = self._with_noise_map(x, sigma, mosaic, cfa=True)
        x, crop = to_rggb(x, pattern)
        out = self._forward(x, progress, cancel)
        out = from_rggb(out, crop)[0].permute(1, 2, 0).clamp_(0, 1).numpy()
        if self.manifest.keep_samples and sigma is not None and np.ndim(sigma) == 0 and float(sigma) == 0.0:
            measured = channel_masks(*mosaic.shape, pattern).transpose(1, 2, 0)
            out[measured] = np.broadcast_to(np.clip(mosaic, 0, 1)[..., None], out.shape)[measured]
        return out

    def _restore_rgb(self, batch: np.ndarray, sigma: float | None, progress: ProgressCallback | None,
                     cancel: CancelToken | None) -> np.ndarray:
        """``(B, H, W[, C])`` float batch → restored batch with the same channel layout."""
        m = self.manifest
        grey = batch.ndim == 3
        x = batch[..., None] if grey else batch
        alpha = x[..., 3:] if x.shape[-1] == 4 else None
        x = x[..., :3] if alpha is not None else x
        c = x.shape[-1]
        chroma = None
        if c in m.channels:
            planes = x
        elif c == 3 and 1 in m.channels:  # luma model on a colour image
            ycc = np.stack([rgb_to_ycbcr(im) for im in x])
            planes, chroma = ycc[..., :1], ycc[..., 1:]
        elif c == 1 and 3 in m.channels:  # colour model on a grey image
            planes = np.repeat(x, 3, axis=-1)
        else:
            raise InputError(f"model {m.id!r} takes {m.channels} channels; got {c}")
        grids, shift = self._jpeg_grids(x)
        if shift != (0, 0):  # a JPEG cropped off its grid: padded so the model sees its blocks on its own grid
            planes = np.pad(planes, ((0, 0), (shift[0], 0), (shift[1], 0), (0, 0)), mode="edge")
        t = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32)).permute(0, 3, 1, 2)
        if self.needs_sigma:
            t = torch.cat([self._with_noise_map(t[i:i + 1], sigma, planes[i], cfa=False)
                           for i in range(t.shape[0])])
        out = self._forward(t, progress, cancel)[..., shift[0]:, shift[1]:]
        if m.output == "labels":
            postprocess = getattr(self.module, "postprocess", None)  # maps → instances, after stitching
            start = time.perf_counter()
            labels = postprocess(out) if postprocess is not None else out[:, :1]
            self.seconds += time.perf_counter() - start  # part of the model's time, as for the classical ones
            return labels[:, 0].round().to(torch.int64).numpy()
        res = out.permute(0, 2, 3, 1).numpy()
        if chroma is not None:
            if m.scale > 1:
                chroma = np.stack([imresize(ch, float(m.scale)) for ch in chroma])
            res = np.stack([ycbcr_to_rgb(np.concatenate([r, ch], axis=-1)) for r, ch in zip(res, chroma, strict=True)])
        elif c == 1 and res.shape[-1] == 3:
            res = res.mean(axis=-1, keepdims=True)
        res = np.clip(res, 0.0, 1.0)
        if self.engine.config.jpeg_constraint and any(g is not None for g in grids):
            start = time.perf_counter()
            res = np.stack([r if g is None else np.clip(project(r, d, g.table, m.jpeg_constraint, g.offset,
                                                                blocks=g.blocks), 0.0, 1.0)
                            for r, d, g in zip(res, x, grids, strict=True)])
            self.seconds += time.perf_counter() - start
        if alpha is not None:
            a = alpha if m.scale == 1 else np.stack([imresize(al, float(m.scale)) for al in alpha])
            res = np.concatenate([res, np.clip(a, 0.0, 1.0)], axis=-1)
        return res[..., 0] if grey else res

    def _jpeg_grids(self, batch: np.ndarray) -> tuple[list, tuple[int, int]]:
        """For a JPEG-aware model (``jpeg_constraint`` in its manifest): each image's JPEG grid and
        table (:func:`find_grid`; ``None`` for an image that shows none), and the top and left padding
        that puts a grid found off the corner, the same in every image of the batch, onto the model's."""
        m = self.manifest
        if m.jpeg_constraint is None or m.scale != 1:
            return [None] * len(batch), (0, 0)
        start = time.perf_counter()
        grids = [find_grid(im) for im in batch]
        self.seconds += time.perf_counter() - start
        offsets = {g.offset if g is not None else None for g in grids}
        if len(offsets) != 1 or None in offsets:
            return grids, (0, 0)
        dy, dx = offsets.pop()
        return grids, ((-dy) % m.align, (-dx) % m.align)

    # -- frames ----------------------------------------------------------------------------------
    def restore_frames(self, frames: Iterable[np.ndarray], *, sigma: float | None = None,
                       cancel: CancelToken | None = None) -> Iterator[np.ndarray]:
        """Restore ``uint8`` RGB frames as they are read; yields ``uint8`` frames in order.

        Per-frame models take ``config.batch`` frames at a time. Clip models (recurrent, both
        directions in time) take chunks of ``config.clip_length`` frames with ``clip_context``
        frames of context on each side, so memory stays bounded on videos of any length.
        """
        m = self.manifest
        if m.input == "cfa" or m.output != "image":
            raise InputError(f"model {m.id!r} cannot restore video frames "
                             f"(it takes {m.input} and gives {m.output})")

        def run(batch: list[np.ndarray]) -> Iterator[np.ndarray]:
            out = self._restore_rgb(np.stack([to_float(f) for f in batch]), sigma, None, cancel)
            return (np.rint(o * 255).astype(np.uint8) for o in out)

        if m.input == "clip":
            return self._clip_stream(iter(frames), run, cancel)
        return self.engine.run_frames(run, frames, cancel)

    def _clip_stream(self, frames: Iterator[np.ndarray], run, cancel: CancelToken | None) -> Iterator[np.ndarray]:
        length, context = self.engine.config.clip_length, self.manifest.clip_context
        window: list[np.ndarray] = []  # frames [first, first + len(window))
        first = emitted = 0
        ended = False
        while True:
            while not ended and first + len(window) < emitted + length + context:
                frame = next(frames, None)
                if frame is None:
                    ended = True
                else:
                    window.append(frame)
            available = first + len(window)
            if emitted >= available:
                return
            check_cancel(cancel)
            stop = min(emitted + length, available)
            outputs = list(run(window))
            yield from outputs[emitted - first:stop - first]
            emitted = stop
            keep_from = max(first, emitted - context)
            window = window[keep_from - first:]
            first = keep_from


# ---------------------------------------------------------------------------------------------
# Chains: one model after another (for example JPEG artifact removal, then super-resolution)

CHAIN_ORDER = ("demosaic", "jpeg", "vsr", "segment")


Transform = tuple[bool, bool, bool]  # (transpose, flip left-right, flip up-down), flips first

# the symmetries of the square by name (rotations counter-clockwise, as torch.rot90)
TRANSFORMS: dict[str, Transform] = {
    "identity": (False, False, False), "fliplr": (False, True, False), "flipud": (False, False, True),
    "rot180": (False, True, True), "transpose": (True, False, False), "rot90": (True, True, False),
    "rot270": (True, False, True), "antitranspose": (True, True, True),
}


def ensemble_transforms(names: Sequence[str]) -> list[Transform]:
    """The identity followed by the named transforms (``ModelManifest.ensemble``).

    >>> ensemble_transforms(["rot180"])
    [(False, False, False), (False, True, True)]
    """
    return [TRANSFORMS["identity"]] + [TRANSFORMS[n] for n in names]


def with_ensemble(fn: TensorFn, transforms: Sequence[Transform], *, align: int = 1, scale: int = 1,
                  maps: object = None, cfa: bool = False) -> TensorFn:
    """``fn`` averaged over ``transforms`` of its input, each result mapped back (self-ensemble).

    A flip would move a grid the input carries (the 8×8 JPEG blocks; the tile starts on it), so
    with flips the input is first padded at the bottom and right, by edge replication, to a
    multiple of ``align``, and the result is cropped. On a ``cfa`` input (an RGGB mosaic of even
    size, with any per-pixel maps as further channels) a flip turns RGGB into another Bayer phase,
    so the flipped mosaic is reflect-padded by one sample on both sides of each flipped axis, which
    makes it RGGB again. A model whose outputs are vectors (the DWT's directions) maps them back
    itself: ``maps.transpose_maps(out)`` and ``maps.flip_maps(out, dims)`` where it has them, plain
    transposition and flipping otherwise.
    """
    transpose_back = getattr(maps, "transpose_maps", None) or (lambda o: o.transpose(-2, -1))
    flip_back = getattr(maps, "flip_maps", None) or (lambda o, dims: o.flip(dims))
    flips = any(fh or fv for _, fh, fv in transforms)

    def run(z: torch.Tensor) -> torch.Tensor:
        h, w = z.shape[-2:]
        if cfa and (h % 2 or w % 2):
            raise InputError(f"a mosaic for the self-ensemble must have even sides; got {h}×{w}")
        ph, pw = ((-h) % align, (-w) % align) if flips and not cfa else (0, 0)
        if ph or pw:
            z = F.pad(z, (0, pw, 0, ph), mode="replicate")
        layout = torch.channels_last if z.ndim == 4 and z.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format  # keep the engine's layout (channels-last on the CPU)
        total = None
        for t, fh, fv in transforms:
            dims = [d for d, on in ((-1, fh), (-2, fv)) if on]
            zt = z.flip(dims) if dims else z
            if cfa and dims:  # back to RGGB: one sample more on each side of each flipped axis
                zt = F.pad(zt, (int(fh), int(fh), int(fv), int(fv)), mode="reflect")
            zt = zt.transpose(-2, -1) if t else zt
            out = fn(zt.contiguous(memory_format=layout) if (t or dims) else zt)
            if cfa and dims:  # the padding's axes, in the output's orientation
                ch, cw = (int(fh), int(fv)) if t else (int(fv), int(fh))
                out = out[..., ch * scale:out.shape[-2] - ch * scale, cw * scale:out.shape[-1] - cw * scale]
            # mirrored back before it is transposed back (a mirror in the output's own orientation, its
            # axes swapped if transposed): the transposition is then a view, and no copy of a
            # transposed tensor is made, which in channels-last order took 3–5 times as long
            if dims:
                out = flip_back(out, [{-1: -2, -2: -1}[d] for d in dims] if t else dims)
            out = transpose_back(out) if t else out
            total = out.float() if total is None else total.add_(out.float())
        total = total.mul_(1.0 / len(transforms)).to(out.dtype)
        return total[..., :h * scale, :w * scale] if (ph or pw) else total

    return run


def check_chain(manifests: Sequence[ModelManifest]) -> None:
    """Raise :class:`InputError` unless the models make sense one after another.

    Tasks must follow the order demosaic → jpeg → vsr → segment, each at most once; every model
    after the first must take RGB images and the one before it must give an image; demosaicing
    followed by JPEG removal is refused (a demosaiced image has no JPEG artifacts).
    """
    if not manifests:
        raise InputError("a chain needs at least one model")
    for prev, cur in zip(manifests, manifests[1:], strict=False):
        if CHAIN_ORDER.index(cur.task) <= CHAIN_ORDER.index(prev.task):
            raise InputError(f"{cur.id!r} ({cur.task}) cannot follow {prev.id!r} ({prev.task}); "
                             f"the order is {' → '.join(CHAIN_ORDER)}")
        if prev.output != "image" or cur.input not in ("rgb", "clip"):
            raise InputError(f"{cur.id!r} cannot take the output of {prev.id!r}")
        if (prev.task, cur.task) == ("demosaic", "jpeg"):
            raise InputError("JPEG artifact removal after demosaicing is not useful: a freshly "
                             "demosaiced image has no JPEG artifacts")


def restore_chain(restorers: Sequence[Restorer], image: np.ndarray, *, pattern: str = "RGGB",
                  sigma: float | np.ndarray | None = None, progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> np.ndarray:
    """Run ``restorers`` one after another; ``sigma`` and ``pattern`` go to the first.

    Progress is reported as ``(done, total)`` with 1000 units per model.
    """
    check_chain([r.manifest for r in restorers])
    result = image
    for i, restorer in enumerate(restorers):
        def step(done: int, total: int, i: int = i) -> None:
            if progress is not None:
                progress(i * 1000 + (1000 * done // total if total else 0), 1000 * len(restorers))

        result = restorer.restore_image(result, pattern=pattern, sigma=sigma if i == 0 else None,
                                        progress=step, cancel=cancel)
    return result


# ---------------------------------------------------------------------------------------------
# RAW development


def develop_raw(raw: RawImage, restorer: Restorer, *, sigma: float | None = None,
                progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> np.ndarray:
    """Develop a camera RAW mosaic to sRGB: levels, white balance, demosaic, colour matrix, gamma.

    The mosaic is demosaiced in the sRGB-encoded domain that the models are trained in (a pointwise,
    invertible step), then linearised for the camera-to-sRGB matrix. The noise a noise-conditioned
    model is told about comes from ``sigma`` (in that encoded domain), else from the file's DNG
    NoiseProfile carried through white balance and the encoding curve, else from an estimate.
    Returns ``(H, W, 3)`` float32 sRGB-encoded values in ``[0, 1]``.
    """
    mosaic = raw.normalized()
    h, w = mosaic.shape
    gains = np.array(raw.wb_multipliers, dtype=np.float32)
    gain_map = np.tile(gains[channel_map(raw.pattern)], ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    balanced = np.clip(mosaic * gain_map, 0.0, 1.0)
    encoded = srgb_gamma(balanced)
    noise: float | np.ndarray | None = sigma
    if noise is None and restorer.needs_sigma and raw.noise_profile is not None:
        shot, offset = raw.noise_profile
        # σ of the normalised value, scaled by the white-balance gain and the encoding's slope
        linear_sigma = sensor_noise_map(mosaic, max(shot, 0.0), float(np.sqrt(max(offset, 0.0))))
        slope = srgb_gamma_slope(bayer_block_mean(balanced))
        noise = (linear_sigma * gain_map * slope).astype(np.float32)
    encoded_rgb = restorer.demosaic(encoded, pattern=raw.pattern, sigma=noise, progress=progress,
                                    cancel=cancel)
    linear = srgb_linear(encoded_rgb) @ raw.cam_to_srgb.T.astype(np.float32)
    return srgb_gamma(linear)


# ---------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class RunOptions:
    """How ``restore run`` treats one file.

    ``pattern``: Bayer pattern of a single-channel image given to a demosaicing model.
    ``sigma``: noise level (in [0, 1] units) for models conditioned on it.
    ``quality``: JPEG/WebP quality of image outputs. ``crf``: x264 quality of video outputs.
    ``bit_depth``: 8 or 16 for PNG/TIFF (default: 16 for TIFF and for 16-bit input, else 8).
    ``fps``: frame rate of a video made from a folder of frames.
    """

    pattern: str = "RGGB"
    sigma: float | None = None
    quality: int = 95
    crf: int = 18
    bit_depth: int | None = None
    fps: float = 25.0

    def __post_init__(self) -> None:
        check_choice(self.pattern, PATTERNS, "pattern")
        if self.sigma is not None:
            check_range(self.sigma, 0.0, 1.0, "sigma")
        check_range(self.quality, 1, 100, "quality")
        check_range(self.crf, 0, 51, "crf")
        if self.bit_depth is not None:
            check_choice(self.bit_depth, (8, 16), "bit_depth")
        check_range(self.fps, 0.1, 1000, "fps")


def _check_output_kind(output: Path, video: bool) -> None:
    ext = output.suffix.lower()
    allowed = VIDEO_OUTPUT_EXTENSIONS if video else IMAGE_EXTENSIONS
    if ext not in allowed:
        what = "a video" if video else "an image"
        raise OutputError(f"{output}: cannot write {what} as {ext or '(no extension)'!r}; "
                          f"use one of {' '.join(sorted(allowed))}")


@dataclass
class Decoded:
    """An input file read and ready for the models: a float image, or a camera RAW mosaic."""

    path: Path
    image: np.ndarray | None = None
    raw: RawImage | None = None
    high_bit_depth: bool = False


def _as_chain(restorer: Restorer | Sequence[Restorer]) -> list[Restorer]:
    return [restorer] if isinstance(restorer, Restorer) else list(restorer)


def check_job(src: Path, dst: Path, restorers: Sequence[Restorer]) -> MediaKind:
    """Everything that can be checked before any work: types, the output folder, overwriting."""
    kind = media_kind(src)
    check_chain([r.manifest for r in restorers])
    first, last = restorers[0].manifest, restorers[-1].manifest
    check_not_overwriting(dst, [src])
    check_output_dir(dst)
    _check_output_kind(dst, video=kind is MediaKind.VIDEO)
    if last.output == "labels" and dst.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise OutputError(f"{dst}: model {last.id!r} gives a label map; write it as .png or .tif")
    if kind is MediaKind.RAW and first.input != "cfa":
        raise InputError(f"{src}: camera RAW files need a demosaicing model; {first.id!r} takes "
                         f"{first.input} images")
    return kind


def decode_input(src: Path) -> Decoded:
    """Read an image or camera RAW file (the first stage of :func:`process_file`)."""
    if media_kind(src) is MediaKind.RAW:
        return Decoded(src, raw=read_raw(src), high_bit_depth=True)
    image = read_image(src)
    return Decoded(src, image=to_float(image), high_bit_depth=image.dtype != np.uint8)


def restore_decoded(decoded: Decoded, restorers: Sequence[Restorer], options: RunOptions, *,
                    progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> np.ndarray:
    """Run the models on a decoded input (the second stage of :func:`process_file`)."""
    first = restorers[0].manifest
    if decoded.raw is not None:
        result = develop_raw(decoded.raw, restorers[0], sigma=options.sigma, progress=progress, cancel=cancel)
        return restore_chain(restorers[1:], result, cancel=cancel) if len(restorers) > 1 else result
    if first.input == "cfa" and decoded.image.ndim != 2:
        raise InputError(f"{decoded.path}: model {first.id!r} demosaics single-channel Bayer mosaics; this "
                         f"image has {decoded.image.shape[2]} channels")
    return restore_chain(restorers, decoded.image, pattern=options.pattern, sigma=options.sigma,
                         progress=progress, cancel=cancel)


def encode_output(dst: Path, result: np.ndarray, last: ModelManifest, options: RunOptions,
                  high_bit_depth: bool = False, source: np.ndarray | None = None) -> Path:
    """Write a result atomically (the third stage of :func:`process_file`): a label map as 16-bit
    PNG/TIFF with its overlay on ``source`` and its instance table beside it; an image at
    ``options.bit_depth``, else 16 bits for TIFF and high-bit-depth input."""
    if last.output == "labels":
        return write_segmentation(dst, result, source)
    depth = options.bit_depth or (16 if high_bit_depth or dst.suffix.lower() in (".tif", ".tiff") else 8)
    return write_image(dst, result, quality=options.quality, bit_depth=depth)


def process_file(input_path: str | Path, output_path: str | Path, restorer: Restorer | Sequence[Restorer],
                 options: RunOptions | None = None, *, progress: ProgressCallback | None = None,
                 cancel: CancelToken | None = None) -> Path:
    """Restore one image, camera RAW file or video into ``output_path`` (written atomically) with a
    model or a chain of models.

    Checks everything it can before any work: the input's type, the output's type and folder, and
    that the output is not the input.
    """
    options = options or RunOptions()
    restorers = _as_chain(restorer)
    src, dst = Path(input_path), Path(output_path)
    if src.is_dir():
        return process_frames(src, dst, restorers, options, progress=progress, cancel=cancel)
    if check_job(src, dst, restorers) is MediaKind.VIDEO:
        return process_video(src, dst, restorers, options, progress=progress, cancel=cancel)
    decoded = decode_input(src)
    result = restore_decoded(decoded, restorers, options, progress=progress, cancel=cancel)
    check_cancel(cancel)
    return encode_output(dst, result, restorers[-1].manifest, options, decoded.high_bit_depth, decoded.image)


def process_frames(src: Path, dst: Path, restorer: Restorer | Sequence[Restorer], options: RunOptions, *,
                   progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> Path:
    """Restore a folder of frames (image files, in natural order) into a video file (``dst`` with a
    video extension, at ``options.fps``) or into a folder of PNG frames of the same names."""
    from restore_app.core.evaluate import list_images

    restorers = _as_chain(restorer)
    check_chain([r.manifest for r in restorers])
    files = list_images(src)
    if not files:
        raise InputError(f"{src}: no image files in this folder")
    if inside(dst, src):
        raise OutputError(f"{dst}: the output must not be inside the input folder {src}")

    def frames() -> Iterator[np.ndarray]:
        for f in files:
            img = read_image(f)
            yield to_rgb(img if img.dtype == np.uint8 else from_float(to_float(img)))

    stream: Iterable[np.ndarray] = frames()
    for i, r in enumerate(restorers):
        stream = r.restore_frames(stream, sigma=options.sigma if i == 0 else None, cancel=cancel)
    stream = iter(stream)
    if dst.suffix.lower() in VIDEO_OUTPUT_EXTENSIONS:
        first = next(stream)
        with VideoWriter(dst, first.shape[1], first.shape[0], options.fps, quality=options.crf) as writer:
            for i, frame in enumerate(itertools.chain([first], stream)):
                writer.write(frame)
                if progress is not None:
                    progress(i + 1, len(files))
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    for i, (f, frame) in enumerate(zip(files, stream, strict=False)):
        write_image(dst / (f.stem + ".png"), frame)
        if progress is not None:
            progress(i + 1, len(files))
    return dst


def inside(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or lies under it (after resolving links)."""
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


def process_video(src: Path, dst: Path, restorer: Restorer | Sequence[Restorer], options: RunOptions, *,
                  progress: ProgressCallback | None = None,
                  cancel: CancelToken | None = None) -> Path:
    """Restore every frame of a video with per-frame models (one, or a chain); fps and the audio
    track are kept. Frames stream through: memory does not grow with the video's length."""
    restorers = _as_chain(restorer)
    check_chain([r.manifest for r in restorers])
    info = probe_video(src)
    s = int(np.prod([r.manifest.scale for r in restorers]))
    total = info.frame_count
    with VideoReader(src, info=info) as reader, \
            VideoWriter(dst, info.width * s, info.height * s, info.fps, quality=options.crf,
                        audio_from=src if info.has_audio else None,
                        audio_codec=info.audio_codec) as writer:
        stream: Iterable[np.ndarray] = reader
        for i, r in enumerate(restorers):
            stream = r.restore_frames(stream, sigma=options.sigma if i == 0 else None, cancel=cancel)
        for i, frame in enumerate(stream):
            writer.write(frame)
            if progress is not None:
                progress(i + 1, total)
    return dst
