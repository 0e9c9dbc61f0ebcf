"""``restore``: run, compare, eval, models and demo.

User errors print one line, ``restore: error: …``, and exit with status 1; a cancelled job (Ctrl-C)
exits with 130. Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from restore_app import __version__


def _engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="compute precision (auto: the fastest the model was validated at)")
    g.add_argument("--tile", type=int, default=1024,
                   help="tile size in pixels; 0 = whole image at once (video models cap it: see their manifest)")
    g.add_argument("--overlap", type=int, default=None, help="tile context in pixels (default: the model's)")
    g.add_argument("--batch", type=int, default=4, help="video frames per forward pass")
    # the choices are engine.ENSEMBLE_MODES, written out so that --help does not import torch
    g.add_argument("--ensemble", default="on", choices=("off", "on", "full"),
                   help="self-ensemble: average over test-time flips/transposes a model names; on: its "
                        "default set (2–4× the time), full: its larger set (best quality, 4–8×), off: "
                        "one pass")
    g.add_argument("--no-ensemble", dest="ensemble", action="store_const", const="off",
                   help="one pass, fastest (the same as --ensemble off)")
    g.add_argument("--no-jpeg-constraint", dest="jpeg_constraint", action="store_false",
                   help="JPEG models: skip the quantisation constraint that corrects their output with the "
                        "quantisation table found in the decoded input")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restore", description="Repair photos and videos with neural networks.")
    parser.add_argument("--version", action="version", version=f"restore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="restore one image, camera RAW file, video or folder of frames")
    p.add_argument("input", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.add_argument("--model", help="model id (see `restore models`); RAW files default to the "
                                   "default demosaicing model")
    p.add_argument("--pattern", default="RGGB", choices=("RGGB", "BGGR", "GRBG", "GBRG"),
                   help="Bayer pattern of a single-channel mosaic image")
    p.add_argument("--sigma", type=float, default=None, help="noise level in 8-bit units (0–255)")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP output quality (1–100)")
    p.add_argument("--crf", type=int, default=18, help="video output quality, x264 CRF (0–51)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=None, help="PNG/TIFF bit depth")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of a video made from a folder of frames")
    _engine_args(p)

    p = sub.add_parser("compare", help="PSNR, SSIM and MS-SSIM of B against reference A")
    p.add_argument("a", type=Path, help="reference image")
    p.add_argument("b", type=Path, help="image to score")
    p.add_argument("--y", action="store_true", help="score BT.601 luma (MATLAB rgb2ycbcr)")
    p.add_argument("--crop", type=int, default=0, help="pixels to ignore at each border")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("eval", help="score a model on clean data by a task's protocol")
    p.add_argument("--task", required=True, choices=("demosaic", "jpeg", "vsr", "segment"))
    p.add_argument("--model", required=True)
    p.add_argument("--data", type=Path, required=True, help="folder of clean images, clips, or images/ + labels/")
    p.add_argument("--sigma", type=float, default=0.0, help="demosaic: noise σ in 8-bit units")
    p.add_argument("--quality", type=int, default=10, help="jpeg: quality")
    p.add_argument("--scale", type=int, default=4, help="vsr: scale factor")
    p.add_argument("--max-frames", type=int, default=None, help="vsr: frames per clip")
    p.add_argument("--json", type=Path, default=None, dest="json_file", help="write the report here")
    _engine_args(p)

    p = sub.add_parser("models", help="list the models")
    p.add_argument("--task", default=None)
    p.add_argument("--json", action="store_true")

    # the training options depend on the task and import torch: parsed by cmd_train
    sub.add_parser("train", help="train a model: restore train TASK [options] (see restore train --help)",
                   add_help=False)

    p = sub.add_parser("batch", help="restore every file of a folder (resumable; see README)")
    p.add_argument("in_dir", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--model", required=True, nargs="+", help="a model id, or several to chain")
    p.add_argument("--recursive", action="store_true")
    p.add_argument("--include", nargs="+", default=[], metavar="GLOB")
    p.add_argument("--exclude", nargs="+", default=[], metavar="GLOB")
    p.add_argument("--format", choices=("png", "tiff", "jpg"), default=None,
                   help="image output format (default: PNG, TIFF for camera RAW)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ref = p.add_mutually_exclusive_group()
    ref.add_argument("--reference-dir", type=Path, default=None, help="clean references, same relative paths")
    ref.add_argument("--simulate", default=None, metavar="DEGRADATION",
                     help="degrade each input first and score against it: mosaic[:SIGMA], jpeg:Q, downscale:N")
    p.add_argument("--workers", type=int, default=2, help="decoding and encoding threads")
    p.add_argument("--retry-failed", action="store_true", help="try files that failed before again")
    p.add_argument("--sigma", type=float, default=None, help="noise level in 8-bit units (default: estimate)")
    _engine_args(p)

    p = sub.add_parser("bench", help="compare methods in one run on the same images (prints a table)")
    p.add_argument("task", choices=("demosaic", "jpeg", "vsr", "segment", "batch"))
    p.add_argument("--models", nargs="+", default=None,
                   help="registered models to compare (default: every model of the task)")
    p.add_argument("--data", nargs="+", default=None, metavar="NAME=DIR",
                   help="data sets (default: mcmaster and bsds500/test from the shared datasets)")
    p.add_argument("--sigmas", nargs="+", type=float, default=[0, 10, 20], help="demosaic: noise σ, 8-bit units")
    p.add_argument("--qualities", nargs="+", type=int, default=[10, 20, 30, 40, 90], help="jpeg: qualities")
    p.add_argument("--no-anchors", action="store_true", help="demosaic: skip the published anchors")
    p.add_argument("--count", type=int, default=1000, help="batch: number of small images")
    p.add_argument("--size", type=int, default=96, help="batch: image side in pixels")
    p.add_argument("--loop-sample", type=int, default=50, help="batch: images timed with a restore-run loop")
    p.add_argument("--workers", type=int, default=2, help="batch: decode/encode threads")
    p.add_argument("--scale", type=int, default=4, help="vsr: scale factor")
    p.add_argument("--json", type=Path, default=None, dest="json_file", help="write the results here")
    _engine_args(p)

    p = sub.add_parser("gui", help="start the desktop application")
    p.add_argument("file", nargs="?", type=Path, help="an image, RAW file or video to open")

    p = sub.add_parser("info", help="show the device, threads, precision support and paths in use")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="run the default models on a bundled sample")
    p.add_argument("--out", type=Path, default=Path("demo_out"))
    _engine_args(p)
    return parser


def _train_tasks() -> dict:
    """Task name → (config dataclass, module path of its task class); imported lazily."""
    from restore_app.core.train.demosaic import DemosaicTrainConfig
    from restore_app.core.train.jpeg import JpegTrainConfig
    from restore_app.core.train.segment import SegmentTrainConfig
    from restore_app.core.train.vsr import VSRTrainConfig

    return {"demosaic": (DemosaicTrainConfig, "restore_app.core.train.demosaic:DemosaicTask"),
            "jpeg": (JpegTrainConfig, "restore_app.core.train.jpeg:JpegTask"),
            "vsr": (VSRTrainConfig, "restore_app.core.train.vsr:VSRTask"),
            "segment": (SegmentTrainConfig, "restore_app.core.train.segment:SegmentTask")}


def _dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One ``--option`` per field of a config dataclass, typed from its default."""
    import dataclasses

    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, tuple):
            parser.add_argument(flag, type=Path, nargs="+", default=None,
                                help=f"default: {' '.join(map(str, default))}")
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {int: int, float: float, str: str}.get(type(default), Path)
            parser.add_argument(flag, type=kind, default=None, help=f"default: {default}")


