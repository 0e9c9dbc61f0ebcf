"""``restore bench``: methods compared in one run on the same images, printed as a table.

Each bench runs, for each method, the task's ``restore eval`` protocol on each data set at each
setting (noise level, JPEG quality). Besides registered models it runs the published anchors, which need the
optional ``bench`` extra (``pip install -e '.[bench]'``): Malvar 2004 and Menon 2007 from
``colour-demosaicing``, and the network Gharbi et al. released (``demosaicnet``'s ``bayer.pth``). An
anchor whose package is missing is listed as such rather than stopping the bench.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.checks import check_tensor
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.evaluate import DemosaicProtocol, JpegProtocol, Protocol, VSRProtocol, evaluate
from restore_app.core.jobs import CancelToken, check_cancel
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import LoadedModel, Registry, default_registry, parse_manifest


class ColourDemosaic(nn.Module):
    """``colour-demosaicing``'s Malvar (2004) or Menon (2007) on an RGGB mosaic, through numpy."""

    def __init__(self, method: str) -> None:
        super().__init__()
        with warnings.catch_warnings():  # colour-science warns that matplotlib is absent
            warnings.simplefilter("ignore")
            import colour_demosaicing as cd

        self.fn = {"malvar": cd.demosaicing_CFA_Bayer_Malvar2004,
                   "menon": cd.demosaicing_CFA_Bayer_Menon2007}[method]

    def forward(self, mosaic: torch.Tensor) -> torch.Tensor:
        check_tensor(mosaic, "mosaic", ndim=4, channels=1)
        arr = mosaic.detach().double().cpu().numpy()[:, 0]
        out = np.stack([self.fn(m, "RGGB") for m in arr]).astype(np.float32)
        return torch.from_numpy(out).permute(0, 3, 1, 2).to(mosaic.device)


