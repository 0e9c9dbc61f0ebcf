"""``restore batch``: whole folders, resumable, parallel, reported, and nothing lost.

* The output tree mirrors the input tree. Nothing is written inside the input folder and no input
  is ever overwritten; every output goes to a hidden temporary name and is renamed when complete.
* A SQLite job database in the output folder (``restore-batch.sqlite``) records, for every file,
  its content hash, the models and their weights hashes, the status, the error, timings and metrics.
  Running the same command again skips files already done with the same content and models, redoes
  files that were in flight or changed, and (with ``retry_failed``) retries failures.
* Decoding and encoding run on a pool of worker threads on either side of the model, with a bounded
  queue, so the model does not wait for the disk. Videos are processed too, frame by frame.
* At the end: a summary, ``report.csv`` (every file) and ``report.html`` (the best and worst files by
  PSNR with before/after thumbnails) when there is a reference folder or a simulated degradation.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import hashlib
import html
import json
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from restore_app.core.checks import check_choice, check_range
from restore_app.core.errors import Cancelled, InputError, OutputError, RestoreError
from restore_app.core.io import MediaKind, media_kind, read_image, to_float
from restore_app.core.io.atomic import PARTIAL_MARK, atomic_output
from restore_app.core.io.formats import IMAGE_EXTENSIONS, RAW_EXTENSIONS, VIDEO_EXTENSIONS, VIDEO_OUTPUT_EXTENSIONS
from restore_app.core.jobs import CancelToken, check_cancel
from restore_app.core.metrics import compare
from restore_app.core.pipeline import (
    Decoded,
    Restorer,
    RunOptions,
    check_chain,
    decode_input,
    encode_output,
    inside,
    process_video,
    restore_chain,
    restore_decoded,
)
from restore_app.core.simulate import Degradation, simulate

DB_NAME = "restore-batch.sqlite"
FORMATS = {"png": ".png", "tiff": ".tif", "jpg": ".jpg"}
MEDIA_EXTENSIONS = IMAGE_EXTENSIONS | RAW_EXTENSIONS | VIDEO_EXTENSIONS


@dataclass(frozen=True)
class BatchConfig:
    """What ``restore batch`` was asked to do (a typed config; the CLI fills it)."""

    in_dir: Path
    out_dir: Path
    models: tuple[str, ...]
    recursive: bool = False
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    format: str | None = None  # png | tiff | jpg; None keeps images as PNG, RAW as TIFF
    quality: int = 95
    reference_dir: Path | None = None
    simulate: Degradation | None = None
    workers: int = 2
    retry_failed: bool = False
    options: RunOptions = field(default_factory=RunOptions)

    def __post_init__(self) -> None:
        if self.format is not None:
            check_choice(self.format, tuple(FORMATS), "format")
        check_range(self.quality, 1, 100, "quality")
        check_range(self.workers, 1, 64, "workers")
        if not self.models:
            raise InputError("give at least one model")
        if self.reference_dir is not None and self.simulate is not None:
            raise InputError("give either a reference folder or a simulated degradation, not both")


@dataclass
class FileResult:
    rel: str
    status: str  # done | failed | skipped | up-to-date
    error: str = ""
    output: str = ""
    seconds: float = 0.0
    metrics: dict = field(default_factory=dict)


@dataclass
class BatchSummary:
    total: int = 0
    done: int = 0
    up_to_date: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    results: list[FileResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def line(self) -> str:
        rate = self.done / self.seconds if self.seconds else 0.0
        return (f"{self.total} files: {self.done} restored, {self.up_to_date} already done, "
                f"{self.failed} failed, {self.skipped} skipped ({rate:.2f} files/s)")


# ---------------------------------------------------------------------------------------------
# discovery and paths


def check_folders(cfg: BatchConfig) -> None:
    """Refuse to write into the input tree, and prove the output folder writable before any work."""
    if not cfg.in_dir.is_dir():
        raise InputError(f"{cfg.in_dir}: no such folder")
    if inside(cfg.out_dir, cfg.in_dir):
        raise OutputError(f"{cfg.out_dir}: the output folder must not be inside the input folder {cfg.in_dir}")
    if cfg.reference_dir is not None and not cfg.reference_dir.is_dir():
        raise InputError(f"{cfg.reference_dir}: no such reference folder")
    try:
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_output(cfg.out_dir / ".restore-write-test") as tmp:
            tmp.write_bytes(b"ok")
        (cfg.out_dir / ".restore-write-test").unlink()
    except OSError as exc:
        raise OutputError(f"{cfg.out_dir}: the output folder is not writable ({exc})") from exc


def discover(cfg: BatchConfig) -> list[Path]:
    """Files under ``in_dir`` (relative paths, sorted), filtered by the include/exclude globs."""
    pattern = "**/*" if cfg.recursive else "*"
    out = []
    for path in sorted(cfg.in_dir.glob(pattern)):
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(cfg.in_dir)
        name = rel.as_posix()
        if cfg.include and not any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(path.name, g) for g in cfg.include):
            continue
        if any(fnmatch.fnmatch(name, g) or fnmatch.fnmatch(path.name, g) for g in cfg.exclude):
            continue
        out.append(rel)
    return out


def output_path(cfg: BatchConfig, rel: Path, labels: bool) -> Path:
    """Where ``rel``'s result goes: the same relative path, with the output format's extension."""
    ext = rel.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        new = ext if ext in VIDEO_OUTPUT_EXTENSIONS else ".mp4"
    elif labels:
        new = ".tif" if cfg.format == "tiff" else ".png"
    elif cfg.format is not None:
        new = FORMATS[cfg.format]
    else:
        new = ".tif" if ext in RAW_EXTENSIONS else ".png"
    return cfg.out_dir / rel.with_suffix(new)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# the job database


class JobDatabase:
    """One row per input file; every change is committed at once (WAL), so a kill loses nothing."""

    COLUMNS = ("rel", "size", "mtime_ns", "sha256", "model_key", "status", "error", "output",
               "started", "finished", "seconds_decode", "seconds_model", "seconds_encode", "metrics")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=True)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS files (
            rel TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, model_key TEXT,
            status TEXT, error TEXT, output TEXT, started REAL, finished REAL,
            seconds_decode REAL, seconds_model REAL, seconds_encode REAL, metrics TEXT)""")

    def get(self, rel: str) -> dict | None:
        row = self.db.execute(f"SELECT {', '.join(self.COLUMNS)} FROM files WHERE rel = ?", (rel,)).fetchone()
        return dict(zip(self.COLUMNS, row, strict=True)) if row else None

    def put(self, rel: str, **values) -> None:
        values["rel"] = rel
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        updates = ", ".join(f"{k} = excluded.{k}" for k in values if k != "rel")
        self.db.execute(f"INSERT INTO files ({cols}) VALUES ({marks}) ON CONFLICT(rel) DO UPDATE SET {updates}",
                        tuple(values.values()))

    def rows(self) -> list[dict]:
        return [dict(zip(self.COLUMNS, r, strict=True))
                for r in self.db.execute(f"SELECT {', '.join(self.COLUMNS)} FROM files ORDER BY rel")]

    def close(self) -> None:
        self.db.close()


