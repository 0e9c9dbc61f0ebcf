"""The side panels: model choice and run, simulate mode, metrics, and the video bar."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from restore_app.core.registry import ModelManifest
from restore_app.core.simulate import Degradation
from restore_app.gui.viewmodels import TASK_LABELS, MetricsReport

NONE_ITEM = "— none —"


class ModelPanel(QGroupBox):
    """Choose the model (grouped by task), an optional second step, the noise level; run and cancel."""

    chainChanged = Signal(list)
    runRequested = Signal()
    cancelRequested = Signal()
    cardRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Restore", parent)
        self.first = QComboBox()
        self.second = QComboBox()
        self.card = QPushButton("Model card…")
        self.estimate = QCheckBox("estimate")
        self.estimate.setChecked(True)
        self.sigma = QDoubleSpinBox()
        self.sigma.setRange(0, 100)
        self.sigma.setSuffix(" /255")
        self.sigma.setEnabled(False)
        self.pattern = QComboBox()
        self.pattern.addItems(["RGGB", "BGGR", "GRBG", "GBRG"])
        self.run = QPushButton("Run")
        self.run.setDefault(True)
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.eta = QLabel("")
        noise = QHBoxLayout()
        noise.addWidget(self.estimate)
        noise.addWidget(self.sigma)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run)
        buttons.addWidget(self.cancel)
        form = QFormLayout(self)
        form.addRow("Model", self.first)
        form.addRow("Then", self.second)
        form.addRow("", self.card)
        form.addRow("Noise σ", noise)
        form.addRow("Bayer pattern", self.pattern)
        form.addRow(buttons)
        form.addRow(self.progress)
        form.addRow(self.eta)
        self.first.currentIndexChanged.connect(self._first_changed)
        self.second.currentIndexChanged.connect(self._emit_chain)
        self.estimate.toggled.connect(lambda on: self.sigma.setEnabled(not on))
        self.run.clicked.connect(self.runRequested)
        self.cancel.clicked.connect(self.cancelRequested)
        self.card.clicked.connect(lambda: self.cardRequested.emit(self.first.currentData() or ""))
        self._followers: dict[str, list[ModelManifest]] = {}
        self._updating = False

    def set_models(self, firsts: list[ModelManifest], followers: dict[str, list[ModelManifest]],
                   chain: list[str]) -> None:
        """Fill the lists: ``firsts`` grouped by task, ``followers[id]`` what may follow ``id``."""
        self._updating = True
        self._followers = followers
        self.first.clear()
        task = None
        for m in firsts:
            if m.task != task:
                task = m.task
                self.first.addItem(f"— {TASK_LABELS.get(task, task)} —")
                item = self.first.model().item(self.first.count() - 1)
                item.setEnabled(False)
            self.first.addItem(f"{m.name}{'  (default)' if m.default else ''}", m.id)
        if chain:
            self.first.setCurrentIndex(max(0, self.first.findData(chain[0])))
        self._fill_second(chain[1] if len(chain) > 1 else None)
        self._updating = False

    def _fill_second(self, selected: str | None) -> None:
        self.second.blockSignals(True)
        self.second.clear()
        self.second.addItem(NONE_ITEM, None)
        for m in self._followers.get(self.first.currentData() or "", []):
            self.second.addItem(f"{m.name} ({TASK_LABELS.get(m.task, m.task)})", m.id)
        self.second.setCurrentIndex(max(0, self.second.findData(selected)) if selected else 0)
        self.second.blockSignals(False)

    def _first_changed(self) -> None:
        if self._updating:
            return
        self._fill_second(None)
        self._emit_chain()

    def _emit_chain(self) -> None:
        if not self._updating and self.first.currentData():
            self.chainChanged.emit([d for d in (self.first.currentData(), self.second.currentData()) if d])

    def chain(self) -> list[str]:
        return [d for d in (self.first.currentData(), self.second.currentData()) if d]

    def sigma_value(self) -> float | None:
        return None if self.estimate.isChecked() else self.sigma.value() / 255.0

    def set_running(self, running: bool) -> None:
        self.run.setEnabled(not running)
        self.cancel.setEnabled(running)
        for w in (self.first, self.second, self.sigma, self.estimate, self.pattern):
            w.setEnabled(not running and (w is not self.sigma or not self.estimate.isChecked()))
        if running:
            self.progress.setValue(0)
            self.eta.setText("starting…")


class SimulatePanel(QGroupBox):
    """Simulate mode: degrade the open (clean) image, then restore it and score against it."""

    changed = Signal(object)  # Degradation or None

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Simulate", parent)
        self.setCheckable(True)
        self.setChecked(False)
        self.kind = QComboBox()
        self.kind.addItem("Mosaic + noise", "mosaic")
        self.kind.addItem("JPEG", "jpeg")
        self.kind.addItem("Downscale", "downscale")
        self.value = QSpinBox()
        form = QFormLayout(self)
        form.addRow("Degradation", self.kind)
        self.value_label = QLabel()
        form.addRow(self.value_label, self.value)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self.value.valueChanged.connect(self._emit)
        self.toggled.connect(self._emit)
        self._kind_changed()

    def _kind_changed(self) -> None:
        kind = self.kind.currentData()
        self.value.blockSignals(True)
        if kind == "mosaic":
            self.value_label.setText("Noise σ (/255)")
            self.value.setRange(0, 50)
            self.value.setValue(10)
        elif kind == "jpeg":
            self.value_label.setText("Quality")
            self.value.setRange(1, 100)
            self.value.setValue(20)
        else:
            self.value_label.setText("Factor")
            self.value.setRange(2, 4)
            self.value.setValue(4)
        self.value.blockSignals(False)
        self._emit()

    def degradation(self) -> Degradation | None:
        if not self.isChecked():
            return None
        kind, v = self.kind.currentData(), self.value.value()
        return Degradation(kind, sigma=v) if kind == "mosaic" else \
            Degradation(kind, quality=v) if kind == "jpeg" else Degradation(kind, factor=v)

    def _emit(self, *_: object) -> None:
        self.changed.emit(self.degradation())


class MetricsPanel(QGroupBox):
    """PSNR, SSIM and MS-SSIM of each image against the reference, with the convention used."""

    conventionChanged = Signal()
    referenceRequested = Signal()
    clearRegionRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Metrics", parent)
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["", "PSNR (dB)", "SSIM", "MS-SSIM"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for c in (1, 2, 3):
            header.setSectionResizeMode(c, QHeaderView.ResizeMode.ResizeToContents)
        self.table.setWordWrap(True)
        self.convention = QLabel("Load a reference or use simulate mode to see metrics.")
        self.convention.setWordWrap(True)
        self.use_y = QCheckBox("Y only (BT.601)")
        self.crop = QSpinBox()
        self.crop.setRange(0, 64)
        self.crop.setSuffix(" px crop")
        self.reference = QPushButton("Load reference…")
        self.clear_region = QPushButton("Whole image")
        self.clear_region.setToolTip("Shift-drag on the image to measure a region; this measures all again")
        opts = QHBoxLayout()
        opts.addWidget(self.use_y)
        opts.addWidget(self.crop)
        btns = QHBoxLayout()
        btns.addWidget(self.reference)
        btns.addWidget(self.clear_region)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(self.convention)
        layout.addLayout(opts)
        layout.addLayout(btns)
        self.use_y.toggled.connect(self.conventionChanged)
        self.crop.valueChanged.connect(self.conventionChanged)
        self.reference.clicked.connect(self.referenceRequested)
        self.clear_region.clicked.connect(self.clearRegionRequested)

    def show_report(self, report: MetricsReport | None) -> None:
        self.table.setRowCount(0)
        if report is None:
            self.convention.setText("Load a reference or use simulate mode to see metrics.")
            return
        for row in report.rows:
            r = self.table.rowCount()
            self.table.insertRow(r)
            s = row.scores
            values = [row.label, f"{s.psnr:.2f}", f"{s.ssim:.4f}", "n/a" if s.ms_ssim is None else f"{s.ms_ssim:.4f}"]
            for c, v in enumerate(values):
                item = QTableWidgetItem(v)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self.table.resizeRowsToContents()
        region = f"; region {report.region[2]}×{report.region[3]} at ({report.region[0]}, {report.region[1]})" \
            if report.region else ""
        self.convention.setText(f"Against the reference: {report.convention}{region}")

    def value(self, row: int, column: int) -> str:
        item = self.table.item(row, column)
        return item.text() if item is not None else ""


class SegmentPanel(QGroupBox):
    """The instance count and table of a segmentation result."""

    COLUMNS = ("id", "area", "centroid_x", "centroid_y", "mean_intensity")

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Instances", parent)
        self.count = QLabel()
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(["#", "area (px)", "x", "y", "mean"])
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setSortingEnabled(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.count)
        layout.addWidget(self.table)

    def show_instances(self, rows: list[dict] | None) -> None:
        self.setVisible(rows is not None)
        if rows is None:
            return
        self.count.setText(f"{len(rows)} instances")
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(self.COLUMNS):
                item = QTableWidgetItem()
                item.setData(Qt.ItemDataRole.DisplayRole, row.get(key, ""))
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)


class VideoBar(QWidget):
    """Frame slider, play/pause and "process whole video"."""

    frameRequested = Signal(int)
    playToggled = Signal(bool)
    processRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.play = QPushButton("Play")
        self.play.setCheckable(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.label = QLabel("")
        self.process = QPushButton("Process whole video…")
        row = QHBoxLayout(self)
        row.setContentsMargins(4, 0, 4, 0)
        row.addWidget(self.play)
        row.addWidget(self.slider, 1)
        row.addWidget(self.label)
        row.addWidget(self.process)
        self.slider.sliderReleased.connect(lambda: self.frameRequested.emit(self.slider.value()))
        self.slider.valueChanged.connect(self._moved)
        self.play.toggled.connect(self._toggled)
        self.process.clicked.connect(self.processRequested)
        self._count = 0

    def set_video(self, frame_count: int, fps: float) -> None:
        self._count = frame_count
        self.slider.blockSignals(True)
        self.slider.setRange(0, max(0, frame_count - 1))
        self.slider.setValue(0)
        self.slider.blockSignals(False)
        self._fps = fps
        self.set_frame(0)

    def set_frame(self, index: int) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(index)
        self.slider.blockSignals(False)
        self.label.setText(f"{index + 1} / {self._count}")

    def _moved(self, value: int) -> None:
        self.label.setText(f"{value + 1} / {self._count}")
        if not self.slider.isSliderDown():
            self.frameRequested.emit(value)

    def _toggled(self, on: bool) -> None:
        self.play.setText("Pause" if on else "Play")
        self.playToggled.emit(on)


class CardDialog(QDialog):
    """A model's card (its CARD.md), rendered."""

    def __init__(self, title: str, markdown: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.resize(720, 640)
        view = QTextBrowser()
        view.setMarkdown(markdown)
        view.setOpenExternalLinks(True)
        layout = QVBoxLayout(self)
        layout.addWidget(view)
        self.view = view