class GharbiReleased(nn.Module):
    """The network released by Gharbi et al. 2016 (``demosaicnet`` 0.0.14, ``bayer.pth``), noise-free.

    It takes a GRBG mosaic spread over three channels and loses 31 pixels a side to unpadded
    convolutions, so the RGGB input is shifted one column (reflected) and reflect-padded by 32.
    """

    PAD = 32

    def __init__(self) -> None:
        super().__init__()
        import importlib.resources

        with warnings.catch_warnings():  # demosaicnet imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            from demosaicnet.modules import BayerDemosaick

        self.net = BayerDemosaick(pretrained=False, pad=False)
        weights = importlib.resources.files("demosaicnet") / "data" / "bayer.pth"
        with importlib.resources.as_file(weights) as path:
            self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        mask = torch.zeros(3, 2, 2)  # GRBG: G R / B G
        mask[1, 0, 0] = mask[1, 1, 1] = 1
        mask[0, 0, 1] = 1
        mask[2, 1, 0] = 1
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, mosaic: torch.Tensor) -> torch.Tensor:
        check_tensor(mosaic, "mosaic", ndim=4, channels=1)
        h, w = mosaic.shape[-2:]
        x = F.pad(mosaic, (1, 0, 0, 0), mode="reflect")  # RGGB shifted one column is GRBG
        p = self.PAD
        x = F.pad(x, (p, p + (w + 1) % 2, p, p + h % 2), mode="reflect")
        hh, ww = x.shape[-2:]
        spread = x * self.mask.repeat(1, hh // 2, ww // 2)[None].to(x.dtype)
        out = self.net(spread)
        off = (hh - out.shape[-2]) // 2
        top, left = p - off, p + 1 - off
        return out[..., top:top + h, left:left + w]


@dataclass(frozen=True)
class Anchor:
    label: str
    build: Callable[[], nn.Module]
    extra: str


DEMOSAIC_ANCHORS = (
    Anchor("Malvar 2004", lambda: ColourDemosaic("malvar"), "colour-demosaicing"),
    Anchor("Menon 2007", lambda: ColourDemosaic("menon"), "colour-demosaicing"),
    Anchor("Gharbi 2016 (released)", GharbiReleased, "demosaicnet"),
)


def _anchor_restorer(anchor: Anchor, engine: Engine) -> Restorer:
    manifest = parse_manifest({"id": anchor.label.lower().replace(" ", "-").replace("(", "").replace(")", ""),
                               "task": "demosaic", "name": anchor.label, "architecture": "identity",
                               "input": "cfa", "align": 2, "tileable": False, "overlap": 0,
                               "license": "see the package", "training_data": "see the package"})
    return Restorer(LoadedModel(manifest, anchor.build()), engine)


@dataclass
class BenchRow:
    method: str
    cells: dict[str, dict[str, float]] = field(default_factory=dict)  # "data setting" → mean metrics
    seconds_per_mp: float | None = None
    parameters: int | None = None
    note: str = ""
    fps: float | None = None


Setting = tuple[str, Protocol]


def run_bench(task: str, methods: Sequence[tuple[str, Callable[[], Restorer]]], data: dict[str, Path],
              settings: Sequence[Setting], log: Callable[[str], None] = print,
              cancel: CancelToken | None = None) -> list[BenchRow]:
    """Every method × data set × setting by the task's eval protocol, in one run on the same images.

    Seconds per megapixel are the model time over all runs of a method divided by the megapixels
    processed. A method whose package is missing (``ImportError``) becomes a row saying so.
    """
    rows = []
    for label, make in methods:
        row = BenchRow(label)
        try:
            restorer = make()
        except ImportError as exc:
            row.note = f"not run: {exc.name or exc} is not installed (pip install -e '.[bench]')"
            log(f"{label}: {row.note}")
            rows.append(row)
            continue
        row.parameters = sum(p.numel() for p in restorer.module.parameters())
        _warm_up(restorer, task, data, settings, cancel)
        seconds = mp = 0.0
        for name, folder in data.items():
            for setting, protocol in settings:
                report = evaluate(restorer, task, folder, protocol, cancel=cancel)
                row.cells[f"{name} {setting}"] = report.mean
                seconds += report.seconds_per_mp * report.megapixels
                mp += report.megapixels
                log(f"{label:28s} {name:14s} {setting:6s} PSNR {report.mean['psnr']:.2f} "
                    f"SSIM {report.mean['ssim']:.4f} ({report.seconds_per_mp:.3f} s/MP)")
        row.seconds_per_mp = seconds / mp if mp else None
        rows.append(row)
    return rows


def _warm_up(restorer: Restorer, task: str, data: dict[str, Path], settings: Sequence[Setting],
             cancel: CancelToken | None) -> None:
    """An untimed run on the first image of the first data set: the first call at an image size
    builds the kernels for it (and an int8 model converts its graph), which the first timed images
    would otherwise pay."""
    import shutil
    import tempfile

    from restore_app.core.evaluate import list_images

    if task not in ("demosaic", "jpeg") or not data or not settings:
        return
    images = list_images(next(iter(data.values())))
    if not images:
        return
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(images[0], tmp)
        evaluate(restorer, task, Path(tmp), settings[0][1], cancel=cancel)


def _registered(models: Sequence[str], engine: Engine, registry: Registry) -> list[tuple[str, Callable[[], Restorer]]]:
    """A bench row per model and ensemble mode (:func:`_ensemble_variants`)."""
    return [(label, lambda m=m, e=e: Restorer(registry.load(m), e))
            for m in models for label, e in _ensemble_variants(m, engine, registry)]


def _ensemble_variants(model_id: str, engine: Engine, registry: Registry) -> list[tuple[str, Engine]]:
    """The engine's ensemble mode for ``model_id`` and, for a model with a self-ensemble, each
    cheaper mode down to its single pass, so costs and results are compared in the same run; for a
    model with a JPEG quantisation constraint, also the engine's mode without it."""
    manifest, mode = registry.get(model_id), engine.config.ensemble
    suffix = {"on": "", "off": " (single pass)", "full": " (full ensemble)"}[mode] if manifest.ensemble else ""
    out = [(model_id + suffix, engine)]
    if mode == "full" and manifest.ensemble_for("full") != manifest.ensemble_for("on"):
        out.append((f"{model_id} (default ensemble)", Engine(replace(engine.config, ensemble="on"))))
    if manifest.ensemble_for(mode):
        out.append((f"{model_id} (single pass)", Engine(replace(engine.config, ensemble="off"))))
    if manifest.jpeg_constraint is not None and engine.config.jpeg_constraint:
        out.append((f"{model_id}{suffix} (no JPEG constraint)", Engine(replace(engine.config, jpeg_constraint=False))))
    return out


def bench_demosaic(models: Sequence[str], data: dict[str, Path], sigmas: Sequence[float] = (0, 10, 20),
                   anchors: bool = True, engine: Engine | None = None, registry: Registry | None = None,
                   log: Callable[[str], None] = print, cancel: CancelToken | None = None) -> list[BenchRow]:
    """Demosaicing: registered models and (optionally) the published anchors at each σ."""
    engine = engine or Engine(EngineConfig())
    methods = _registered(models, engine, registry or default_registry())
    if anchors:
        methods += [(a.label, lambda a=a: _anchor_restorer(a, engine)) for a in DEMOSAIC_ANCHORS]
    settings = [(f"σ={s:g}", DemosaicProtocol(sigma=s)) for s in sigmas]
    return run_bench("demosaic", methods, data, settings, log, cancel)


def bench_jpeg(models: Sequence[str], data: dict[str, Path], qualities: Sequence[int] = (10, 20, 30, 40, 90),
               engine: Engine | None = None, registry: Registry | None = None,
               log: Callable[[str], None] = print, cancel: CancelToken | None = None) -> list[BenchRow]:
    """JPEG artifact removal at each quality (``jpeg-identity`` is the compressed input itself)."""
    engine = engine or Engine(EngineConfig())
    settings = [(f"q={q}", JpegProtocol(quality=q)) for q in qualities]
    return run_bench("jpeg", _registered(models, engine, registry or default_registry()), data, settings,
                     log, cancel)


_CELL_FORMATS = {"psnr": "{:.2f}", "ssim": "{:.4f}", "ap50": "{:.3f}", "map": "{:.3f}", "f1": "{:.3f}"}


def format_table(rows: list[BenchRow], metrics: Sequence[str] = ("psnr", "ssim")) -> str:
    """A Markdown table: one row per method, ``metrics`` (default ``PSNR / SSIM``) per data set and
    setting, then s/MP (and fps for video) and the parameter count."""
    columns = list(dict.fromkeys(c for r in rows for c in r.cells))
    with_fps = any(r.fps is not None for r in rows)
    extra = " fps |" if with_fps else ""
    lines = ["| method | " + " | ".join(columns) + " | s/MP |" + extra + " parameters |",
             "|---|" + "---|" * len(columns) + "---|" + ("---|" if with_fps else "") + "---|"]
    for r in rows:
        if r.note:
            lines.append(f"| {r.method} | " + " | ".join("–" for _ in columns) + " | – |"
                         + (" – |" if with_fps else "") + f" {r.note} |")
            continue
        cells = [" / ".join(_CELL_FORMATS[k].format(r.cells[c][k]) for k in metrics) if c in r.cells else "–"
                 for c in columns]
        sec = f"{r.seconds_per_mp:.3f}" if r.seconds_per_mp is not None else "–"
        fps = (f" {r.fps:.2f} |" if r.fps is not None else " – |") if with_fps else ""
        lines.append(f"| {r.method} | " + " | ".join(cells) + f" | {sec} |{fps} {r.parameters:,} |")
    return "\n".join(lines)


def rows_to_json(rows: list[BenchRow]) -> str:
    return json.dumps([{"method": r.method, "cells": r.cells, "seconds_per_mp": r.seconds_per_mp,
                        "parameters": r.parameters, "fps": r.fps, "note": r.note} for r in rows], indent=2)


def bench_vsr(models: Sequence[str], data: dict[str, Path], scale: int = 4, engine: Engine | None = None,
              registry: Registry | None = None, log: Callable[[str], None] = print,
              cancel: CancelToken | None = None) -> list[BenchRow]:
    """Video super-resolution: every model on the clips by the vsr eval protocol (Y, no crop)."""
    engine = engine or Engine(EngineConfig())
    settings = [(f"×{scale}", VSRProtocol(scale=scale))]
    return run_bench("vsr", _registered(models, engine, registry or default_registry()), data, settings, log, cancel)


def frames_per_second(restorer: Restorer, size: tuple[int, int] = (180, 320), frames: int = 12) -> float:
    """Frames per second of a super-resolution model on a synthetic clip of ``size`` (h, w) input
    frames, after one warm-up frame (for 180p → 720p at ×4)."""
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(frames + 1)]
    list(restorer.restore_frames(clip[:1]))
    t = time.perf_counter()
    n = sum(1 for _ in restorer.restore_frames(clip[1:]))
    return n / (time.perf_counter() - t)