def _train_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="restore train",
                                     description="Train a model; the same command resumes an interrupted run.")
    tsub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    for task, (config_cls, _) in _train_tasks().items():
        tp = tsub.add_parser(task, help=f"train a {task} model")
        _dataclass_args(tp, config_cls)
        tp.add_argument("--export", type=Path, default=None,
                        help="write the best weights as a model folder here when training ends "
                             "(segment with --holdout: as that model's folds/<tile>.safetensors)")
        tp.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    return parser


def cmd_train(args) -> int:
    import dataclasses
    import importlib

    from restore_app.core.train.loop import export_model, train

    args = _train_parser().parse_args(args.train_args)
    config_cls, task_path = _train_tasks()[args.task]
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_cls)
                 if getattr(args, f.name, None) is not None}
    cfg = config_cls(**overrides)
    from restore_app.core.engine import configure_cpu_threads

    configure_cpu_threads(args.threads)
    module, _, name = task_path.partition(":")
    task_module = importlib.import_module(module)
    task = getattr(task_module, name)(cfg)
    result = train(task, cfg)
    print(f"trained {result.iterations} steps in {result.seconds / 3600:.2f} h; best validation score "
          f"{result.best_score:.4f} at step {result.best_iteration}; weights in {result.out}")
    if args.export is not None:
        if hasattr(task, "export"):  # a task whose export depends on the run (segment: folds, cut level)
            exported = task.export(result.out, args.export)
        else:
            manifest = {**task_module.manifest_fields(cfg), "id": args.export.name}
            exported = export_model(result.out / "best.safetensors", args.export, manifest)
        print(f"exported {exported}")
    return 0


