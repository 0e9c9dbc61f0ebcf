"""The desktop application, driven offscreen with pytest-qt on real files and real models."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent, QGuiApplication

from restore_app.core.degrade import jpeg_compress
from restore_app.core.io import probe_video, read_image, to_float, write_image
from restore_app.core.metrics import compare
from restore_app.core.simulate import Degradation
from tests.helpers import make_clip

pytestmark = pytest.mark.gui


def _run_and_wait(qtbot, window, timeout=60000):
    with qtbot.waitSignal(window.runner.done, timeout=timeout):
        window.models.run.click()


def test_open_run_and_see_the_result(qtbot, window, tmp_path, coffee):
    path = write_image(tmp_path / "photo.jpg", coffee, quality=25)
    assert window.open_path(path)
    assert "photo.jpg" in window.windowTitle()
    canvas = window.compare.split_canvas
    assert canvas.before is not None and canvas.after is None
    _run_and_wait(qtbot, window)
    assert window.vm.result is not None and window.vm.result.shape == coffee.shape
    assert canvas.after is not None and canvas.split  # before | after with a divider
    assert window.models.progress.value() == 1000 and window.models.eta.text() == "done"
    assert not window.banner.isVisible()
    # the recent-files menu now offers it
    assert any(a.text().endswith("photo.jpg") for a in window.recent_menu.actions())


def test_errors_show_in_the_window(qtbot, window, tmp_path, coffee):
    bad = tmp_path / "broken.png"
    data = write_image(tmp_path / "ok.png", coffee).read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    assert not window.open_path(bad)
    assert window.banner.isVisible() and "broken.png" in window.banner.text()
    window.models.run.click()  # nothing is open: a clear message, no crash
    assert "open an image" in window.banner.text()


def _long_job(window, tmp_path, coffee, reps=(3, 2)):
    big = np.tile(to_float(coffee), (*reps, 1))  # 1200×1200 by default
    window.open_path(write_image(tmp_path / "big.png", big))
    window.set_chain(["bicubic-x4"])
    window.apply_settings(window.vm.settings.__class__(**{**window.vm.settings.__dict__, "tile": 64}))


def test_cancel_takes_effect_within_a_tile(qtbot, window, tmp_path, coffee):
    _long_job(window, tmp_path, coffee)
    seen = []
    window.runner.progress.connect(lambda d, t: seen.append(d))
    with qtbot.waitSignal(window.runner.cancelled, timeout=60000):
        window.models.run.click()
        qtbot.waitUntil(lambda: len(seen) >= 3, timeout=30000)
        assert window.models.cancel.isEnabled() and not window.models.run.isEnabled()
        at_cancel = len(seen)
        window.models.cancel.click()
    qtbot.waitUntil(lambda: not window.runner.running, timeout=10000)
    assert len(seen) <= at_cancel + 1  # at most the tile in flight finished
    assert window.vm.result is None and window.models.run.isEnabled()


def test_ui_stays_responsive_while_a_model_runs(qtbot, window, tmp_path, coffee):
    _long_job(window, tmp_path, coffee, reps=(2, 1))
    gaps, last = [], [time.perf_counter()]

    def tick():
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    timer.start()
    _run_and_wait(qtbot, window)
    timer.stop()
    assert len(gaps) > 20
    latency = max(gaps[1:])
    print(f"event-loop latency during the job: max {latency * 1000:.0f} ms, "
          f"median {np.median(gaps) * 1000:.0f} ms over {len(gaps)} ticks")
    assert latency < 0.25  # the UI thread never runs the model


def test_simulate_mode_metrics_match_the_core(qtbot, window, tmp_path, coffee):
    window.open_path(write_image(tmp_path / "clean.png", coffee))
    window.simulate.kind.setCurrentIndex(window.simulate.kind.findData("jpeg"))
    window.simulate.value.setValue(15)
    window.simulate.setChecked(True)
    assert window.vm.degradation == Degradation("jpeg", quality=15)
    window.set_chain(["jpeg-identity"])
    _run_and_wait(qtbot, window)
    expected = compare(to_float(coffee), jpeg_compress(to_float(coffee), 15))
    table = window.metrics
    assert table.value(0, 0).startswith("degraded")
    assert table.value(0, 1) == f"{expected.psnr:.2f}"
    assert table.value(0, 2) == f"{expected.ssim:.4f}"
    assert table.value(0, 3) == f"{expected.ms_ssim:.4f}"
    assert table.value(1, 0).startswith("restored")
    assert "RGB, crop 0 px" in table.convention.text()
    table.use_y.setChecked(True)  # metrics are recomputed off the UI thread
    qtbot.waitUntil(lambda: "Y (BT.601)" in table.convention.text(), timeout=10000)
    y = compare(to_float(coffee).astype(np.float64), jpeg_compress(to_float(coffee), 15).astype(np.float64), y=True)
    assert table.value(0, 1) == f"{y.psnr:.2f}"
    # a region dragged on the image is measured on its own
    window.compare.regionSelected.emit(100, 100, 120, 80)
    assert window.vm.region == (100, 100, 120, 80)
    qtbot.waitUntil(lambda: "region 120×80" in table.convention.text(), timeout=10000)
    window.compare.heat.setChecked(True)
    assert window.compare.split_canvas.after is not None
    # degraded, restored and original side by side, in step
    window.compare.mode.setCurrentIndex(1)
    assert window.compare.third.isVisible() and window.compare.third.after is not None
    window.compare.mode.setCurrentIndex(4)
    assert window.compare.split_canvas.caption == ("", "reference")


def test_export_copy_and_comparison(qtbot, window, tmp_path, coffee):
    window.open_path(write_image(tmp_path / "in.png", coffee[:120, :160]))
    window.set_chain(["bicubic-x2"])
    _run_and_wait(qtbot, window)
    png = read_image(window.export_result(tmp_path / "out.png"))
    tif = read_image(window.export_result(tmp_path / "out.tif"))
    jpg = read_image(window.export_result(tmp_path / "out.jpg", quality=80))
    assert png.shape == (240, 320, 3) and png.dtype == np.uint8
    assert tif.dtype == np.uint16 and jpg.shape == png.shape
    window.copy_result()
    assert QGuiApplication.clipboard().image().width() == 320
    strip = read_image(window.save_comparison(tmp_path / "cmp.png"))
    assert strip.shape[0] == 480 + 28


def test_video_step_play_and_process(qtbot, window, tmp_path):
    clip = make_clip(tmp_path / "clip.mp4", seconds=2, size="96x64", rate="10", audio=True)
    assert window.open_path(clip)
    assert window.video_bar.isVisible() and window.video_bar.label.text() == "1 / 20"
    first = window.vm.before().copy()
    window.video_bar.slider.setValue(7)
    assert window.vm.document.frame == 7 and window.video_bar.label.text() == "8 / 20"
    assert not np.array_equal(first, window.vm.before())
    window.video_bar.play.setChecked(True)
    qtbot.waitUntil(lambda: window.vm.document.frame >= 10, timeout=10000)
    window.video_bar.play.setChecked(False)
    window.set_chain(["bicubic-x2"])
    _run_and_wait(qtbot, window)  # the current frame, before and after
    assert window.vm.result.shape == (128, 192, 3)
    out = tmp_path / "clip_x2.mp4"
    with qtbot.waitSignal(window.runner.done, timeout=120000):
        window.process_video(out)
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count) == (192, 128, 20) and info.has_audio


def test_drop_a_file_and_open_the_model_card(qtbot, window, tmp_path, coffee):
    path = write_image(tmp_path / "dropped.png", coffee)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    window.dropEvent(event)
    assert window.vm.document is not None and window.vm.document.path == path
    window.models.card.click()
    assert window.card_dialog.isVisible()
    assert window.card_dialog.view.toPlainText().strip() != ""


def test_settings_persist(qtbot, window, tmp_path):
    s = window.vm.settings.__class__(**{**window.vm.settings.__dict__})
    s.device, s.tile, s.theme, s.ensemble, s.jpeg_constraint = "cpu", 256, "dark", "full", False
    window.apply_settings(s)
    assert "Device: cpu" in window.device_label.text() and "tile 256" in window.device_label.text()
    assert window.store.load().tile == 256 and window.store.load().theme == "dark"
    assert window.store.load().ensemble == "full" and window.vm.engine_config().ensemble == "full"
    assert not window.store.load().jpeg_constraint and not window.vm.engine_config().jpeg_constraint


def test_settings_dialog_round_trip(qtbot, window):
    from restore_app.gui.dialogs import SettingsDialog

    dialog = SettingsDialog(window.vm.settings, window)
    qtbot.addWidget(dialog)
    assert dialog.ensemble.currentData() == window.vm.settings.ensemble == "on"
    assert [dialog.ensemble.itemData(i) for i in range(dialog.ensemble.count())] == ["off", "on", "full"]
    dialog.ensemble.setCurrentIndex(dialog.ensemble.findData("off"))
    dialog.tile.setValue(256)
    assert dialog.jpeg_constraint.isChecked()
    dialog.jpeg_constraint.setChecked(False)
    out = dialog.result_settings()
    assert out.ensemble == "off" and out.tile == 256 and out.jpeg_constraint is False
    assert window.vm.settings.ensemble == "on"  # the dialog edits a copy until accepted


def test_zoom_pan_and_sync(qtbot, window, tmp_path, coffee):
    window.open_path(write_image(tmp_path / "a.png", coffee))
    window.set_chain(["bicubic-x2"])
    _run_and_wait(qtbot, window)
    window.compare.mode.setCurrentIndex(1)  # side by side
    left, right = window.compare.left, window.compare.right
    assert left.scene_size() == right.scene_size() == (1200, 800)  # the input lines up with the ×2 result
    right.actual_size()
    assert left.view.zoom == right.view.zoom == 1.0
    before = QPointF(right.view.center)
    qtbot.mousePress(right, Qt.MouseButton.LeftButton, pos=QPoint(200, 200))
    qtbot.mouseMove(right, QPoint(150, 180))
    qtbot.mouseRelease(right, Qt.MouseButton.LeftButton, pos=QPoint(150, 180))
    assert right.view.center != before and left.view.center == right.view.center
    qtbot.keyClick(right, Qt.Key.Key_F)
    assert right.view.zoom < 1.0


def test_screenshot_of_a_comparison(qtbot, window, tmp_path, coffee, output_dir):
    window.open_path(write_image(tmp_path / "clean.png", coffee))
    window.simulate.kind.setCurrentIndex(window.simulate.kind.findData("downscale"))
    window.simulate.setChecked(True)
    _run_and_wait(qtbot, window)
    window.compare.split_canvas.divider = 0.5
    shot = window.grab()
    assert shot.width() > 800
    path = output_dir / "main_window_comparison.png"
    assert shot.save(str(path)) and path.stat().st_size > 10000
    assert shot.save(str(tmp_path / "main_window.png"))


def test_process_a_folder_with_the_batch_core(qtbot, window, tmp_path, coffee):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        write_image(src / f"{i}.png", coffee[:64, 40 * i:40 * i + 80])
    (src / "bad.png").write_bytes(b"\x89PNG broken")
    window.open_path(src / "0.png")
    window.set_chain(["bicubic-x2"])
    with qtbot.waitSignal(window.runner.done, timeout=60000):
        window.process_folder(src, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["0.png", "1.png", "2.png"]
    assert "3 restored" in window.statusBar().currentMessage()
    assert window.banner.isVisible() and "bad.png" in window.banner.text()


def test_segmentation_shows_overlay_count_and_table(qtbot, window, tmp_path):
    yy, xx = np.mgrid[0:120, 0:160]
    rgb = np.full((120, 160, 3), 0.9, np.float32)
    for cy, cx in ((30, 30), (30, 80), (80, 50), (85, 120)):
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 150] = (0.35, 0.2, 0.55)
    window.open_path(write_image(tmp_path / "cells.png", rgb))
    window.set_chain(["he-watershed"])
    _run_and_wait(qtbot, window)
    assert window.vm.labels is not None and window.vm.labels.max() == 4
    assert window.segments.isVisible() and window.segments.count.text() == "4 instances"
    assert window.segments.table.rowCount() == 4
    assert window.vm.result.shape == (120, 160, 3)  # the overlay is what is shown
    out = window.export_result(tmp_path / "labels.png")
    assert read_image(out).dtype == np.uint16 and (tmp_path / "labels.csv").is_file()
    assert (tmp_path / "labels.overlay.png").is_file()
