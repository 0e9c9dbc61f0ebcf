"""The window's state logic, tested without Qt."""

from __future__ import annotations

import numpy as np
import pytest

from restore_app.core import int8
from restore_app.core.degrade import jpeg_compress, mosaic
from restore_app.core.engine import cpu_has_fast_bf16
from restore_app.core.errors import InputError
from restore_app.core.io import VideoWriter, to_float, write_image
from restore_app.core.jobs import CancelToken
from restore_app.core.metrics import compare
from restore_app.core.registry import default_registry
from restore_app.core.simulate import Degradation
from restore_app.gui.settings import Settings, SettingsStore
from restore_app.gui.viewmodels import EtaEstimator, MainViewModel, load_document
from tests.helpers import smooth_rgb, write_dng


@pytest.fixture
def vm():
    return MainViewModel(default_registry(), Settings(tile=256))


def _run(vm):
    vm.set_result(vm.make_job()(lambda d, t: None, CancelToken()))
    return vm.result


def test_open_image_picks_an_applicable_default_chain(vm, tmp_path, coffee):
    path = write_image(tmp_path / "photo.jpg", coffee, quality=30)
    doc = vm.open(path)
    assert doc.title == "photo.jpg — 600×400"
    assert vm.input_kind() == "rgb"
    # the colour JPEG default; its int8 form on a CPU with fast int8 (this build machine)
    assert vm.chain == [default_registry().default("jpeg", int8=int8.fast_on_this_cpu()).id]
    assert all(m.input in ("rgb", "clip") for m in vm.first_models())  # a still image is a clip of one frame
    assert "restore-vsr-x4" in {m.id for m in vm.first_models()}
    assert vm.settings.recent[0].endswith("photo.jpg")
    out = _run(vm)
    assert out.shape == coffee.shape and vm.metrics() is None  # no reference: no metrics


def test_grey_image_gets_the_grey_default(vm, tmp_path, coffee):
    grey = np.ascontiguousarray(coffee[..., 1])
    vm.open(write_image(tmp_path / "scan.jpg", grey, quality=20))
    # the grey specialist, one channel; in its int8 form on a CPU with fast int8 (this build machine)
    assert vm.chain == ["restore-jpeg-grey-int8" if int8.fast_on_this_cpu() else "restore-jpeg-grey"]
    out = _run(vm)
    assert out.shape == grey.shape
    vm.open(write_image(tmp_path / "photo.jpg", coffee, quality=20))
    assert vm.chain == ["restore-jpeg-int8" if int8.fast_on_this_cpu() else "restore-jpeg"]
    fp32 = MainViewModel(default_registry(), Settings(tile=256, precision="fp32"))  # asked for: float
    fp32.open(write_image(tmp_path / "scan.jpg", grey, quality=20))
    assert fp32.chain == ["restore-jpeg-grey"]


def test_raw_files_need_a_demosaicer_first(vm, tmp_path):
    counts = np.rint(256 + mosaic(smooth_rgb(64, 96), "GBRG") * 3800).astype(np.uint16)
    vm.open(write_dng(tmp_path / "a.dng", counts, "GBRG"))
    assert vm.input_kind() == "cfa"
    # the default demosaicer; its int8 form on a CPU with fast int8 but without AMX's fast bf16
    fast = int8.fast_on_this_cpu() and not cpu_has_fast_bf16()
    assert vm.chain[:1] == ["restore-dm-int8" if fast else "restore-dm"]
    with pytest.raises(InputError, match="cannot take this input"):
        vm.set_chain(["jpeg-identity"])
    vm.set_chain([vm.chain[0], "bicubic-x2"])  # demosaic then upscale is a valid chain
    assert _run(vm).shape == (128, 192, 3)
    with pytest.raises(InputError, match="not useful"):
        vm.set_chain(["bilinear-demosaic", "jpeg-identity"])


def test_simulate_mode_metrics_match_the_core(vm, tmp_path, coffee):
    vm.open(write_image(tmp_path / "clean.png", coffee))
    vm.set_simulation(Degradation("jpeg", quality=15))
    vm.set_chain(["jpeg-identity"])
    _run(vm)
    report = vm.metrics()
    labels = [r.label for r in report.rows]
    assert labels == ["degraded (JPEG as decoded)", "restored (jpeg-identity)"]
    expected = compare(to_float(coffee), jpeg_compress(to_float(coffee), 15))
    assert report.rows[0].scores.psnr == pytest.approx(expected.psnr, abs=1e-6)
    assert report.rows[1].scores.psnr == pytest.approx(expected.psnr, abs=0.05)  # identity, re-rounded
    assert report.convention == "RGB, crop 0 px"
    vm.use_y, vm.crop = True, 4
    assert vm.metrics().convention == "Y (BT.601), crop 4 px"