def _content_hash(db: JobDatabase, rel: str, path: Path) -> tuple[int, int, str]:
    """(size, mtime, sha256), reusing the stored hash when size and modification time match."""
    st = path.stat()
    row = db.get(rel)
    if row and row["size"] == st.st_size and row["mtime_ns"] == st.st_mtime_ns and row["sha256"]:
        return st.st_size, st.st_mtime_ns, row["sha256"]
    return st.st_size, st.st_mtime_ns, file_sha256(path)


# ---------------------------------------------------------------------------------------------
# running


@dataclass
class _Item:
    rel: Path
    src: Path
    dst: Path
    sha: str
    size: int
    mtime: int
    decoded: Decoded | None = None
    reference: np.ndarray | None = None
    model_input: np.ndarray | None = None
    sigma: float | None = None
    source: np.ndarray | None = None  # the input image, kept for the overlay of a label map
    high_bit_depth: bool = False
    seconds: dict = field(default_factory=dict)


BatchProgress = Callable[[BatchSummary, str], None]


def _model_key(restorers: Sequence[Restorer]) -> str:
    return json.dumps([[r.manifest.id, r.model.weights_sha256] for r in restorers])


def _remove_stale_partials(out_dir: Path) -> int:
    """Temporary files a killed run left behind (ours only: hidden, with the partial mark)."""
    n = 0
    for p in out_dir.rglob(f".*{PARTIAL_MARK}*"):
        if p.is_file():
            p.unlink()
            n += 1
    return n


