"""The inference engine: device and precision choice, tiled inference with blending, frame batches.

A model here is any callable mapping a ``(B, C, H, W)`` tensor to ``(B, C', s·H, s·W)``. Big images
are cut into tiles; each tile is run with ``overlap`` pixels of real context around it, and
neighbouring tiles are cross-faded over a band of half the overlap centred on the seam. Every kept
pixel so has at least 3/4 of the overlap as context: a model whose receptive-field radius fits in
that gives the same result tiled as untiled, and any other model shows no seams.
Progress is reported and cancellation checked once per tile.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

from restore_app.core.checks import check_choice, check_range, check_tensor
from restore_app.core.errors import InputError
from restore_app.core.jobs import CancelToken, ProgressCallback, check_cancel

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# self-ensemble: one pass; the model's default transforms (2–4× the time); its full set (4–8×)
ENSEMBLE_MODES = ("off", "on", "full")


def ensemble_mode(value: str | bool) -> str:
    """A checked self-ensemble mode; ``True``/``False`` (the setting before there were three) mean
    ``"on"``/``"off"``."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return check_choice(value, ENSEMBLE_MODES, "ensemble")


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

TensorFn = Callable[[torch.Tensor], torch.Tensor]
T = TypeVar("T")
R = TypeVar("R")


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; a named device must be available.

    >>> select_device("cpu")
    device(type='cpu')
    """
    name = name.lower()
    base = name.split(":")[0]
    check_choice(base, DEVICES, "device")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available")
    if base == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device 'mps' was requested but Apple MPS is not available")
    return torch.device(name)


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether bf16 convolutions beat fp32 on this CPU: only with AMX (Intel Sapphire Rapids and newer).

    AVX-512 BF16 alone is not enough. On a 2-core Xeon with AVX-512 BF16 but no AMX (2026-11-23),
    oneDNN's bf16 convolutions ran at half fp32's speed (a 64-channel 3×3 convolution at 512×512:
    138 against 298 GFLOP/s; a training step of the JPEG U-Net 0.63 against 0.42 s, the DWT's
    inference 1.9 against 1.3 s/MP), while with AMX bf16 about halves the time.
    """
    try:
        flags = torch._C._cpu._get_cpu_capability()  # a torch without it: fp32, the safe choice
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported() and flags.get("amx_bf16") and flags.get("amx_tile"))
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(requested: str, device: torch.device,
                      supported: Sequence[str] = ("fp32",)) -> str:
    """The precision to run at: an explicit request is checked, ``auto`` picks the fastest safe one.

    ``supported`` is what the model was validated at (its manifest). fp16 is never used on the CPU.
    A model whose only precision is ``int8`` (8-bit by construction, :mod:`restore_app.core.int8`)
    runs as it is whatever is requested: the setting chooses among float precisions.
    """
    check_choice(requested, PRECISIONS, "precision")
    if tuple(supported) == ("int8",):
        return "int8"
    if requested == "auto":
        if device.type in ("cuda", "mps") and "fp16" in supported:
            if device.type == "cuda" and "bf16" in supported and torch.cuda.is_bf16_supported():
                return "bf16"
            return "fp16"
        if device.type == "cpu" and "bf16" in supported and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if requested == "fp16" and device.type == "cpu":
        raise InputError("fp16 is not supported on the CPU; use bf16 or fp32")
    if requested not in supported:
        raise InputError(f"this model supports {', '.join(supported)}; got precision {requested!r}")
    return requested


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32 and int8)."""
    if precision in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_DTYPES[precision])


def configure_cpu_threads(threads: int | None = None) -> int:
    """Give PyTorch ``threads`` intra-op threads (default: one per available core, unless the user set
    OMP_NUM_THREADS) and NumPy's and SciPy's BLAS one thread; returns PyTorch's thread count.

    OpenBLAS's workers spin for a while after each call, and on a small machine they take the cores
    from PyTorch's threads: one NumPy 8×8 DCT before the int8 JPEG model (its JPEG-grid search) made
    the model's next pass on a 512² image take 85–120 ms instead of 42 on the 2-core build machine.
    The BLAS work here is small (block transforms, colour conversions), so one thread costs nothing.
    """
    if threads:
        torch.set_num_threads(threads)
    elif "OMP_NUM_THREADS" not in os.environ:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores))
    limit_blas_threads()
    return torch.get_num_threads()


def limit_blas_threads() -> None:
    """One thread for the BLAS libraries loaded now (threadpoolctl) and, through the environment, for
    those loaded later (SciPy and NumPy each bring their own OpenBLAS), unless the user set it."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


