"""Settings and export dialogs."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QSpinBox, QWidget

from restore_app.gui.settings import THEMES, Settings

ENSEMBLE_LABELS = {  # engine.ENSEMBLE_MODES, as the settings dialog names them
    "off": "Fast (one pass)",
    "on": "Balanced (self-ensemble, 2–4× the time)",
    "full": "Best (full self-ensemble, 4–8× the time)",
}


class SettingsDialog(QDialog):
    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda", "mps"])
        self.device.setCurrentText(settings.device)
        self.precision = QComboBox()
        self.precision.addItems(["auto", "fp32", "bf16", "fp16"])
        self.precision.setCurrentText(settings.precision)
        self.tile = QSpinBox()
        self.tile.setRange(0, 8192)
        self.tile.setSingleStep(64)
        self.tile.setSpecialValueText("whole image")
        self.tile.setValue(settings.tile)
        self.ensemble = QComboBox()  # the self-ensemble mode, for models that offer one
        for mode, label in ENSEMBLE_LABELS.items():
            self.ensemble.addItem(label, mode)
        self.ensemble.setCurrentIndex(self.ensemble.findData(settings.ensemble))
        self.ensemble.setToolTip("Averages the model's results over flipped and transposed copies of the "
                                 "image: better results for proportionally more time")
        self.jpeg_constraint = QCheckBox("Use the file's quantisation table")
        self.jpeg_constraint.setChecked(settings.jpeg_constraint)
        self.jpeg_constraint.setToolTip("JPEG artifact removal: after the model, keep the result consistent with "
                                        "the JPEG quantisation found in the image (closer to the original; "
                                        "images that were never JPEGs are left alone)")
        self.theme = QComboBox()
        self.theme.addItems(list(THEMES))
        self.theme.setCurrentText(settings.theme)
        form = QFormLayout(self)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("Tile size (px)", self.tile)
        form.addRow("Quality", self.ensemble)
        form.addRow("JPEG", self.jpeg_constraint)
        form.addRow("Theme", self.theme)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self._base = settings

    def result_settings(self) -> Settings:
        s = Settings(**{**self._base.__dict__})
        s.device, s.precision = self.device.currentText(), self.precision.currentText()
        s.tile, s.theme = self.tile.value(), self.theme.currentText()
        s.ensemble = self.ensemble.currentData()
        s.jpeg_constraint = self.jpeg_constraint.isChecked()
        if s.tile and s.tile < 32:
            s.tile = 32
        return s.validate()