def _engine(args):
    from restore_app.core.engine import Engine, EngineConfig, configure_cpu_threads

    configure_cpu_threads()
    return Engine(EngineConfig(device=args.device, precision=args.precision, tile=args.tile,
                               overlap=args.overlap, batch=args.batch, ensemble=args.ensemble,
                               jpeg_constraint=args.jpeg_constraint))


def cmd_run(args) -> int:
    from restore_app.cli.progress import ProgressBar
    from restore_app.core.io import MediaKind, media_kind
    from restore_app.core.pipeline import Restorer, RunOptions, process_file
    from restore_app.core.registry import default_registry

    registry = default_registry()
    kind = MediaKind.VIDEO if args.input.is_dir() else media_kind(args.input)
    if args.model is None:
        if kind is not MediaKind.RAW:
            raise _UsageError("--model is required (see `restore models`)")
        from restore_app.core import int8

        # the int8 form where it is fast, as the GUI chooses
        args.model = registry.default("demosaic", int8=int8.preferred(args.device, args.precision)).id
    options = RunOptions(pattern=args.pattern, sigma=None if args.sigma is None else args.sigma / 255.0,
                         quality=args.quality, crf=args.crf, bit_depth=args.bit_depth, fps=args.fps)
    restorer = Restorer(registry.load(args.model), _engine(args))
    unit = "frame" if kind is MediaKind.VIDEO else "tile"
    with ProgressBar(f"{args.model}", unit=unit) as bar:
        out = process_file(args.input, args.output, restorer, options, progress=bar)
    extra = ""
    if restorer.manifest.output == "labels":
        from restore_app.core.io import read_image
        from restore_app.core.segment import companion_paths

        overlay_path, csv_path = companion_paths(out)
        extra = f"; {int(read_image(out).max())} instances, overlay {overlay_path.name}, table {csv_path.name}"
    print(f"wrote {out} ({args.model} on {restorer.engine.device}, {restorer.precision}, "
          f"{restorer.seconds:.2f} s in the model{extra})")
    return 0


