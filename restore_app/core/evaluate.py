"""``restore eval``: degrade clean data by a task's protocol, restore it, score it.

The protocols match the published tables, so keep them exact:

* demosaic — RGGB mosaic of the uint8 image, Gaussian noise σ/255 added to the mosaic (not clipped),
  output clipped and rounded to uint8, PSNR/SSIM/MS-SSIM on RGB with a 10-pixel border crop.
* jpeg — OpenCV ``imencode`` at quality Q (4:2:0 for colour), RGB metrics for colour images and
  the grey values (Y) for greyscale ones, no crop.
* vsr — each clip's frames (cropped to a multiple of the scale) downscaled ×N with MATLAB bicubic and
  rounded to uint8; metrics on Y (BT.601), no crop; mean over clips of the per-clip mean.
* segment — ``DIR/images`` and ``DIR/labels``; AP at IoU t as TP/(TP+FP+FN), reported as ``ap50``,
  ``map`` (mean over t = 0.50:0.05:0.95) and ``f1`` at 0.5; mean over images.
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from restore_app.core.checks import check_choice, check_range
from restore_app.core.color import rgb_to_y
from restore_app.core.degrade import add_gaussian_noise, downsample, jpeg_compress, mosaic
from restore_app.core.errors import InputError
from restore_app.core.io import VideoReader, read_image, to_float, to_rgb
from restore_app.core.io.formats import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from restore_app.core.jobs import CancelToken, ProgressCallback, check_cancel
from restore_app.core.metrics import compare, instance_scores
from restore_app.core.pipeline import Restorer

EVAL_TASKS = ("demosaic", "jpeg", "vsr", "segment")


@dataclass(frozen=True)
class DemosaicProtocol:
    """Noise ``sigma`` is in 8-bit units (σ = 10 means 10/255)."""

    sigma: float = 0.0
    crop: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        check_range(self.sigma, 0.0, 255.0, "sigma")


@dataclass(frozen=True)
class JpegProtocol:
    quality: int = 10

    def __post_init__(self) -> None:
        check_range(self.quality, 1, 100, "quality")


@dataclass(frozen=True)
class VSRProtocol:
    scale: int = 4
    max_frames: int | None = None

    def __post_init__(self) -> None:
        check_range(self.scale, 2, 8, "scale")


@dataclass(frozen=True)
class SegmentProtocol:
    pass


Protocol = DemosaicProtocol | JpegProtocol | VSRProtocol | SegmentProtocol


@dataclass
class EvalReport:
    """What ``restore eval`` writes as JSON."""

    task: str
    model: str
    protocol: dict
    mean: dict = field(default_factory=dict)
    items: list[dict] = field(default_factory=list)
    seconds_per_mp: float = 0.0
    megapixels: float = 0.0

    def to_json(self) -> str:
        return json.dumps(_finite(asdict(self)), indent=2)


def _finite(obj):
    """Replace non-finite floats (PSNR of identical images) by None so the JSON stays valid."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted naturally (2 before 10)."""
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    files.sort(key=lambda p: [int(t) if t.isdigit() else t for t in re.findall(r"\d+|\D+", p.name)])
    return files


def _u8(x: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)


def _scores(ref: np.ndarray, out: np.ndarray, crop: int, y: bool) -> dict:
    """PSNR/SSIM (and MS-SSIM where the image is large enough) on 8-bit values."""
    ref_f, out_f = ref.astype(np.float64), out.astype(np.float64)
    if y and ref.ndim == 3:
        ref_f, out_f = rgb_to_y(ref_f, 255.0), rgb_to_y(out_f, 255.0)
    s = compare(ref_f, out_f, data_range=255.0, crop=crop)
    return s.as_dict()


def _mean(items: list[dict], keys: tuple[str, ...]) -> dict:
    out = {}
    for k in keys:
        vals = [it[k] for it in items if it.get(k) is not None]
        if vals:
            out[k] = float(np.mean(vals))
    return out