def run_batch(cfg: BatchConfig, restorers: Sequence[Restorer], *, progress: BatchProgress | None = None,
              cancel: CancelToken | None = None) -> BatchSummary:
    """Process every file of ``cfg.in_dir``; returns the summary (reports are written too)."""
    check_chain([r.manifest for r in restorers])
    check_folders(cfg)
    _remove_stale_partials(cfg.out_dir)
    db = JobDatabase(cfg.out_dir / DB_NAME)
    key = _model_key(restorers)
    labels = restorers[-1].manifest.output == "labels"
    options = RunOptions(pattern=cfg.options.pattern, sigma=cfg.options.sigma, quality=cfg.quality,
                         crf=cfg.options.crf, bit_depth=cfg.options.bit_depth)
    summary = BatchSummary()
    start = time.perf_counter()
    files = discover(cfg)
    summary.total = len(files)

    def report(result: FileResult, message: str) -> None:
        summary.results.append(result)
        summary.seconds = time.perf_counter() - start
        if progress is not None:
            progress(summary, message)

    pending: list[_Item] = []
    try:
        for rel in files:
            rel_s, src = rel.as_posix(), cfg.in_dir / rel
            if src.suffix.lower() not in MEDIA_EXTENSIONS:
                summary.skipped += 1
                db.put(rel_s, status="skipped", error=f"unsupported file type {src.suffix or '(none)'}")
                report(FileResult(rel_s, "skipped", f"unsupported file type {src.suffix or '(none)'}"), rel_s)
                continue
            size, mtime, sha = _content_hash(db, rel_s, src)
            dst = output_path(cfg, rel, labels)
            row = db.get(rel_s)
            same = row is not None and row["sha256"] == sha and row["model_key"] == key
            if same and row["status"] == "done" and dst.is_file():
                summary.up_to_date += 1
                report(FileResult(rel_s, "up-to-date", output=str(dst),
                                  metrics=json.loads(row["metrics"] or "{}")), rel_s)
                continue
            if same and row["status"] == "failed" and not cfg.retry_failed:
                summary.failed += 1
                report(FileResult(rel_s, "failed", row["error"] or ""),
                       f"FAILED {rel_s}: {row['error']} (failed before; retry with --retry-failed)")
                continue
            db.put(rel_s, size=size, mtime_ns=mtime, sha256=sha, model_key=key, status="pending",
                   error="", output=str(dst))
            pending.append(_Item(rel, src, dst, sha, size, mtime))
        _process(cfg, restorers, options, pending, db, summary, report, cancel)
    finally:
        summary.seconds = time.perf_counter() - start
        write_reports(cfg, db, summary)
        db.close()
    return summary