def cmd_compare(args) -> int:
    import numpy as np

    from restore_app.core.errors import InputError
    from restore_app.core.io import read_image, to_float
    from restore_app.core.metrics import compare

    a, b = read_image(args.a), read_image(args.b)
    if a.shape != b.shape:
        raise InputError(f"{args.b}: size {b.shape} differs from the reference {args.a}: {a.shape}")
    a, b = to_float(a), to_float(b)
    if a.ndim == 3 and a.shape[2] == 4:
        a, b = a[..., :3], b[..., :3]
    if args.y and a.ndim == 2:
        args.y = False  # a grey image is its own luma
    s = compare(np.asarray(a, np.float64), np.asarray(b, np.float64), crop=args.crop, y=args.y)
    if args.json:
        print(json.dumps({**s.as_dict(), "y": s.y, "crop": s.crop}, indent=2, allow_nan=True)
              .replace("Infinity", "null"))
    else:
        ms = "n/a (image under 161 px)" if s.ms_ssim is None else f"{s.ms_ssim:.4f}"
        print(f"PSNR {s.psnr:.2f} dB  SSIM {s.ssim:.4f}  MS-SSIM {ms}  ({s.convention})")
    return 0


def cmd_eval(args) -> int:
    from restore_app.cli.progress import ProgressBar
    from restore_app.core.evaluate import DemosaicProtocol, JpegProtocol, SegmentProtocol, VSRProtocol, evaluate
    from restore_app.core.io.atomic import atomic_output
    from restore_app.core.pipeline import Restorer
    from restore_app.core.registry import default_registry

    protocol = {"demosaic": lambda: DemosaicProtocol(sigma=args.sigma),
                "jpeg": lambda: JpegProtocol(quality=args.quality),
                "vsr": lambda: VSRProtocol(scale=args.scale, max_frames=args.max_frames),
                "segment": SegmentProtocol}[args.task]()
    restorer = Restorer(default_registry().load(args.model), _engine(args))
    with ProgressBar(f"eval {args.model}", unit="item") as bar:
        report = evaluate(restorer, args.task, args.data, protocol, progress=bar)
    keys = list(report.mean)
    print(f"{args.task} / {args.model} / {json.dumps(report.protocol)}")
    print(f"{'item':24s}" + "".join(f"{k:>10s}" for k in keys))
    for item in report.items:
        print(f"{str(item['name'])[:24]:24s}" + "".join(
            f"{item[k]:10.4f}" if item.get(k) is not None else f"{'–':>10s}" for k in keys))
    print(f"{'mean':24s}" + "".join(f"{report.mean[k]:10.4f}" for k in keys))
    print(f"seconds per megapixel: {report.seconds_per_mp:.4f}")
    if args.json_file is not None:
        with atomic_output(args.json_file) as tmp:
            tmp.write_text(report.to_json())
        print(f"wrote {args.json_file}")
    return 0


def cmd_models(args) -> int:
    from restore_app.core.registry import default_registry, stands_in

    registry = default_registry()
    manifests = registry.manifests(args.task)
    if args.json:
        print(json.dumps({"models": [m.to_dict() for m in manifests],
                          "issues": [{"source": i.source, "message": i.message} for i in registry.issues]},
                         indent=2))
        return 0
    from restore_app.core import int8

    defaults = {m.id: m for m in manifests if m.default}
    # int8 forms stand in for their default where int8 is fast (the GUI's default on such a CPU),
    # unless they defer to it where it runs in bf16 (a CPU with AMX)
    stand_ins = {m.id for m in manifests if m.int8_of in defaults and stands_in(m, defaults[m.int8_of])} \
        if int8.fast_on_this_cpu() else set()
    print(f"{'id':24s} {'task':9s} {'input':6s} {'scale':>5s}  {'source':10s} name")
    for m in manifests:
        star = "*" if m.default else ("+" if m.id in stand_ins else " ")
        print(f"{m.id:24s} {m.task:9s} {m.input:6s} {m.scale:>5d}{star} {m.source:10s} {m.name}")
    note = "; + = the int8 form that stands in for it on this CPU, which has fast int8" if stand_ins else ""
    print(f"(* = the task's default model{note})")
    for issue in registry.issues:
        print(f"error in {issue.source}: {issue.message}", file=sys.stderr)
    return 0


