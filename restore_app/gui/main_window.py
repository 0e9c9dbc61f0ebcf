"""The main window: composes the widgets and forwards the user's actions to the view-model.

State and rules live in :class:`~restore_app.gui.viewmodels.MainViewModel`; models run on a
:class:`~restore_app.gui.worker.JobRunner` thread; errors appear in a banner inside the window.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QLabel,
    QMainWindow,
    QScrollArea,
    QVBoxLayout,
    QWidget,
)

from restore_app.core.batch import BatchSummary
from restore_app.core.errors import RestoreError
from restore_app.core.io import MediaKind
from restore_app.core.io.formats import IMAGE_EXTENSIONS, RAW_EXTENSIONS, VIDEO_EXTENSIONS
from restore_app.core.registry import Registry
from restore_app.core.visual import heatmap
from restore_app.gui.actions import ExportActions, FolderActions, VideoActions
from restore_app.gui.dialogs import SettingsDialog
from restore_app.gui.player import VideoPlayer
from restore_app.gui.settings import Settings, SettingsStore
from restore_app.gui.theme import apply_theme
from restore_app.gui.viewmodels import EtaEstimator, MainViewModel, MetricsReport
from restore_app.gui.widgets.compare_view import CompareView
from restore_app.gui.widgets.image_view import Pyramid, pyramid_levels
from restore_app.gui.widgets.panels import CardDialog, MetricsPanel, ModelPanel, SegmentPanel, SimulatePanel, VideoBar
from restore_app.gui.worker import JobRunner


@dataclass
class Prepared:
    """A result with what shows it (an overlay for label maps), its display pyramid, heat-map pyramid
    and metrics, all made on the worker thread."""

    image: np.ndarray
    display: np.ndarray
    levels: list[np.ndarray]
    heat: list[np.ndarray] | None
    metrics: MetricsReport | str | None


def _analyse(vm: MainViewModel, result: np.ndarray | None) -> tuple[list[np.ndarray] | None,
                                                                     MetricsReport | str | None]:
    """Heat-map pyramid and metrics of ``result`` (run off the UI thread)."""
    err = vm.error_image(result)
    heat = pyramid_levels(heatmap(err)) if err is not None else None
    try:
        report = vm.metrics(result)
    except RestoreError as exc:
        report = str(exc)
    return heat, report


OPEN_FILTER = ("Images, RAW and video (" + " ".join(f"*{e}" for e in sorted(
    IMAGE_EXTENSIONS | RAW_EXTENSIONS | VIDEO_EXTENSIONS)) + ");;All files (*)")


class MainWindow(QMainWindow, VideoActions, FolderActions, ExportActions):
    def __init__(self, registry: Registry, store: SettingsStore) -> None:
        super().__init__()
        self.store = store
        self.vm = MainViewModel(registry, store.load())
        self.runner = JobRunner(self)
        self.analysis = JobRunner(self)  # metrics and heat-maps, also off the UI thread
        self._analysis_pending = False
        self.player = VideoPlayer(self)
        self.eta = EtaEstimator()
        self.setWindowTitle("Restore")
        self.setAcceptDrops(True)
        self.resize(1280, 800)

        self.banner = QLabel()
        self.banner.setWordWrap(True)
        self.banner.setStyleSheet("background:#b3261e; color:white; padding:6px;")
        self.banner.hide()
        self.compare = CompareView()
        self.video_bar = VideoBar()
        self.video_bar.hide()
        center = QWidget()
        col = QVBoxLayout(center)
        col.setContentsMargins(4, 4, 4, 4)
        col.addWidget(self.banner)
        col.addWidget(self.compare, 1)
        col.addWidget(self.video_bar)
        self.setCentralWidget(center)

        self.models = ModelPanel()
        self.simulate = SimulatePanel()
        self.metrics = MetricsPanel()
        self.segments = SegmentPanel()
        self.segments.hide()
        side = QWidget()
        side_col = QVBoxLayout(side)
        for w in (self.models, self.simulate, self.metrics, self.segments):
            side_col.addWidget(w)
        side_col.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(360)
        dock = QDockWidget("Tools", self)
        dock.setWidget(scroll)
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
        self.device_label = QLabel()
        self.statusBar().addPermanentWidget(self.device_label)

        self._build_menus()
        self._connect()
        self._apply_settings()
        self.refresh_models()

    # -- construction ----------------------------------------------------------------------------
    def _build_menus(self) -> None:
        def action(menu, text, slot, shortcut=None):
            a = QAction(text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.triggered.connect(slot)
            menu.addAction(a)
            return a

        file = self.menuBar().addMenu("&File")
        action(file, "&Open…", self.open_dialog, QKeySequence.StandardKey.Open)
        self.recent_menu = file.addMenu("Open &recent")
        action(file, "Load &reference…", self.reference_dialog)
        file.addSeparator()
        action(file, "&Export result…", self.export_dialog, QKeySequence.StandardKey.Save)
        action(file, "&Copy result", self.copy_result, QKeySequence.StandardKey.Copy)
        action(file, "Save &comparison…", self.comparison_dialog)
        action(file, "Process &folder…", self.folder_dialog)
        file.addSeparator()
        action(file, "&Settings…", self.settings_dialog)
        action(file, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        view = self.menuBar().addMenu("&View")
        canvas = lambda: self.compare.active_canvas()  # noqa: E731
        action(view, "&Fit", lambda: canvas().fit(), "F")
        action(view, "&100 %", lambda: canvas().actual_size(), "1")
        action(view, "Zoom &in", lambda: canvas().zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        action(view, "Zoom &out", lambda: canvas().zoom_by(0.8), QKeySequence.StandardKey.ZoomOut)
        for i, mode in enumerate(("Split", "Side by side", "Before", "After", "Reference")):
            action(view, mode, lambda _=False, i=i: self.compare.mode.setCurrentIndex(i), f"Ctrl+{i + 1}")
        action(view, "Error &heat-map", lambda: self.compare.heat.toggle(), "H")
        self._fill_recent()

    def _connect(self) -> None:
        self.models.chainChanged.connect(self.set_chain)
        self.models.runRequested.connect(self.run)
        self.models.cancelRequested.connect(self.runner.cancel)
        self.models.cardRequested.connect(self.show_card)
        self.simulate.changed.connect(self.set_simulation)
        self.metrics.conventionChanged.connect(self.refresh_metrics)
        self.metrics.referenceRequested.connect(self.reference_dialog)
        self.metrics.clearRegionRequested.connect(lambda: self.set_region(None))
        self.compare.regionSelected.connect(lambda x, y, w, h: self.set_region((x, y, w, h)))
        self.runner.progress.connect(self._progress)
        self.runner.finished.connect(self._finished)
        self.runner.failed.connect(self.show_error)
        self.runner.cancelled.connect(lambda: self.statusBar().showMessage("Cancelled", 5000))
        self.runner.done.connect(lambda: self.models.set_running(False))
        self.analysis.finished.connect(self._analysed)
        self.analysis.failed.connect(lambda msg: self.metrics.convention.setText(msg))
        self.analysis.done.connect(self._analysis_done)
        self.video_bar.frameRequested.connect(self.seek)
        self.video_bar.playToggled.connect(self.toggle_play)
        self.video_bar.processRequested.connect(self.process_video_dialog)
        self.player.frame.connect(self._played_frame)
        self.player.finished.connect(lambda: self.video_bar.play.setChecked(False))

    def _apply_settings(self) -> None:
        s = self.vm.settings
        apply_theme(s.theme)
        try:
            from restore_app.core.engine import select_device

            device = select_device(s.device)
        except RestoreError as exc:
            device = f"unavailable ({exc})"
        self.device_label.setText(f"Device: {device} · precision {s.precision} · tile {s.tile or 'off'}")

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for path in self.vm.settings.existing_recent():
            a = QAction(path, self)
            a.triggered.connect(lambda _=False, p=path: self.open_path(p))
            self.recent_menu.addAction(a)
        self.recent_menu.setEnabled(bool(self.vm.settings.existing_recent()))

    # -- errors ----------------------------------------------------------------------------------
    def show_error(self, message: str) -> None:
        self.banner.setText(message)
        self.banner.show()
        self.statusBar().showMessage(message, 10000)

    def clear_error(self) -> None:
        self.banner.hide()
        self.banner.setText("")

    def _guard(self, fn, *args) -> bool:
        """Run a UI action; a user error goes to the banner instead of the console."""
        try:
            fn(*args)
        except RestoreError as exc:
            self.show_error(str(exc))
            return False
        self.clear_error()
        return True

    # -- documents -------------------------------------------------------------------------------
    def open_path(self, path: str | Path) -> bool:
        self.player.stop()
        if not self._guard(self.vm.open, path):
            return False
        doc = self.vm.document
        self.segments.show_instances(None)
        self.setWindowTitle(f"Restore — {doc.title}")
        self.video_bar.setVisible(doc.kind is MediaKind.VIDEO)
        if doc.video is not None:
            self.video_bar.set_video(doc.video.frame_count, float(doc.video.fps))
        self.store.save(self.vm.settings)
        self._fill_recent()
        self.compare.view.fit_pending = True
        self.refresh_models()
        self.refresh_images()
        return True

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open", self.vm.settings.last_folder, OPEN_FILTER)
        if path:
            self.open_path(path)

    def reference_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reference image", self.vm.settings.last_folder, OPEN_FILTER)
        if path:
            self.load_reference(path)

    def load_reference(self, path: str | Path) -> None:
        if self._guard(self.vm.set_reference, path):
            self.refresh_images()

    def dragEnterEvent(self, event) -> None:  # noqa: N802
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:  # noqa: N802
        urls = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if urls:
            self.open_path(urls[0])

    # -- models and jobs -------------------------------------------------------------------------
    def refresh_models(self) -> None:
        firsts = self.vm.first_models()
        followers = {}
        for m in firsts:
            followers[m.id] = [n for n in self.vm.registry.manifests() if n.id != m.id and
                               self._valid([m.id, n.id])]
        self.models.set_models(firsts, followers, self.vm.chain)
        needs_sigma = bool(self.vm.chain) and "sigma" in self.vm.registry.get(self.vm.chain[0]).conditioning
        self.models.estimate.setEnabled(needs_sigma)
        self.models.pattern.setEnabled(self.vm.document is not None and self.vm.document.image.ndim == 2)

    def _valid(self, ids: list[str]) -> bool:
        try:
            self.vm.check_chain(ids)
        except RestoreError:
            return False
        return True

    def set_chain(self, ids: list[str]) -> None:
        if self._guard(self.vm.set_chain, ids):
            self.refresh_models()

    def set_simulation(self, degradation) -> None:
        if self.vm.document is None:
            self.vm.degradation = degradation
            return
        if self._guard(self.vm.set_simulation, degradation):
            self.refresh_models()
            self.refresh_images()

    def run(self) -> None:
        if self.runner.running:
            return
        self.vm.sigma = self.models.sigma_value()
        self.vm.pattern = self.models.pattern.currentText()
        try:
            job = self.vm.make_job()
        except RestoreError as exc:
            self.show_error(str(exc))
            return
        vm = self.vm

        def restore_and_prepare(progress, cancel):
            image = job(progress, cancel)
            # everything the window needs to show the result is computed here, not on the UI thread
            display = vm.display_of(image)
            return Prepared(image, display, pyramid_levels(display), *_analyse(vm, image))

        self.start_job(restore_and_prepare)

    def start_job(self, fn) -> None:
        """Run ``fn(progress, cancel)`` on the worker thread with the progress bar and Cancel."""
        self.clear_error()
        self.eta.begin()
        self.models.set_running(True)
        self.runner.start(fn)

    def _progress(self, done: int, total: int) -> None:
        self.eta.update(done, total)
        self.models.progress.setValue(int(1000 * done / total) if total else 0)
        self.models.eta.setText(self.eta.text())

    def _finished(self, result) -> None:
        if isinstance(result, Prepared):
            self.vm.set_result(result.image, result.display)
            Pyramid.of(result.display, result.levels)
            self.segments.show_instances(self.vm.instances() if self.vm.labels is not None else None)
            self._show(result.heat, result.metrics)
            self.models.eta.setText("done")
            self.statusBar().showMessage(f"Restored with {' → '.join(self.vm.result_chain)}", 5000)
        elif isinstance(result, BatchSummary):
            self.models.eta.setText("done")
            if not result.ok:
                failed = [r for r in result.results if r.status == "failed"]
                self.show_error(f"{len(failed)} file(s) failed, e.g. {failed[0].rel}: {failed[0].error}")
            self.statusBar().showMessage(result.line(), 20000)
        else:
            self.models.eta.setText("done")
            self.statusBar().showMessage(f"Wrote {result}", 10000)

    def show_card(self, model_id: str) -> None:
        if not model_id:
            return
        m = self.vm.registry.get(model_id)
        card = m.card_path
        text = card.read_text() if card is not None and card.is_file() else f"# {m.name}\n\n{m.description}"
        self.card_dialog = CardDialog(f"{m.name} — model card", text, self)
        self.card_dialog.show()

    # -- display ---------------------------------------------------------------------------------
    def refresh_images(self) -> None:
        """Show before/after now; heat-map and metrics follow from the analysis thread."""
        self.compare.set_images(self.vm.before(), self.vm.after(), None, self.vm.ground_truth())
        self.compare.set_region(self.vm.region)
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        self.vm.use_y = self.metrics.use_y.isChecked()
        self.vm.crop = self.metrics.crop.value()
        if self.analysis.running:
            self._analysis_pending = True
            return
        vm, result = self.vm, self.vm.result
        self.analysis.start(lambda progress, cancel: _analyse(vm, result))

    def _analysed(self, analysed) -> None:
        heat, report = analysed
        self._show(heat, report)

    def _analysis_done(self) -> None:
        if self._analysis_pending:
            self._analysis_pending = False
            self.refresh_metrics()

    def _show(self, heat, report) -> None:
        heat_rgb = heat[0] if heat is not None else None
        if heat is not None:
            Pyramid.of(heat_rgb, heat)
        self.compare.set_images(self.vm.before(), self.vm.after(), heat_rgb, self.vm.ground_truth())
        self.compare.set_region(self.vm.region)
        if isinstance(report, str):
            self.metrics.show_report(None)
            self.metrics.convention.setText(report)
        else:
            self.metrics.show_report(report)

    def set_region(self, region) -> None:
        if self._guard(self.vm.set_region, region):
            self.compare.set_region(self.vm.region)
            self.refresh_metrics()

    def settings_dialog(self) -> None:
        dialog = SettingsDialog(self.vm.settings, self)
        if dialog.exec():
            self.apply_settings(dialog.result_settings())

    def apply_settings(self, settings: Settings) -> None:
        self.vm.settings = settings
        self.store.save(settings)
        self._apply_settings()

    def closeEvent(self, event) -> None:  # noqa: N802
        self.runner.cancel()
        self.runner.wait(10000)
        self.player.stop()
        self.store.save(self.vm.settings)
        super().closeEvent(event)