def _eval_demosaic(restorer: Restorer, data: Path, p: DemosaicProtocol,
                   tick: Callable[[int, int], None], cancel: CancelToken | None) -> tuple[list[dict], float]:
    files = list_images(data)
    items, mp = [], 0.0
    for i, path in enumerate(files):
        check_cancel(cancel)
        img = read_image(path)
        if img.ndim != 3 or img.dtype != np.uint8:
            raise InputError(f"{path}: the demosaic protocol needs 8-bit RGB images")
        noisy = add_gaussian_noise(mosaic(to_float(img[..., :3]), "RGGB"), p.sigma / 255.0, seed=p.seed + i)
        out = _u8(restorer.restore_image(noisy, pattern="RGGB", sigma=p.sigma / 255.0, cancel=cancel))
        items.append({"name": path.name, **_scores(img[..., :3], out, p.crop, y=False)})
        mp += img.shape[0] * img.shape[1] / 1e6
        tick(i + 1, len(files))
    return items, mp


def _eval_jpeg(restorer: Restorer, data: Path, p: JpegProtocol,
               tick: Callable[[int, int], None], cancel: CancelToken | None) -> tuple[list[dict], float]:
    files = list_images(data)
    items, mp = [], 0.0
    for i, path in enumerate(files):
        check_cancel(cancel)
        img = read_image(path)
        if img.dtype != np.uint8:
            raise InputError(f"{path}: the jpeg protocol needs 8-bit images")
        img = img[..., :3] if img.ndim == 3 else img
        compressed = jpeg_compress(img, p.quality)
        out = _u8(restorer.restore_image(to_float(compressed), cancel=cancel))
        items.append({"name": path.name, "grey": img.ndim == 2, **_scores(img, out, 0, y=False)})
        mp += img.shape[0] * img.shape[1] / 1e6
        tick(i + 1, len(files))
    return items, mp


def iter_clips(data: Path) -> list[tuple[str, Callable[[], Iterator[np.ndarray]]]]:
    """Clips in ``data``: video files and sub-folders of frame images, each as a frame factory."""
    if not data.is_dir():
        raise InputError(f"{data}: no such folder")
    clips: list[tuple[str, Callable[[], Iterator[np.ndarray]]]] = []
    for entry in sorted(data.iterdir()):
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
            clips.append((entry.name, lambda e=entry: iter(VideoReader(e))))
        elif entry.is_dir():
            frames = list_images(entry)
            if frames:
                clips.append((entry.name, lambda fs=frames: (read_image(f)[..., :3] for f in fs)))
    if not clips:
        raise InputError(f"{data}: no video files or folders of frames found")
    return clips


def _lr_frames(frames: Iterator[np.ndarray], scale: int, max_frames: int | None,
               pending: deque[np.ndarray]) -> Iterator[np.ndarray]:
    """Crop each frame to a multiple of ``scale``, queue it in ``pending``, yield its LR version."""
    for k, frame in enumerate(frames):
        if max_frames is not None and k >= max_frames:
            break
        h, w = frame.shape[0] // scale * scale, frame.shape[1] // scale * scale
        hr = np.ascontiguousarray(frame[:h, :w, :3])
        pending.append(hr)
        yield _u8(downsample(to_float(hr), scale))


def _eval_vsr(restorer: Restorer, data: Path, p: VSRProtocol,
              tick: Callable[[int, int], None], cancel: CancelToken | None) -> tuple[list[dict], float]:
    if restorer.manifest.scale != p.scale:
        raise InputError(f"model {restorer.manifest.id!r} upscales ×{restorer.manifest.scale}; "
                         f"the protocol asks for ×{p.scale}")
    clips = iter_clips(data)
    items, mp = [], 0.0
    s = p.scale
    for ci, (name, frames) in enumerate(clips):
        pending: deque[np.ndarray] = deque()  # HR frames whose SR result has not come back yet
        per_frame = []
        for sr in restorer.restore_frames(_lr_frames(frames(), s, p.max_frames, pending), cancel=cancel):
            hr = pending.popleft()
            y_hr, y_sr = rgb_to_y(hr.astype(np.float64), 255.0), rgb_to_y(sr.astype(np.float64), 255.0)
            per_frame.append(compare(y_hr, y_sr, data_range=255.0).as_dict())
            mp += hr.shape[0] * hr.shape[1] / 1e6
        if not per_frame:
            raise InputError(f"{data / name}: clip has no frames")
        items.append({"name": name, "frames": len(per_frame),
                      **_mean(per_frame, ("psnr", "ssim", "ms_ssim"))})
        tick(ci + 1, len(clips))
    return items, mp