def cmd_batch(args) -> int:
    from restore_app.cli.progress import ProgressBar
    from restore_app.core.batch import BatchConfig, run_batch
    from restore_app.core.pipeline import Restorer, RunOptions
    from restore_app.core.registry import default_registry
    from restore_app.core.simulate import parse_degradation

    cfg = BatchConfig(in_dir=args.in_dir, out_dir=args.out_dir, models=tuple(args.model), recursive=args.recursive,
                      include=tuple(args.include), exclude=tuple(args.exclude), format=args.format,
                      quality=args.quality, reference_dir=args.reference_dir,
                      simulate=parse_degradation(args.simulate) if args.simulate else None,
                      workers=args.workers, retry_failed=args.retry_failed,
                      options=RunOptions(sigma=None if args.sigma is None else args.sigma / 255.0))
    engine = _engine(args)
    registry = default_registry()
    restorers = [Restorer(registry.load(m), engine) for m in cfg.models]
    failures: list[str] = []
    with ProgressBar("batch", unit="file") as bar:
        def progress(summary, message: str) -> None:
            if message.startswith("FAILED"):
                failures.append(message)
                if not bar.enabled:
                    print(message, file=sys.stderr)
            bar(len(summary.results), summary.total)
            bar.postfix(failed=summary.failed)

        summary = run_batch(cfg, restorers, progress=progress)
    for message in failures if failures and bar.enabled else []:
        print(message, file=sys.stderr)
    print(summary.line())
    print(f"reports: {cfg.out_dir / 'report.csv'} and {cfg.out_dir / 'report.html'}")
    return 0 if summary.ok else 1


