"""Batch processing: resumable after SIGKILL with byte-identical outputs, failures reported and
skipped, checks before any work, changed inputs redone, reports written."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from restore_app.core.batch import DB_NAME, BatchConfig, JobDatabase, output_path, run_batch
from restore_app.core.errors import InputError, OutputError
from restore_app.core.io import probe_video, read_image, write_image
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import default_registry
from restore_app.core.simulate import parse_degradation
from tests.helpers import make_clip


def _folder(tmp_path, coffee, n=6):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    for i in range(n):
        img = np.ascontiguousarray(np.roll(coffee, 37 * i, axis=1)[:96, :128])
        write_image((src / "nested" if i % 2 else src) / f"img{i:02d}.png", img)
    return src


def _restorers(*ids):
    return [Restorer(default_registry().load(m)) for m in ids]


def _outputs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def test_mirrors_the_tree_and_resumes(tmp_path, coffee):
    src = _folder(tmp_path, coffee)
    cfg = BatchConfig(src, tmp_path / "out", ("bicubic-x2",), recursive=True)
    first = run_batch(cfg, _restorers("bicubic-x2"))
    assert (first.done, first.failed, first.up_to_date) == (6, 0, 0) and first.ok
    assert (tmp_path / "out" / "nested" / "img01.png").is_file()
    assert read_image(tmp_path / "out" / "img00.png").shape == (192, 256, 3)
    again = run_batch(cfg, _restorers("bicubic-x2"))
    assert (again.done, again.up_to_date) == (0, 6)
    # a changed input is redone, the rest are not
    write_image(src / "img00.png", coffee[100:196, :128])
    third = run_batch(cfg, _restorers("bicubic-x2"))
    assert (third.done, third.up_to_date) == (1, 5)
    # another model is another job
    other = run_batch(cfg, _restorers("bicubic-x4"))
    assert other.done == 6
    rows = JobDatabase(tmp_path / "out" / DB_NAME).rows()
    assert {r["status"] for r in rows} == {"done"} and all(len(r["sha256"]) == 64 for r in rows)


def test_broken_files_are_reported_and_skipped(tmp_path, coffee):
    src = _folder(tmp_path, coffee, n=3)
    data = (src / "img00.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.txt").write_text("not an image")
    (src / "fake.mp4").write_bytes(b"\x00" * 1000)
    summary = run_batch(BatchConfig(src, tmp_path / "out", ("jpeg-identity",)), _restorers("jpeg-identity"))
    assert (summary.done, summary.failed, summary.skipped) == (2, 3, 1) and not summary.ok
    errors = {r.rel: r.error for r in summary.results if r.status == "failed"}
    assert "truncated.png: cannot decode PNG" in errors["truncated.png"]
    assert "file is empty" in errors["empty.jpg"] and "fake.mp4" in errors["fake.mp4"]
    with open(tmp_path / "out" / "report.csv") as fh:
        report = {row["file"]: row for row in csv.DictReader(fh)}
    assert report["notes.txt"]["status"] == "skipped" and report["img00.png"]["status"] == "done"
    assert not list((tmp_path / "out").rglob("*partial*"))
    # failures stay failed until asked to retry
    assert run_batch(BatchConfig(src, tmp_path / "out", ("jpeg-identity",)), _restorers("jpeg-identity")).failed == 3
    (src / "empty.jpg").unlink()
    retried = run_batch(BatchConfig(src, tmp_path / "out", ("jpeg-identity",), retry_failed=True),
                        _restorers("jpeg-identity"))
    assert retried.failed == 2


def test_checks_before_any_work(tmp_path, coffee):
    src = _folder(tmp_path, coffee, n=2)
    with pytest.raises(OutputError, match="must not be inside the input folder"):
        run_batch(BatchConfig(src, src / "out", ("jpeg-identity",)), _restorers("jpeg-identity"))
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        run_batch(BatchConfig(src, blocker / "out", ("jpeg-identity",)), _restorers("jpeg-identity"))
    with pytest.raises(InputError, match="no such folder"):
        run_batch(BatchConfig(tmp_path / "nope", tmp_path / "o", ("jpeg-identity",)), _restorers("jpeg-identity"))
    with pytest.raises(InputError, match="either a reference folder or a simulated degradation"):
        BatchConfig(src, tmp_path / "o", ("x",), reference_dir=src, simulate=parse_degradation("jpeg:10"))
    assert not (src / "out").exists()


def test_metrics_reports_and_filters(tmp_path, coffee):
    src = _folder(tmp_path, coffee, n=4)
    cfg = BatchConfig(src, tmp_path / "out", ("jpeg-identity",), recursive=True, include=("*.png",),
                      exclude=("nested/img03.png",), simulate=parse_degradation("jpeg:20"), format="jpg")
    summary = run_batch(cfg, _restorers("jpeg-identity"))
    assert summary.done == 3
    assert (tmp_path / "out" / "img00.jpg").is_file() and not (tmp_path / "out" / "nested" / "img03.jpg").exists()
    with open(tmp_path / "out" / "report.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(20 < float(r["psnr"]) < 40 for r in rows)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Worst files by PSNR" in html and html.count("data:image/jpeg;base64") >= 6
    # against a reference folder
    ref = tmp_path / "ref"
    ref.mkdir()
    write_image(ref / "img00.png", read_image(src / "img00.png"))
    cfg = BatchConfig(src, tmp_path / "out2", ("jpeg-identity",), reference_dir=ref)
    summary = run_batch(cfg, _restorers("jpeg-identity"))
    scored = [r for r in summary.results if r.metrics]
    assert len(scored) == 1 and scored[0].metrics["psnr"] == float("inf")
    assert summary.failed == 1  # img02 has no reference


def test_videos_in_the_folder(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_clip(src / "clip.mp4", seconds=1, size="64x48", rate="8", audio=True)
    summary = run_batch(BatchConfig(src, tmp_path / "out", ("bicubic-x2",)), _restorers("bicubic-x2"))
    assert summary.done == 1
    info = probe_video(tmp_path / "out" / "clip.mp4")
    assert (info.width, info.frame_count) == (128, 8) and info.has_audio


def _cli(args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("RESTORE_NO_REEXEC",)}
    return subprocess.Popen([sys.executable, "-m", "restore_app", "batch", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_sigkill_then_resume_is_byte_identical(tmp_path, coffee):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(40):
        write_image(src / f"f{i:02d}.png", np.ascontiguousarray(np.roll(coffee, 11 * i, axis=0)[:160, :200]))
    args = ["--model", "bicubic-x4", "--tile", "64", "--workers", "2"]
    reference = _cli([src, tmp_path / "straight", *args])
    assert reference.wait(600) == 0, reference.stderr.read()
    killed = _cli([src, tmp_path / "killed", *args])
    deadline = time.time() + 300
    while time.time() < deadline and len(list((tmp_path / "killed").glob("f*.png"))) < 8:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done_before = len(list((tmp_path / "killed").glob("f*.png")))
    assert 8 <= done_before < 40, "the kill came too late to test anything"
    # whatever is under a final name is complete (it decodes); only hidden partial files may remain
    for p in (tmp_path / "killed").glob("f*.png"):
        read_image(p)
    resumed = _cli([src, tmp_path / "killed", *args])
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert f"{done_before} already done" in out or "already done" in out
    assert _outputs(tmp_path / "killed") == _outputs(tmp_path / "straight")
    assert not [p for p in (tmp_path / "killed").rglob("*") if ".partial" in p.name]


def test_output_paths(tmp_path):
    cfg = BatchConfig(tmp_path / "in", tmp_path / "out", ("x",))
    from pathlib import Path

    assert output_path(cfg, Path("a/b.jpg"), labels=False) == tmp_path / "out" / "a" / "b.png"
    assert output_path(cfg, Path("c.NEF"), labels=False) == tmp_path / "out" / "c.tif"
    assert output_path(cfg, Path("v.avi"), labels=False) == tmp_path / "out" / "v.mp4"
    assert output_path(cfg, Path("v.mkv"), labels=False) == tmp_path / "out" / "v.mkv"
    assert output_path(cfg, Path("s.jpg"), labels=True) == tmp_path / "out" / "s.png"