def test_simulate_downscale_and_mosaic(vm, tmp_path, coffee):
    vm.open(write_image(tmp_path / "clean.png", coffee))
    vm.set_simulation(Degradation("downscale", factor=4))
    assert vm.chain == [default_registry().default("vsr").id] and vm.input_kind() == "rgb"
    vm.set_chain(["bicubic-x4"])
    _run(vm)
    rows = vm.metrics().rows
    assert rows[0].label == "degraded (bicubic upscale)"
    assert rows[1].scores.psnr == pytest.approx(rows[0].scores.psnr, abs=0.01)  # bicubic either way
    vm.set_chain(["restore-vsr-x4"])  # the trained default does better than bicubic on a still image
    _run(vm)
    rows = vm.metrics().rows
    assert rows[1].scores.psnr > rows[0].scores.psnr + 0.3
    vm.set_simulation(Degradation("downscale", factor=2))
    assert vm.chain == ["bicubic-x2"]  # the default upscales ×4: the ×2 model undoes a ×2 downscale
    vm.set_simulation(Degradation("mosaic", sigma=5))
    assert vm.input_kind() == "cfa" and default_registry().get(vm.chain[0]).task == "demosaic"
    _run(vm)
    assert [r.label.split(" (")[0] for r in vm.metrics().rows] == ["degraded", "restored"]


def test_reference_region_and_error_map(vm, tmp_path, coffee):
    clean = to_float(coffee)
    noisy = jpeg_compress(clean, 20)
    vm.open(write_image(tmp_path / "in.png", noisy))
    vm.set_reference(write_image(tmp_path / "ref.png", coffee))
    vm.set_chain(["jpeg-identity"])
    _run(vm)
    rows = vm.metrics().rows
    assert [r.label for r in rows] == ["before", "restored (jpeg-identity)"]
    vm.set_region((100, 50, 64, 48))
    report = vm.metrics()
    expected = compare(clean[50:98, 100:164].astype(np.float64), noisy[50:98, 100:164].astype(np.float64))
    assert report.rows[0].scores.psnr == pytest.approx(expected.psnr)
    assert report.region == (100, 50, 64, 48) and report.convention.endswith("region")
    with pytest.raises(InputError, match="at least 11×11"):
        vm.set_region((0, 0, 5, 5))
    emap = vm.error_image()
    assert emap.shape == coffee.shape[:2]


def test_video_frames(vm, tmp_path):
    frames = [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(6)]
    with VideoWriter(tmp_path / "v.mp4", 64, 48, 10, quality=0) as w:
        for f in frames:
            w.write(f)
    doc = vm.open(tmp_path / "v.mp4")
    assert doc.video.frame_count == 6 and doc.frame == 0
    vm.seek(4)
    assert vm.document.frame == 4 and abs(vm.document.image.mean() * 255 - 80) < 2
    with pytest.raises(InputError, match="frame by frame"):
        vm.set_chain(["he-watershed"])


def test_load_errors(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(InputError, match="unsupported file type"):
        load_document(tmp_path / "x.txt")


def test_eta():
    now = [0.0]
    eta = EtaEstimator(clock=lambda: now[0])
    eta.begin()
    assert eta.text() == "estimating…"
    now[0] = 10.0
    eta.update(25, 100)
    assert eta.remaining() == pytest.approx(30.0) and eta.text() == "30 s left"
    now[0] = 100.0
    eta.update(50, 100)
    assert eta.text() == "1 min 40 s left"


def test_settings_roundtrip(tmp_path):
    store = SettingsStore(tmp_path / "s.json")
    s = store.load()
    assert s == Settings()
    s.device, s.tile, s.theme = "cpu", 256, "dark"
    for i in range(12):
        s.add_recent(tmp_path / f"f{i}.png")
    s.add_recent(tmp_path / "f3.png")
    store.save(s)
    back = store.load()
    assert back.tile == 256 and back.theme == "dark" and len(back.recent) == 10
    assert back.recent[0].endswith("f3.png") and back.recent.count(back.recent[0]) == 1
    (tmp_path / "s.json").write_text("{broken")
    assert store.load() == Settings()
    (tmp_path / "s.json").write_text('{"tile": -5}')
    assert store.load() == Settings()  # invalid values fall back to the defaults
    (tmp_path / "s.json").write_text('{"ensemble": false}')  # written before the three quality modes
    assert store.load().ensemble == "off"
    (tmp_path / "s.json").write_text('{"ensemble": "best"}')
    assert store.load() == Settings()
    (tmp_path / "s.json").write_text('{"jpeg_constraint": "no"}')
    assert store.load() == Settings()
    (tmp_path / "s.json").write_text('{"tile": 256}')  # written before the JPEG constraint setting
    assert store.load().jpeg_constraint is True