def _process(cfg: BatchConfig, restorers: Sequence[Restorer], options: RunOptions, items: list[_Item],
             db: JobDatabase, summary: BatchSummary, report: Callable[[FileResult, str], None],
             cancel: CancelToken | None) -> None:
    """Decode on the pool, run the models here, encode on the pool; bounded look-ahead."""
    images = [it for it in items if media_kind(it.src) is not MediaKind.VIDEO]
    videos = [it for it in items if media_kind(it.src) is MediaKind.VIDEO]

    def fail(item: _Item, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, RestoreError) else f"{type(exc).__name__}: {exc}"
        db.put(item.rel.as_posix(), status="failed", error=message, finished=time.time())
        summary.failed += 1
        report(FileResult(item.rel.as_posix(), "failed", message), f"FAILED {item.rel}: {message}")

    def finish(item: _Item, fut: Future) -> None:
        try:
            metrics = fut.result()
        except Exception as exc:  # an encoding failure is that file's failure
            fail(item, exc)
            return
        db.put(item.rel.as_posix(), status="done", finished=time.time(), metrics=json.dumps(metrics),
               seconds_decode=item.seconds.get("decode"), seconds_model=item.seconds.get("model"),
               seconds_encode=item.seconds.get("encode"))
        summary.done += 1
        report(FileResult(item.rel.as_posix(), "done", output=str(item.dst),
                          seconds=sum(v for v in item.seconds.values() if v), metrics=metrics), str(item.rel))

    with ThreadPoolExecutor(cfg.workers, thread_name_prefix="decode") as decoders, \
            ThreadPoolExecutor(cfg.workers, thread_name_prefix="encode") as encoders:
        lookahead = 2 * cfg.workers
        queue: deque[tuple[_Item, Future]] = deque()
        writing: deque[tuple[_Item, Future]] = deque()
        feed = iter(images)

        def top_up() -> None:
            while len(queue) < lookahead:
                item = next(feed, None)
                if item is None:
                    return
                queue.append((item, decoders.submit(_decode, cfg, item)))

        top_up()
        while queue:
            check_cancel(cancel)
            item, fut = queue.popleft()
            top_up()
            try:
                fut.result()
                db.put(item.rel.as_posix(), status="running", started=time.time())
                t = time.perf_counter()
                result = _restore(item, restorers, options, cancel)
                item.seconds["model"] = time.perf_counter() - t
            except Cancelled:
                raise
            except Exception as exc:  # any failure is that file's, and the batch goes on
                fail(item, exc)
                continue
            if restorers[-1].manifest.output == "labels":
                item.source = item.decoded.image if item.model_input is None else item.model_input
            item.decoded = None  # free the input while the result is being written
            writing.append((item, encoders.submit(_encode, item, result, restorers[-1].manifest, options)))
            while writing and (writing[0][1].done() or len(writing) > lookahead):
                finish(*writing.popleft())
        while writing:
            finish(*writing.popleft())
    for item in videos:
        check_cancel(cancel)
        try:
            db.put(item.rel.as_posix(), status="running", started=time.time())
            item.dst.parent.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            process_video(item.src, item.dst, list(restorers), options, cancel=cancel)
            item.seconds["model"] = time.perf_counter() - t
        except Cancelled:
            raise
        except Exception as exc:  # any failure is that file's, and the batch goes on
            fail(item, exc)
            continue
        finish(item, _completed({}))


def _completed(value) -> Future:
    fut: Future = Future()
    fut.set_result(value)
    return fut


def _decode(cfg: BatchConfig, item: _Item) -> None:
    t = time.perf_counter()
    item.decoded = decode_input(item.src)
    item.high_bit_depth = item.decoded.high_bit_depth
    if cfg.simulate is not None:
        if item.decoded.image is None:
            raise InputError(f"{item.src}: simulate mode needs images, not camera RAW files")
        sim = simulate(item.decoded.image, cfg.simulate)
        item.model_input, item.reference, item.sigma = sim.model_input, sim.reference, sim.sigma
    elif cfg.reference_dir is not None:
        ref_path = _find_reference(cfg.reference_dir, item.rel)
        item.reference = to_float(read_image(ref_path))
    item.seconds["decode"] = time.perf_counter() - t


def _find_reference(folder: Path, rel: Path) -> Path:
    for candidate in [folder / rel] + [folder / rel.with_suffix(e) for e in sorted(IMAGE_EXTENSIONS)]:
        if candidate.is_file():
            return candidate
    raise InputError(f"no reference for {rel} in {folder}")


def _restore(item: _Item, restorers: Sequence[Restorer], options: RunOptions,
             cancel: CancelToken | None) -> np.ndarray:
    if item.model_input is not None:
        pattern = "RGGB"
        return restore_chain(restorers, item.model_input, pattern=pattern, sigma=item.sigma, cancel=cancel)
    return restore_decoded(item.decoded, restorers, options, cancel=cancel)


def _encode(item: _Item, result: np.ndarray, last, options: RunOptions) -> dict:
    t = time.perf_counter()
    item.dst.parent.mkdir(parents=True, exist_ok=True)
    encode_output(item.dst, result, last, options, high_bit_depth=item.high_bit_depth, source=item.source)
    metrics = {}
    if item.reference is not None and last.output == "image":
        if item.reference.shape != result.shape:
            raise InputError(f"{item.rel}: result {result.shape[1]}×{result.shape[0]} and reference "
                             f"{item.reference.shape[1]}×{item.reference.shape[0]} differ in size")
        metrics = compare(item.reference[..., :3] if item.reference.ndim == 3 else item.reference,
                          result[..., :3] if result.ndim == 3 else result).as_dict()
    item.seconds["encode"] = time.perf_counter() - t
    return metrics


# ---------------------------------------------------------------------------------------------
# reports