def fold_weights(manifest, tile: str) -> Path:
    """Where a segmentation model keeps the weights of its leave-one-out fold without ``tile``."""
    return manifest.root / "folds" / f"{Path(tile).stem}.safetensors"


def fold_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {})


def bench_segment(models: Sequence[str], data: Path, engine: Engine | None = None,
                  registry: Registry | None = None, log: Callable[[str], None] = print,
                  cancel: CancelToken | None = None) -> list[BenchRow]:
    """Instance segmentation, leave-one-out: each tile is scored by a model trained without it.

    A trained model must ship its fold weights (``folds/<tile>.safetensors`` in its folder); a model
    without weights (the classical baseline) is scored on every tile as it is. The row's cell is the
    mean over tiles of AP50, mAP (0.50:0.95) and F1 at 0.5. A model with a self-ensemble gets a
    row per ensemble mode down to its single pass (:func:`_ensemble_variants`), as in the other benches.
    """
    import shutil
    import tempfile

    from restore_app.core.evaluate import SegmentProtocol, labelled_images
    from restore_app.core.io import read_image, to_float, to_rgb
    from restore_app.core.registry import build_model, build_module, load_weights

    registry = registry or default_registry()
    engine = engine or Engine(EngineConfig())
    tiles = [image.name for image, _ in labelled_images(data)]
    variants = []
    for model_id in models:
        variants += [(label, model_id, e) for label, e in _ensemble_variants(model_id, engine, registry)]
    rows = []
    for label, model_id, run_engine in variants:
        manifest = registry.get(model_id)
        row = BenchRow(label)
        items, seconds, mp = [], 0.0, 0.0
        for tile in tiles:
            check_cancel(cancel)
            if manifest.weights is None:
                loaded = build_model(manifest)
            else:
                weights = fold_weights(manifest, tile)
                if not weights.is_file():
                    row.note = (f"not run: no fold weights {weights} (train them with restore train segment "
                                f"--holdout {tile})")
                    break
                loaded = LoadedModel(manifest, build_module(manifest).eval())
                load_weights(loaded.module, weights)
                cut = fold_metadata(weights).get("cut_level")
                if cut is not None:  # the fold's own choice, made without the held-out tile
                    loaded.module.cut_level = int(cut)
            restorer = Restorer(loaded, run_engine)
            # an untimed first pass: the first call at an image size builds the kernels for it, which
            # on these quarter-megapixel tiles costs about as much as the inference itself
            restorer.restore_image(to_float(to_rgb(read_image(data / "images" / tile))), cancel=cancel)
            with tempfile.TemporaryDirectory() as tmp:
                for sub in ("images", "labels"):
                    (Path(tmp) / sub).mkdir()
                    shutil.copy(data / sub / tile, Path(tmp) / sub / tile)
                report = evaluate(restorer, "segment", Path(tmp), SegmentProtocol(), cancel=cancel)
            items += report.items
            seconds += report.seconds_per_mp * report.megapixels
            mp += report.megapixels
            row.parameters = sum(p.numel() for p in restorer.module.parameters())
            log(f"{label:24s} {tile:14s} AP50 {report.mean['ap50']:.3f} mAP {report.mean['map']:.3f} "
                f"F1 {report.mean['f1']:.3f}")
        if not row.note:
            row.cells["leave-one-out"] = {k: float(np.mean([it[k] for it in items])) for k in ("ap50", "map", "f1")}
            row.cells.update({f"{it['name']}": {k: it[k] for k in ("ap50", "map", "f1")} for it in items})
            row.seconds_per_mp = seconds / mp if mp else None
        rows.append(row)
    return rows