# ---------------------------------------------------------------------------------------------
# Tiling


def _splits(length: int, tile: int, align: int) -> list[tuple[int, int]]:
    """Cut ``[0, length)`` into near-equal pieces of at most ``tile`` with boundaries on ``align``."""
    n = max(1, math.ceil(length / tile))
    bounds = [0]
    for i in range(1, n):
        b = round(i * length / n / align) * align
        if bounds[-1] < b < length:
            bounds.append(b)
    bounds.append(length)
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _ramp(n: int, band: int, fade_in: bool, fade_out: bool, dtype, device) -> torch.Tensor:
    """1-D blend weights: linear cross-fades of width ``band`` centred on interior seams."""
    w = torch.ones(n, dtype=dtype, device=device)
    if band > 0:
        r = (torch.arange(band, dtype=dtype, device=device) + 0.5) / band
        if fade_in:
            w[:band] = r
        if fade_out:
            w[n - band:] = r.flip(0)
    return w


def tiled_apply(fn: TensorFn, x: torch.Tensor, *, tile: int = 512, overlap: int = 16, scale: int = 1,
                align: int = 1, progress: ProgressCallback | None = None,
                cancel: CancelToken | None = None) -> torch.Tensor:
    """Apply ``fn`` to ``x`` ``(B, C, H, W)`` tile by tile; returns ``(B, C', scale·H, scale·W)``.

    Each tile's core (at most ``tile`` pixels a side, boundaries on multiples of ``align``) is run
    with ``overlap`` pixels of context on each side where the image has them; the output keeps the
    core plus a quarter of the overlap on each interior side and cross-fades it with the
    neighbour's. With
    ``tile`` 0, or an image that fits in one tile, ``fn`` runs once on the whole image.

    >>> y = tiled_apply(lambda t: t * 2, torch.ones(1, 3, 100, 100), tile=32, overlap=8)
    >>> bool((y == 2).all())
    True
    """
    check_tensor(x, "x", ndim=4)
    check_range(tile, 0, None, "tile")
    check_range(overlap, 0, None, "overlap")
    check_range(scale, 1, None, "scale")
    check_range(align, 1, None, "align")
    b, _, h, w = x.shape
    if tile == 0 or (h <= tile and w <= tile):
        check_cancel(cancel)
        out = fn(x)
        if progress is not None:
            progress(1, 1)
        return out
    tile = max(align, tile - tile % align)
    ctx = math.ceil(overlap / align) * align
    band = ctx // 4  # kept pixels have at least 3/4 of the overlap as context
    rows, cols = _splits(h, tile, align), _splits(w, tile, align)
    total = len(rows) * len(cols)
    out = weight = None
    done = 0
    for y0, y1 in rows:
        for x0, x1 in cols:
            check_cancel(cancel)
            iy0, iy1 = max(0, y0 - ctx), min(h, y1 + ctx)
            ix0, ix1 = max(0, x0 - ctx), min(w, x1 + ctx)
            res = fn(x[:, :, iy0:iy1, ix0:ix1])
            if out is None:
                out = torch.zeros(b, res.shape[1], h * scale, w * scale, dtype=torch.float32,
                                  device=res.device)
                weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=res.device)
            # kept region in input coordinates: core plus half the context on interior sides
            ky0, ky1 = max(0, y0 - band), min(h, y1 + band)
            kx0, kx1 = max(0, x0 - band), min(w, x1 + band)
            s = scale
            piece = res[:, :, (ky0 - iy0) * s:(ky1 - iy0) * s, (kx0 - ix0) * s:(kx1 - ix0) * s]
            wy = _ramp((ky1 - ky0) * s, 2 * band * s, y0 > 0, y1 < h, torch.float32, res.device)
            wx = _ramp((kx1 - kx0) * s, 2 * band * s, x0 > 0, x1 < w, torch.float32, res.device)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, ky0 * s:ky1 * s, kx0 * s:kx1 * s] += piece.float() * wt
            weight[:, :, ky0 * s:ky1 * s, kx0 * s:kx1 * s] += wt
            done += 1
            if progress is not None:
                progress(done, total)
    return out / weight


