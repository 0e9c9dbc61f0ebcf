"""Settings and export dialogs."""

from __future__ import annotations

from PySide6.QtWidgets import QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QSpinBox, QWidget

from restore_app.gui.settings import THEMES, Settings


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
        self.ensemble = QCheckBox("Best quality (self-ensemble: about 2× the time for models that offer it)")
        self.ensemble.setChecked(settings.ensemble)
        self.theme = QComboBox()
        self.theme.addItems(list(THEMES))
        self.theme.setCurrentText(settings.theme)
        form = QFormLayout(self)
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("Tile size (px)", self.tile)
        form.addRow("Quality", self.ensemble)
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
        s.ensemble = self.ensemble.isChecked()
        if s.tile and s.tile < 32:
            s.tile = 32
        return s.validate()