def image_named(path: Path, name: str) -> bool:
    """Whether ``name`` names the image at ``path``, with or without its extension."""
    return name in (path.name, path.stem)


def labelled_images(data: Path, exclude: str | Sequence[str] = "") -> list[tuple[Path, Path]]:
    """``(image, label map)`` paths of ``data/images`` and ``data/labels`` (same names), less the
    image(s) named in ``exclude`` (with or without the extension); no images left, an ``exclude``
    name that names none of them, or an image without its label map, is an error."""
    every = list_images(data / "images")
    names = [exclude] if isinstance(exclude, str) else list(exclude)
    names = [n for n in names if n]
    for name in names:
        if not any(image_named(p, name) for p in every):
            raise InputError(f"{data / 'images'}: no image {name!r} to leave out "
                             f"(there are: {', '.join(p.name for p in every)})")
    images = [p for p in every if not any(image_named(p, n) for n in names)]
    if not images:
        raise InputError(f"{data / 'images'}: no images" + (" left after leaving some out" if names else ""))
    for path in images:
        if not (data / "labels" / path.name).is_file():
            raise InputError(f"{data / 'labels' / path.name}: missing label map for {path.name}")
    return [(path, data / "labels" / path.name) for path in images]


def _eval_segment(restorer: Restorer, data: Path, p: SegmentProtocol,
                  tick: Callable[[int, int], None], cancel: CancelToken | None) -> tuple[list[dict], float]:
    pairs = labelled_images(data)
    items, mp = [], 0.0
    for i, (path, label_path) in enumerate(pairs):
        check_cancel(cancel)
        img, gt = read_image(path), read_image(label_path)
        if gt.ndim != 2:
            raise InputError(f"{label_path}: a label map must be single-channel")
        pred = restorer.restore_image(to_float(to_rgb(img)), cancel=cancel)
        items.append({"name": path.name, "instances": int(len(np.unique(gt)) - (gt == 0).any()),
                      "predicted": int(len(np.unique(pred)) - (pred == 0).any()),
                      **instance_scores(gt, pred)})
        mp += img.shape[0] * img.shape[1] / 1e6
        tick(i + 1, len(pairs))
    return items, mp


_RUNNERS = {"demosaic": (_eval_demosaic, DemosaicProtocol, ("psnr", "ssim", "ms_ssim")),
            "jpeg": (_eval_jpeg, JpegProtocol, ("psnr", "ssim", "ms_ssim")),
            "vsr": (_eval_vsr, VSRProtocol, ("psnr", "ssim", "ms_ssim")),
            "segment": (_eval_segment, SegmentProtocol, ("ap50", "map", "f1"))}


def evaluate(restorer: Restorer, task: str, data: str | Path, protocol: Protocol | None = None, *,
             progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> EvalReport:
    """Run ``task``'s protocol on the clean data in ``data`` and score the restorer.

    ``seconds_per_mp`` is the time spent in the model per megapixel of output; ``megapixels`` is
    how many were processed.
    """
    check_choice(task, EVAL_TASKS, "task")
    if restorer.manifest.task != task:
        raise InputError(f"model {restorer.manifest.id!r} is a {restorer.manifest.task} model, "
                         f"not a {task} model")
    runner, proto_cls, keys = _RUNNERS[task]
    protocol = protocol or proto_cls()
    if not isinstance(protocol, proto_cls):
        raise InputError(f"task {task!r} takes a {proto_cls.__name__}; got {type(protocol).__name__}")

    def tick(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total)

    restorer.seconds = 0.0
    items, mp = runner(restorer, Path(data), protocol, tick, cancel)
    return EvalReport(task=task, model=restorer.manifest.id, protocol=asdict(protocol),
                      mean=_mean(items, keys), items=items,
                      seconds_per_mp=restorer.seconds / mp if mp else 0.0, megapixels=mp)


__all__ = ["DemosaicProtocol", "EvalReport", "JpegProtocol", "SegmentProtocol", "VSRProtocol",
           "evaluate", "iter_clips", "list_images"]