def cmd_bench(args) -> int:
    from restore_app.core.bench import bench_demosaic, bench_jpeg, bench_vsr, format_table, rows_to_json
    from restore_app.core.errors import InputError
    from restore_app.core.io.atomic import atomic_output
    from restore_app.core.paths import datasets_dir, datasets_root
    from restore_app.core.registry import default_registry

    if args.task == "batch":
        import tempfile

        from restore_app.core.bench import bench_batch, format_throughput

        model = (args.models or [default_registry().default("jpeg").id])[0]
        with tempfile.TemporaryDirectory(prefix="restore-bench-") as tmp:
            rows = bench_batch(model, Path(tmp), args.count, args.size, args.loop_sample, args.workers)
        print(f"\nmodel {model}, {args.count} images of {args.size}×{args.size}")
        print(format_throughput(rows))
        return 0
    if args.task == "segment":
        from restore_app.core.bench import bench_segment, format_segment_table

        root = datasets_root() / "nuclei_he"
        if args.data:  # one folder of images/ and labels/, as DIR or NAME=DIR like the other benches' data
            name, sep, folder = args.data[0].partition("=")
            root = Path(folder if sep else name)
        models = args.models or [m.id for m in default_registry().manifests("segment")]
        rows = bench_segment(models, root, engine=_engine(args))
        print(format_segment_table(rows))
        if args.json_file is not None:
            with atomic_output(args.json_file) as tmp:
                tmp.write_text(rows_to_json(rows))
            print(f"wrote {args.json_file}")
        return 0
    if args.data:
        data = {}
        for item in args.data:
            name, sep, folder = item.partition("=")
            if not sep:
                raise InputError(f"--data takes NAME=DIR; got {item!r}")
            data[name] = Path(folder)
    else:
        root = datasets_dir()
        if root is None:
            raise InputError("no shared datasets found: give --data NAME=DIR or set RESTORE_DATA")
        if args.task == "vsr":
            data = {"video": root / "video"}
        else:
            first = {"demosaic": ("McMaster", root / "mcmaster"), "jpeg": ("Classic5", root / "classic5")}[args.task]
            data = {first[0]: first[1], "BSDS500 test": root / "bsds500" / "test"}
    registry = default_registry()
    models = args.models or [m.id for m in registry.manifests(args.task)
                             if args.task != "vsr" or m.scale == args.scale]
    if args.task == "demosaic":
        rows = bench_demosaic(models, data, args.sigmas, anchors=not args.no_anchors, engine=_engine(args))
    elif args.task == "jpeg":
        rows = bench_jpeg(models, data, args.qualities, engine=_engine(args))
    else:
        from restore_app.core.bench import frames_per_second
        from restore_app.core.pipeline import Restorer

        rows = bench_vsr(models, data, args.scale, engine=_engine(args))
        for row in rows:
            if not row.note:
                row.fps = frames_per_second(Restorer(registry.load(row.method), _engine(args)),
                                            (720 // args.scale, 1280 // args.scale))
    print()
    print(format_table(rows))
    if args.json_file is not None:
        with atomic_output(args.json_file) as tmp:
            tmp.write_text(rows_to_json(rows))
        print(f"wrote {args.json_file}")
    return 0


def cmd_gui(args) -> int:
    from restore_app.gui.app import main as gui_main

    return gui_main([str(args.file)] if args.file else [])


def cmd_info(args) -> int:
    import os

    import torch
    from threadpoolctl import threadpool_info

    from restore_app.core import int8
    from restore_app.core.engine import configure_cpu_threads, cpu_has_fast_bf16, select_device
    from restore_app.core.io.video import ffmpeg_exe
    from restore_app.core.paths import datasets_dir
    from restore_app.core.registry import default_model_paths
    from restore_app.launcher import GLIBC_TUNABLES

    configure_cpu_threads()
    info = {
        "version": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "device": str(select_device("auto")),
        "cuda": torch.cuda.is_available(),
        "cpu_bf16": cpu_has_fast_bf16(),
        "cpu_int8": int8.fast_on_this_cpu(),  # the *-int8 models run several times faster than fp32
        "threads": torch.get_num_threads(),
        "blas_threads": max((lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"),
                            default=None),  # NumPy's and SciPy's: 1 unless OPENBLAS_NUM_THREADS says otherwise
        "malloc_tunables": GLIBC_TUNABLES in os.environ.get("GLIBC_TUNABLES", ""),
        "ffmpeg": ffmpeg_exe(),
        "model_paths": [f"{path} ({label})" for path, label in default_model_paths()],
        "datasets": str(datasets_dir()) if datasets_dir() else None,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for key, value in info.items():
            if isinstance(value, list):
                value = "\n".join([""] + [f"    {v}" for v in value])
            print(f"{key:16s} {value}")
    return 0


def cmd_demo(args) -> int:
    from restore_app.core.demo import run_demo

    results = run_demo(args.out, engine=_engine(args))
    print(f"wrote {sum(len(r.files) for r in results)} files and summary.json to {args.out}")
    return 0


class _UsageError(Exception):
    """A command-line mistake argparse cannot see; reported like argparse's own (exit status 2)."""


COMMANDS = {"run": cmd_run, "compare": cmd_compare, "eval": cmd_eval, "models": cmd_models,
            "info": cmd_info, "demo": cmd_demo, "train": cmd_train, "bench": cmd_bench, "batch": cmd_batch,
            "gui": cmd_gui}


def main(argv: list[str] | None = None) -> int:
    from restore_app.core.errors import Cancelled, RestoreError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.train_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return COMMANDS[args.command](args)
    except _UsageError as exc:
        parser.error(str(exc))
    except (Cancelled, KeyboardInterrupt):
        print("restore: cancelled", file=sys.stderr)
        return 130
    except RestoreError as exc:
        print(f"restore: error: {exc}", file=sys.stderr)
        return 1
    return 0
