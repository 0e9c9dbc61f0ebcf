"""The window's state and rules in plain Python (no Qt), so they are tested without a display.

:class:`MainViewModel` knows what is loaded (an image, a camera RAW file, a video frame), which models
apply to it and in which order they may be chained, what "before", "after" and "reference" are in
each mode (a reference file, or simulate mode where a clean image is degraded first), and which
metrics apply. The Qt widgets only display it and forward the user's actions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from restore_app.core import int8
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.errors import InputError
from restore_app.core.io import (
    MediaKind,
    RawImage,
    VideoInfo,
    VideoReader,
    media_kind,
    probe_video,
    read_image,
    read_raw,
    to_float,
)
from restore_app.core.jobs import CancelToken, ProgressCallback
from restore_app.core.metrics import Scores, compare, error_map
from restore_app.core.pipeline import CHAIN_ORDER, Restorer, check_chain, develop_raw, restore_chain
from restore_app.core.registry import ModelManifest, Registry
from restore_app.core.resize import imresize
from restore_app.core.segment import instance_table, overlay
from restore_app.core.simulate import Degradation, Simulated, simulate
from restore_app.gui.settings import Settings

TASK_LABELS = {"demosaic": "Demosaic + denoise (RAW)", "jpeg": "JPEG artifact removal",
               "vsr": "Super-resolution", "segment": "Instance segmentation"}


@dataclass
class Document:
    """What the user opened. ``image`` is float in [0, 1]: the photo, the current video frame, or for
    RAW files a quick bilinear development (the mosaic itself is in ``raw``)."""

    path: Path
    kind: MediaKind
    image: np.ndarray
    raw: RawImage | None = None
    video: VideoInfo | None = None
    frame: int = 0

    @property
    def is_mosaic(self) -> bool:
        """A camera RAW file, or a single-channel image that may be a Bayer mosaic."""
        return self.raw is not None or self.image.ndim == 2

    @property
    def title(self) -> str:
        size = f"{self.image.shape[1]}×{self.image.shape[0]}"
        if self.video is not None:
            return f"{self.path.name} — frame {self.frame + 1}/{self.video.frame_count}, {size}"
        return f"{self.path.name} — {size}"


def read_video_frame(path: Path, index: int, info: VideoInfo | None = None) -> np.ndarray:
    """One frame of a video as float RGB (our own decoder: ffmpeg seeks, then decodes)."""
    reader = VideoReader(path, start=index, info=info)
    try:
        frame = next(iter(reader))
    except StopIteration as exc:
        raise InputError(f"{path}: frame {index} could not be decoded") from exc
    finally:
        reader.close()
    return to_float(frame)


def load_document(path: str | Path, registry: Registry | None = None) -> Document:
    """Open an image, camera RAW file or video (its first frame)."""
    path = Path(path)
    kind = media_kind(path)
    if kind is MediaKind.IMAGE:
        img = to_float(read_image(path))
        return Document(path, kind, img)
    if kind is MediaKind.RAW:
        raw = read_raw(path)
        from restore_app.core.registry import default_registry

        bilinear = Restorer((registry or default_registry()).load("bilinear-demosaic"),
                            Engine(EngineConfig(device="cpu")))
        return Document(path, kind, develop_raw(raw, bilinear, sigma=0.0), raw=raw)
    info = probe_video(path)
    return Document(path, kind, read_video_frame(path, 0, info), video=info)


@dataclass
class EtaEstimator:
    """Time remaining from progress: elapsed × (1 − f) / f once a little progress is made."""

    clock: Callable[[], float] = time.monotonic
    start: float = field(default=0.0)
    fraction: float = 0.0

    def begin(self) -> None:
        self.start, self.fraction = self.clock(), 0.0

    def update(self, done: int, total: int) -> None:
        self.fraction = done / total if total else 0.0

    def remaining(self) -> float | None:
        if self.fraction < 0.02:
            return None
        elapsed = self.clock() - self.start
        return elapsed * (1 - self.fraction) / self.fraction

    def text(self) -> str:
        r = self.remaining()
        if r is None:
            return "estimating…"
        return f"{int(r // 60)} min {int(r % 60):02d} s left" if r >= 60 else f"{r:.0f} s left"


@dataclass(frozen=True)
class MetricRow:
    label: str
    scores: Scores


@dataclass(frozen=True)
class MetricsReport:
    rows: tuple[MetricRow, ...]
    convention: str
    region: tuple[int, int, int, int] | None = None  # x, y, width, height in "after" pixels


def _is_labels(array: np.ndarray) -> bool:
    """Whether a result is an instance label map (integers) rather than an image (floats)."""
    return array.dtype.kind in "iu"


class MainViewModel:
    """Everything the main window shows and allows, without Qt."""

    def __init__(self, registry: Registry, settings: Settings | None = None) -> None:
        self.registry = registry
        self.settings = settings or Settings()
        self.document: Document | None = None
        self.reference: np.ndarray | None = None
        self.reference_path: Path | None = None
        self.degradation: Degradation | None = None
        self.simulated: Simulated | None = None
        self.chain: list[str] = []
        self.sigma: float | None = None  # None: estimate from the input
        self.pattern = "RGGB"
        self.result: np.ndarray | None = None  # what is shown as "after" (an overlay for label maps)
        self.labels: np.ndarray | None = None  # the instance label map of a segmentation model
        self.result_chain: list[str] = []
        self.use_y = False
        self.crop = 0
        self.region: tuple[int, int, int, int] | None = None
        self._restorers: dict[tuple, Restorer] = {}

    # -- opening ---------------------------------------------------------------------------------
    def open(self, path: str | Path) -> Document:
        doc = load_document(path, self.registry)
        was_default = bool(self.chain) and self.chain == self.default_chain()
        self.document, self.result, self.region = doc, None, None
        self.simulated = simulate(doc.image, self.degradation) if self.degradation and not doc.is_mosaic \
            else None
        self.settings.add_recent(path)
        self.settings.last_folder = str(Path(path).resolve().parent)
        # a chain the user chose is kept while it applies; a default one follows the new input
        # (a grey image gets the grey default, a colour one the colour default)
        if not self.chain or was_default or not self._chain_applies(self.chain):
            self.chain = self.default_chain()
        return doc

    def seek(self, frame: int) -> None:
        """Show another frame of the open video (the previous result no longer applies)."""
        doc = self._need_document()
        if doc.video is None:
            raise InputError("the open file is not a video")
        frame = int(np.clip(frame, 0, doc.video.frame_count - 1))
        doc.image, doc.frame = read_video_frame(doc.path, frame, doc.video), frame
        self.result = None
        if self.degradation is not None:
            self.simulated = simulate(doc.image, self.degradation)

    def set_reference(self, path: str | Path | None) -> None:
        """Load a reference (ground-truth) image to score against; ``None`` removes it."""
        if path is None:
            self.reference, self.reference_path = None, None
            return
        ref = to_float(read_image(path))
        self.reference, self.reference_path = ref, Path(path)

    def set_simulation(self, degradation: Degradation | None) -> None:
        """Simulate mode: treat the open image as clean and degrade it before restoring."""
        self.degradation = degradation
        self.result = None
        if degradation is None:
            self.simulated = None
            return
        doc = self._need_document()
        if doc.is_mosaic:
            raise InputError("simulate mode needs a clean RGB image, not a mosaic or RAW file")
        self.simulated = simulate(doc.image, degradation)
        # the chain should start with a model that undoes this degradation
        def undoes(m: ModelManifest) -> bool:  # the right task, and for a downscale the right factor
            return m.task == degradation.task and (degradation.kind != "downscale" or m.scale == degradation.factor)

        starts_right = self.chain and undoes(self.registry.get(self.chain[0]))
        candidates = self.registry.manifests(degradation.task)
        if candidates and not (starts_right and self._chain_applies(self.chain)):
            default = self.default_model(degradation.task)
            matching = [m for m in candidates if undoes(m)]
            self.chain = [(default if undoes(default) or not matching else matching[0]).id]

    # -- models ----------------------------------------------------------------------------------
    def input_kind(self) -> str:
        """``cfa`` for RAW files, mosaic images and mosaic simulation, else ``rgb``."""
        if self.simulated is not None:
            return "cfa" if self.simulated.model_input.ndim == 2 else "rgb"
        doc = self.document
        return "cfa" if doc is not None and doc.raw is not None else "rgb"

    def models_by_task(self) -> dict[str, list[ModelManifest]]:
        return {t: self.registry.manifests(t) for t in CHAIN_ORDER if self.registry.manifests(t)}

    def first_models(self) -> list[ModelManifest]:
        """Models that can take the current input as the first step of a chain."""
        kind = self.input_kind()
        doc = self.document
        grey_mosaic_ok = doc is not None and doc.image.ndim == 2 and self.simulated is None
        # a still image (or a video's frames) is a clip to a clip model
        return [m for m in self.registry.manifests()
                if m.input == kind or (kind == "rgb" and m.input == "clip")
                or (grey_mosaic_ok and m.input in ("cfa", "rgb"))]

    def _chain_applies(self, ids: list[str]) -> bool:
        try:
            self.check_chain(ids)
        except InputError:
            return False
        return True

    def check_chain(self, ids: list[str]) -> list[ModelManifest]:
        manifests = [self.registry.get(i) for i in ids]
        check_chain(manifests)
        if manifests[0].id not in {m.id for m in self.first_models()}:
            raise InputError(f"{manifests[0].id!r} cannot take this input ({self.input_kind()})")
        if self.document is not None and self.document.video is not None and \
                any(m.input == "cfa" or m.output != "image" for m in manifests):
            raise InputError("videos are restored frame by frame with image models")
        return manifests

    def set_chain(self, ids: list[str]) -> None:
        self.check_chain(ids)
        self.chain = list(ids)

    def default_chain(self) -> list[str]:
        kind = self.input_kind()
        task = "demosaic" if kind == "cfa" else ("jpeg" if self.registry.manifests("jpeg") else None)
        if task is None:
            firsts = self.first_models()
            return [firsts[0].id] if firsts else []
        grey = self.document is not None and self.document.raw is None and self.document.image.ndim == 2
        return [self.default_model(task, grey=grey).id]

    def default_model(self, task: str, grey: bool = False) -> ModelManifest:
        """The task's default model, in its int8 form where the settings run on a CPU with fast int8
        (unless the form defers to its float model on a CPU with AMX: ``registry.stands_in``)."""
        try:
            fast = int8.preferred(self.settings.device, self.settings.precision)
        except InputError:  # a device set but not present here: the engine will say so
            fast = False
        return self.registry.default(task, grey=grey, int8=fast)

    def chain_scale(self) -> int:
        return int(np.prod([self.registry.get(i).scale for i in self.chain])) if self.chain else 1

    # -- running ---------------------------------------------------------------------------------
    def engine_config(self) -> EngineConfig:
        s = self.settings
        return EngineConfig(device=s.device, precision=s.precision, tile=s.tile, ensemble=s.ensemble,
                            jpeg_constraint=s.jpeg_constraint)

    def restorer(self, model_id: str) -> Restorer:
        key = (model_id, self.engine_config())
        if key not in self._restorers:
            self._restorers[key] = Restorer(self.registry.load(model_id), Engine(self.engine_config()))
        return self._restorers[key]

    def make_job(self) -> Callable[[ProgressCallback, CancelToken], np.ndarray]:
        """A function the worker thread runs: restore the current input with the chain."""
        doc = self._need_document()
        manifests = self.check_chain(self.chain)
        restorers = [self.restorer(m.id) for m in manifests]
        sigma, pattern = self.sigma, self.pattern
        sim, raw = self.simulated, doc.raw
        image = doc.image

        def job(progress: ProgressCallback, cancel: CancelToken) -> np.ndarray:
            if sim is not None:
                s = sim.sigma if sigma is None else sigma
                return restore_chain(restorers, sim.model_input, pattern=sim_pattern(self.degradation),
                                     sigma=s, progress=progress, cancel=cancel)
            if raw is not None:
                first = develop_raw(raw, restorers[0], sigma=sigma, progress=progress, cancel=cancel)
                return restore_chain(restorers[1:], first, progress=progress, cancel=cancel) \
                    if len(restorers) > 1 else first
            return restore_chain(restorers, image, pattern=pattern, sigma=sigma, progress=progress,
                                 cancel=cancel)

        return job

    def _segmented_image(self) -> np.ndarray | None:
        """The image a segmentation model saw: the simulated model input, else the input."""
        return self.simulated.model_input if self.simulated is not None else self.before()

    def display_of(self, result: np.ndarray) -> np.ndarray:
        """What to show for a result: the image itself, or a label map's overlay on the input."""
        if _is_labels(result):
            return overlay(self._segmented_image(), result).astype(np.float32) / 255.0
        return result

    def set_result(self, result: np.ndarray, display: np.ndarray | None = None) -> None:
        self.labels = result if _is_labels(result) else None
        self.result = display if display is not None else self.display_of(result)
        self.result_chain = list(self.chain)

    def instances(self) -> list[dict]:
        """The instance table of a segmentation result (empty otherwise)."""
        if self.labels is None:
            return []
        return instance_table(self.labels, self._segmented_image())

    # -- what is shown ---------------------------------------------------------------------------
    def before(self) -> np.ndarray | None:
        if self.simulated is not None:
            return self.simulated.display
        return self.document.image if self.document is not None else None

    def after(self) -> np.ndarray | None:
        return self.result

    def ground_truth(self) -> np.ndarray | None:
        """The reference to score against: simulate mode's original, else a loaded reference."""
        if self.simulated is not None:
            return self.simulated.reference
        return self.reference

    def metrics(self, result: np.ndarray | None = None) -> MetricsReport | None:
        """Scores of the degraded/before and restored/after images against the reference, if any.

        Images of another size than the reference (a ×4 input, a mosaic) are not scored directly:
        in simulate mode the degraded row uses the classical reading of the input (bicubic upscale,
        bilinear demosaic), as the benchmarks do. ``result`` scores a result not yet set (a worker
        thread computes the metrics before handing the result to the window).
        """
        if result is None and self.labels is not None:
            return None  # a label map is not scored against an image
        result = self.result if result is None else result
        gt = self.ground_truth()
        if gt is None or result is not None and _is_labels(result):
            return None
        rows = []
        degraded = self._degraded_for_metrics()
        if degraded is not None and degraded[1].shape == gt.shape:
            rows.append(MetricRow(degraded[0], self._score(gt, degraded[1])))
        if result is not None and result.shape == gt.shape:
            chain = self.result_chain if result is self.result else self.chain
            rows.append(MetricRow(f"restored ({' → '.join(chain)})", self._score(gt, result)))
        elif result is not None:
            raise InputError(f"the result ({result.shape[1]}×{result.shape[0]}) and the reference "
                             f"({gt.shape[1]}×{gt.shape[0]}) differ in size")
        space = "Y (BT.601)" if self.use_y and gt.ndim == 3 else "RGB" if gt.ndim == 3 else "grey"
        convention = f"{space}, crop {self.crop} px" + (", region" if self.region else "")
        return MetricsReport(tuple(rows), convention, self.region)

    def _degraded_for_metrics(self) -> tuple[str, np.ndarray] | None:
        if self.simulated is not None:
            d, sim = self.degradation, self.simulated
            if d.kind == "jpeg":
                return "degraded (JPEG as decoded)", sim.model_input
            if d.kind == "downscale":
                return "degraded (bicubic upscale)", np.clip(imresize(sim.model_input, float(d.factor)), 0, 1)
            bilinear = self.restorer("bilinear-demosaic")
            return "degraded (bilinear demosaic)", bilinear.demosaic(sim.model_input, pattern=d.pattern)
        before = self.before()
        if before is not None and self.reference is not None and before.shape == self.reference.shape:
            return "before", before
        return None

    def _score(self, gt: np.ndarray, img: np.ndarray) -> Scores:
        a, b = gt, img
        if self.region is not None:
            x, y, w, h = self.region
            a, b = a[y:y + h, x:x + w], b[y:y + h, x:x + w]
        y_ok = self.use_y and a.ndim == 3
        return compare(np.asarray(a[..., :3] if a.ndim == 3 else a, np.float64),
                       np.asarray(b[..., :3] if b.ndim == 3 else b, np.float64), crop=self.crop, y=y_ok)

    def set_region(self, region: tuple[int, int, int, int] | None) -> None:
        """Score only a rectangle ``(x, y, w, h)`` of the result (clamped; at least 11×11)."""
        if region is None:
            self.region = None
            return
        ref = self.ground_truth() if self.ground_truth() is not None else self.result
        if ref is None:
            raise InputError("nothing to measure yet")
        x, y, w, h = (int(v) for v in region)
        x0, y0 = max(0, min(x, x + w)), max(0, min(y, y + h))
        x1, y1 = min(ref.shape[1], max(x, x + w)), min(ref.shape[0], max(y, y + h))
        if x1 - x0 < 11 or y1 - y0 < 11:
            raise InputError("the region must be at least 11×11 pixels")
        self.region = (x0, y0, x1 - x0, y1 - y0)

    def error_image(self, result: np.ndarray | None = None) -> np.ndarray | None:
        """Per-pixel error of the result against the reference (or against the input if there is
        no reference and the sizes match)."""
        result = self.result if result is None else result
        if result is None or self.labels is not None or _is_labels(result):
            return None
        other = self.ground_truth()
        if other is None and self.before() is not None and self.before().shape == result.shape:
            other = self.before()
        if other is None or other.shape != result.shape:
            return None
        return error_map(other, result)

    def _need_document(self) -> Document:
        if self.document is None:
            raise InputError("open an image, RAW file or video first")
        return self.document


def sim_pattern(degradation: Degradation | None) -> str:
    return degradation.pattern if degradation is not None else "RGGB"