@dataclass(frozen=True)
class EngineConfig:
    """User settings of the engine: ``device``, ``precision``, ``tile`` (0 = whole image) and
    ``overlap`` (``None`` = the model's own), ``batch`` frames per forward pass for video,
    ``clip_length`` frames per chunk for recurrent video models, and ``ensemble``: average over the
    test-time transforms a model's manifest names (more quality for proportionally more time):
    ``"off"`` (one pass), ``"on"`` (the model's default set) or ``"full"`` (its larger set);
    ``True``/``False`` mean ``"on"``/``"off"``. ``jpeg_constraint``: apply the JPEG quantisation
    constraint of models whose manifest names one (:mod:`restore_app.core.quantization`)."""

    device: str = "auto"
    precision: str = "auto"
    tile: int = 1024
    overlap: int | None = None
    batch: int = 4
    clip_length: int = 32
    ensemble: str = "on"
    jpeg_constraint: bool = True

    def __post_init__(self) -> None:
        check_choice(self.device.split(":")[0].lower(), DEVICES, "device")
        check_choice(self.precision, PRECISIONS, "precision")
        check_range(self.tile, 0, None, "tile")
        if self.tile and self.tile < 32:
            raise InputError(f"tile must be 0 (no tiling) or at least 32 pixels; got {self.tile}")
        if self.overlap is not None:
            check_range(self.overlap, 0, None, "overlap")
        check_range(self.batch, 1, 256, "batch")
        check_range(self.clip_length, 1, 4096, "clip_length")
        object.__setattr__(self, "ensemble", ensemble_mode(self.ensemble))


class Engine:
    """Runs models on a device at a precision, tiling images and batching frames.

    >>> engine = Engine(EngineConfig(device="cpu"))
    >>> engine.run(torch.nn.Identity(), torch.zeros(1, 3, 8, 8)).shape
    torch.Size([1, 3, 8, 8])
    """

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        self.device = select_device(self.config.device)

    def __repr__(self) -> str:
        return f"Engine(device={self.device}, tile={self.config.tile})"

    def precision_for(self, supported: Sequence[str]) -> str:
        return resolve_precision(self.config.precision, self.device, supported)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Move a module to the device in eval mode (channels-last on the CPU, where it is faster)."""
        module = module.to(self.device).eval()
        if self.device.type == "cpu":
            module = module.to(memory_format=torch.channels_last)
        return module

    def run(self, fn: TensorFn, x: torch.Tensor, *, scale: int = 1, align: int = 1,
            overlap: int = 16, tileable: bool = True, max_tile: int = 0, precision: str = "fp32",
            progress: ProgressCallback | None = None,
            cancel: CancelToken | None = None) -> torch.Tensor:
        """Run ``fn`` on ``x`` (any device), tiled if ``tileable`` (tiles of ``config.tile``, at most
        ``max_tile`` when that is set); returns float32 on the CPU."""
        tile = self.config.tile if tileable else 0
        if max_tile and (tile == 0 or tile > max_tile):
            tile = max_tile
        ctx = self.config.overlap if self.config.overlap is not None else overlap

        def step(t: torch.Tensor) -> torch.Tensor:
            t = t.to(self.device, non_blocking=True)
            if self.device.type == "cpu" and t.ndim == 4:
                t = t.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), autocast(self.device, precision):
                return fn(t).float()

        out = tiled_apply(step, x, tile=tile, overlap=ctx, scale=scale, align=align,
                          progress=progress, cancel=cancel)
        return out.cpu().contiguous()

    def run_frames(self, fn: Callable[[list[T]], Iterable[R]], frames: Iterable[T],
                   cancel: CancelToken | None = None) -> Iterator[R]:
        """Apply ``fn`` to ``frames`` grouped in batches of ``config.batch``, lazily.

        ``fn`` takes a list of frames and returns one result per frame; results are yielded in
        order, so only one batch is held in memory. Cancellation is checked before every batch.
        """
        batch: list[T] = []
        for frame in frames:
            batch.append(frame)
            if len(batch) == self.config.batch:
                check_cancel(cancel)
                yield from fn(batch)
                batch = []
        if batch:
            check_cancel(cancel)
            yield from fn(batch)