def write_reports(cfg: BatchConfig, db: JobDatabase, summary: BatchSummary, thumbnails: int = 5) -> None:
    """``report.csv`` with every file's status and metrics, and ``report.html`` with the best and worst
    files by PSNR (before/after thumbnails) when metrics exist."""
    rows = db.rows()
    with atomic_output(cfg.out_dir / "report.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "status", "error", "output", "psnr", "ssim", "ms_ssim", "seconds_decode",
                    "seconds_model", "seconds_encode"])
        for r in rows:
            m = json.loads(r["metrics"] or "{}")
            w.writerow([r["rel"], r["status"], r["error"] or "", r["output"] or "", _fmt(m.get("psnr")),
                        _fmt(m.get("ssim")), _fmt(m.get("ms_ssim")), _fmt(r["seconds_decode"]),
                        _fmt(r["seconds_model"]), _fmt(r["seconds_encode"])])
    scored = [r for r in rows if r["status"] == "done" and json.loads(r["metrics"] or "{}").get("psnr") is not None]
    scored.sort(key=lambda r: json.loads(r["metrics"])["psnr"])
    with atomic_output(cfg.out_dir / "report.html") as tmp:
        tmp.write_text(_html(cfg, summary, rows, scored[:thumbnails], scored[::-1][:thumbnails]))


def _fmt(v) -> str:
    return "" if v is None else f"{v:.6g}"


def _thumb(img: np.ndarray | None, size: int = 256) -> str:
    if img is None:
        return ""
    import cv2

    from restore_app.core.visual import to_u8

    u8 = to_u8(img)
    scale = size / max(u8.shape[:2])
    if scale < 1:
        u8 = cv2.resize(u8, (max(1, round(u8.shape[1] * scale)), max(1, round(u8.shape[0] * scale))),
                        interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    return f'<img src="data:image/jpeg;base64,{base64.b64encode(buf).decode()}">' if ok else ""


def _before(cfg: BatchConfig, rel: str) -> np.ndarray | None:
    try:
        img = to_float(read_image(cfg.in_dir / rel))
        return simulate(img, cfg.simulate).display if cfg.simulate is not None else img
    except (RestoreError, OSError):
        return None


def _after(path: str) -> np.ndarray | None:
    try:
        return to_float(read_image(path))
    except (RestoreError, OSError):
        return None


def _html(cfg: BatchConfig, summary: BatchSummary, rows: list[dict], worst: list[dict], best: list[dict]) -> str:
    def table(title: str, chosen: list[dict]) -> str:
        body = "".join(
            f"<tr><td>{html.escape(r['rel'])}</td><td>{json.loads(r['metrics'])['psnr']:.2f}</td>"
            f"<td>{json.loads(r['metrics'])['ssim']:.4f}</td><td>{_thumb(_before(cfg, r['rel']))}</td>"
            f"<td>{_thumb(_after(r['output']))}</td></tr>" for r in chosen)
        return (f"<h2>{title}</h2><table><tr><th>file</th><th>PSNR</th><th>SSIM</th><th>before</th>"
                f"<th>after</th></tr>{body}</table>")

    failed = "".join(f"<li>{html.escape(r['rel'])}: {html.escape(r['error'] or '')}</li>"
                     for r in rows if r["status"] == "failed")
    mode = (f"simulated degradation: {cfg.simulate.describe()}" if cfg.simulate else
            f"reference folder: {cfg.reference_dir}" if cfg.reference_dir else "no reference (no metrics)")
    sections = (table("Worst files by PSNR", worst) + table("Best files by PSNR", best)) if worst else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Restore batch report</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 8px;border-bottom:1px solid #ddd}}
img{{max-width:256px}}</style></head><body>
<h1>Restore batch report</h1>
<p>{html.escape(str(cfg.in_dir))} → {html.escape(str(cfg.out_dir))}<br>models: {html.escape(' → '.join(cfg.models))}
<br>{html.escape(mode)}</p><p>{html.escape(summary.line())}</p>
{sections}
<h2>Failures</h2><ul>{failed or '<li>none</li>'}</ul></body></html>"""


__all__ = ["BatchConfig", "BatchSummary", "DB_NAME", "FileResult", "JobDatabase", "check_folders", "discover",
           "output_path", "run_batch", "write_reports"]