def format_segment_table(rows: list[BenchRow]) -> str:
    return (format_table(rows, metrics=("ap50", "map", "f1"))
            + "\n\ncells: AP50 / mAP (0.50:0.95) / F1@0.5, AP_t = TP/(TP+FP+FN)")


# ---------------------------------------------------------------------------------------------
# batch throughput


@dataclass
class ThroughputRow:
    method: str
    images: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def bench_batch(model: str, workdir: Path, count: int = 1000, size: int = 96, loop_sample: int = 50,
                workers: int = 2, log: Callable[[str], None] = print) -> list[ThroughputRow]:
    """Images per second of ``restore batch`` on ``count`` small images against a plain loop of
    ``restore run`` (one process per image, timed on ``loop_sample`` of them), in one run."""
    import subprocess
    import sys

    from restore_app.core.io import read_image, write_image
    from restore_app.core.paths import resources_dir

    src = workdir / "in"
    src.mkdir(parents=True, exist_ok=True)
    sample = read_image(resources_dir() / "samples" / "coffee.png")
    rng = np.random.default_rng(0)
    for i in range(count):
        y, x = rng.integers(0, sample.shape[0] - size), rng.integers(0, sample.shape[1] - size)
        write_image(src / f"{i:05d}.png", np.ascontiguousarray(sample[y:y + size, x:x + size]))
    cmd = [sys.executable, "-m", "restore_app"]
    t = time.perf_counter()
    subprocess.run([*cmd, "batch", str(src), str(workdir / "batch"), "--model", model, "--workers", str(workers)],
                   check=True, capture_output=True)
    rows = [ThroughputRow(f"restore batch --workers {workers}", count, time.perf_counter() - t)]
    log(f"batch: {rows[0].per_second:.1f} images/s")
    (workdir / "loop").mkdir(exist_ok=True)
    files = sorted(src.glob("*.png"))[:loop_sample]
    t = time.perf_counter()
    for f in files:
        subprocess.run([*cmd, "run", str(f), "-o", str(workdir / "loop" / f.name), "--model", model],
                       check=True, capture_output=True)
    rows.append(ThroughputRow(f"loop of restore run ({len(files)} of {count} timed)", len(files),
                              time.perf_counter() - t))
    log(f"loop: {rows[1].per_second:.2f} images/s")
    return rows


def format_throughput(rows: list[ThroughputRow]) -> str:
    lines = ["| method | images | seconds | images/s |", "|---|---|---|---|"]
    lines += [f"| {r.method} | {r.images} | {r.seconds:.1f} | {r.per_second:.2f} |" for r in rows]
    if len(rows) == 2 and rows[1].per_second:
        lines.append(f"\nbatch / loop: {rows[0].per_second / rows[1].per_second:.1f}×")
    return "\n".join(lines)
