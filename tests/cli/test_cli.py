"""The `restore` command line, run as a real subprocess through the launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from restore_app.core.degrade import downsample
from restore_app.core.io import probe_video, read_image, to_float, write_image
from restore_app.launcher import GLIBC_TUNABLES, _needs_reexec
from tests.helpers import make_clip


def restore(*args, cwd=None, check=True):
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RESTORE_NO_REEXEC")}
    result = subprocess.run([sys.executable, "-m", "restore_app", *map(str, args)], capture_output=True,
                            text=True, cwd=cwd, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"restore {' '.join(map(str, args))} failed:\n{result.stderr}")
    return result


def test_version_and_help():
    assert restore("--version").stdout.startswith("restore ")
    assert "compare" in restore("--help").stdout


def test_models_json_lists_every_task():
    data = json.loads(restore("models", "--json").stdout)
    tasks = {m["task"] for m in data["models"]}
    assert tasks == {"demosaic", "jpeg", "vsr", "segment"}
    assert data["issues"] == []
    text = restore("models").stdout
    assert "bicubic-x4" in text and "(* = the task's default model" in text
    from restore_app.core import int8

    # the grey JPEG model's int8 form is marked where it stands in for it: on this CPU if it has fast int8
    line = next(row for row in text.splitlines() if row.startswith("restore-jpeg-grey-int8 "))
    assert (line.split()[3].endswith("+") and "+ = the int8 form" in text) == int8.fast_on_this_cpu()
    # the demosaicer's int8 form defers to it where it runs in bf16 (a CPU with AMX)
    from restore_app.core.engine import cpu_has_fast_bf16

    line = next(row for row in text.splitlines() if row.startswith("restore-dm-int8 "))
    assert line.split()[3].endswith("+") == (int8.fast_on_this_cpu() and not cpu_has_fast_bf16())


def test_run_and_compare(tmp_path, coffee):
    lr = write_image(tmp_path / "lr.png", np.clip(downsample(to_float(coffee), 4), 0, 1))
    ref = write_image(tmp_path / "ref.png", coffee)
    out = tmp_path / "sr.png"
    result = restore("run", lr, "-o", out, "--model", "bicubic-x4", "--tile", "64")
    assert "wrote" in result.stdout
    assert read_image(out).shape == coffee.shape
    scores = json.loads(restore("compare", ref, out, "--json").stdout)
    assert set(scores) == {"psnr", "ssim", "ms_ssim", "y", "crop"}
    assert 22 < scores["psnr"] < 35 and 0 < scores["ssim"] < 1
    text = restore("compare", ref, out, "--y", "--crop", "4").stdout
    assert text.startswith("PSNR ") and "Y (BT.601), crop 4 px" in text
    same = json.loads(restore("compare", ref, ref, "--json").stdout)
    assert same["psnr"] is None and same["ssim"] == pytest.approx(1.0)  # inf is not JSON: null


@pytest.mark.parametrize(("model", "size"), [("bicubic-x2", (192, 128)), ("restore-jpeg", (96, 64)),
                                           ("restore-jpeg-int8", (96, 64))])
def test_run_video(tmp_path, model, size):
    clip = make_clip(tmp_path / "in.mp4", seconds=1, rate="8", audio=True)
    restore("run", clip, "-o", tmp_path / "out.mp4", "--model", model, "--crf", "20")
    info = probe_video(tmp_path / "out.mp4")
    assert (info.width, info.height, info.frame_count) == (*size, 8) and info.has_audio
    assert float(info.fps) == pytest.approx(8.0)


def test_eval_writes_json(tmp_path, coffee):
    data = tmp_path / "data"
    data.mkdir()
    write_image(data / "a.png", coffee[:200, :200])
    result = restore("eval", "--task", "jpeg", "--model", "jpeg-identity", "--data", data, "--quality", "20",
                     "--json", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["task"] == "jpeg" and report["model"] == "jpeg-identity"
    assert report["protocol"] == {"quality": 20}
    assert set(report["mean"]) == {"psnr", "ssim", "ms_ssim"} and len(report["items"]) == 1
    assert "mean" in result.stdout and "seconds per megapixel" in result.stdout


def test_segment_bench_writes_json(tmp_path):
    """``restore bench segment --json`` writes the rows it prints (the data given as NAME=DIR too)."""
    yy, xx = np.mgrid[0:96, 0:128]
    labels = np.zeros((96, 128), np.uint16)
    image = np.full((96, 128, 3), 230, np.uint8)
    for i, (cy, cx) in enumerate(((30, 30), (30, 56), (70, 90)), start=1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 150
        labels[disc] = i
        image[disc] = (90, 50, 140)  # haematoxylin-like nuclei on a pale background
    for sub, array in (("images", image), ("labels", labels)):
        (tmp_path / "tiles" / sub).mkdir(parents=True)
        write_image(tmp_path / "tiles" / sub / "t.png", array)
    result = restore("bench", "segment", "--models", "he-watershed", "--data", f"tiles={tmp_path / 'tiles'}",
                     "--json", tmp_path / "seg.json")
    rows = json.loads((tmp_path / "seg.json").read_text())
    assert [r["method"] for r in rows] == ["he-watershed"] and "he-watershed" in result.stdout
    assert set(rows[0]["cells"]) == {"leave-one-out", "t.png"}
    assert 0 <= rows[0]["cells"]["t.png"]["ap50"] <= 1 and rows[0]["seconds_per_mp"] > 0


def test_demo_writes_outputs(tmp_path):
    restore("demo", "--out", tmp_path / "demo")
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert [r["task"] for r in summary] == ["demosaic", "jpeg", "vsr"]
    for r in summary:
        for f in r["files"]:
            assert Path(f).is_file()
        assert r["psnr"] > 20


@pytest.mark.parametrize("args,message", [
    (["run", "missing.png", "-o", "out.png", "--model", "jpeg-identity"], "missing.png: no such file"),
    (["run", "notes.txt", "-o", "out.png", "--model", "jpeg-identity"], "unsupported file type '.txt'"),
    (["run", "in.png", "-o", "out.png", "--model", "nope"], "unknown model 'nope'; known models:"),
    (["run", "in.png", "-o", "in.png", "--model", "jpeg-identity"], "refusing to overwrite the input"),
    (["run", "in.png", "-o", "out.png", "--model", "jpeg-identity", "--precision", "fp16", "--device", "cpu"],
     "fp16 is not supported on the CPU"),
    (["run", "corrupt.jpg", "-o", "out.png", "--model", "jpeg-identity"], "corrupt.jpg: cannot decode JPEG"),
    (["compare", "in.png", "small.png"], "differs from the reference"),
])
def test_user_errors_are_one_line(tmp_path, coffee, args, message):
    write_image(tmp_path / "in.png", coffee)
    write_image(tmp_path / "small.png", coffee[:10, :10])
    (tmp_path / "notes.txt").write_text("hello")
    data = write_image(tmp_path / "ok.jpg", coffee).read_bytes()
    (tmp_path / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    before = (tmp_path / "in.png").read_bytes()
    result = restore(*args, cwd=tmp_path, check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("restore: error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert (tmp_path / "in.png").read_bytes() == before
    assert not (tmp_path / "out.png").exists()


def test_ensemble_modes_from_the_command_line(tmp_path, coffee):
    """``--ensemble off|on|full`` and ``--no-ensemble`` reach the engine: the JPEG model's three
    modes give three different results, ``--no-ensemble`` the same as ``off``, and each mode
    restores better than the one before on this image."""
    from restore_app.core.degrade import jpeg_compress
    from restore_app.core.metrics import psnr

    clean = coffee[:120, :150]
    write_image(tmp_path / "in.png", jpeg_compress(clean, 15))
    outs = {}
    for name, flags in {"off": ["--ensemble", "off"], "on": [], "full": ["--ensemble", "full"],
                        "no": ["--no-ensemble"]}.items():
        restore("run", "in.png", "-o", f"{name}.png", "--model", "restore-jpeg", *flags, cwd=tmp_path)
        outs[name] = read_image(tmp_path / f"{name}.png")
    assert np.array_equal(outs["no"], outs["off"])
    scores = [psnr(clean, outs[m], 255.0) for m in ("off", "on", "full")]
    assert scores[0] < scores[1] < scores[2], scores
    bad = restore("run", "in.png", "-o", "x.png", "--model", "restore-jpeg", "--ensemble", "best",
                  cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_jpeg_constraint_from_the_command_line(tmp_path, coffee):
    """``--no-jpeg-constraint`` reaches the engine: the JPEG model's output without the constraint
    differs from its default, which is the closer to the original."""
    from restore_app.core.degrade import jpeg_compress
    from restore_app.core.metrics import psnr

    clean = coffee[:96, :128]
    write_image(tmp_path / "in.png", jpeg_compress(clean, 20))
    for name, flags in {"on": [], "off": ["--no-jpeg-constraint"]}.items():
        restore("run", "in.png", "-o", f"{name}.png", "--model", "restore-jpeg", "--no-ensemble", *flags,
                cwd=tmp_path)
    on, off = read_image(tmp_path / "on.png"), read_image(tmp_path / "off.png")
    assert psnr(clean, on, 255.0) > psnr(clean, off, 255.0)


def test_model_required_except_for_raw(tmp_path, coffee):
    write_image(tmp_path / "in.png", coffee)
    result = restore("run", "in.png", "-o", "out.png", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "--model is required" in result.stderr
    # a RAW file goes to the default demosaicer: its int8 form where int8 is fast and bf16 is not, as in the GUI
    from restore_app.core import int8
    from restore_app.core.degrade import mosaic
    from restore_app.core.engine import cpu_has_fast_bf16
    from tests.helpers import smooth_rgb, write_dng

    counts = np.rint(256 + mosaic(smooth_rgb(64, 96), "RGGB") * 3800).astype(np.uint16)
    write_dng(tmp_path / "a.dng", counts, "RGGB")
    result = restore("run", "a.dng", "-o", "a.tif", cwd=tmp_path)
    expected = "restore-dm-int8" if int8.fast_on_this_cpu() and not cpu_has_fast_bf16() else "restore-dm"
    assert "wrote a.tif" in result.stdout and f"({expected} on cpu" in result.stdout
    assert read_image(tmp_path / "a.tif").shape == (64, 96, 3)


def test_launcher_sets_malloc_tunables(monkeypatch):
    monkeypatch.delenv("RESTORE_NO_REEXEC", raising=False)
    monkeypatch.setenv("GLIBC_TUNABLES", GLIBC_TUNABLES)
    assert not _needs_reexec()
    monkeypatch.delenv("GLIBC_TUNABLES")
    if sys.platform.startswith("linux"):
        assert _needs_reexec()
        # started without the tunables, the launcher re-executes itself with them before the CLI runs
        info = json.loads(restore("info", "--json").stdout)
        assert info["malloc_tunables"] is True
        assert info["threads"] >= 1 and info["device"] in ("cpu", "cuda", "mps")
        assert isinstance(info["cpu_int8"], bool)
        if os.environ.get("OPENBLAS_NUM_THREADS", "1") == "1":  # the user's own setting is kept
            assert info["blas_threads"] == 1  # OpenBLAS's spinning workers would take PyTorch's cores
