"""Light and dark themes (Fusion style with a palette); "system" keeps the platform's look."""

from __future__ import annotations

from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QApplication


def apply_theme(theme: str) -> None:
    app = QApplication.instance()
    if app is None:
        return
    if theme == "system":
        app.setPalette(app.style().standardPalette())
        return
    app.setStyle("Fusion")
    if theme == "light":
        app.setPalette(app.style().standardPalette())
        return
    p = QPalette()
    dark, mid, text = QColor(37, 37, 38), QColor(53, 53, 56), QColor(230, 230, 230)
    for role, color in ((QPalette.ColorRole.Window, mid), (QPalette.ColorRole.WindowText, text),
                        (QPalette.ColorRole.Base, dark), (QPalette.ColorRole.AlternateBase, mid),
                        (QPalette.ColorRole.Text, text), (QPalette.ColorRole.Button, mid),
                        (QPalette.ColorRole.ButtonText, text), (QPalette.ColorRole.ToolTipBase, dark),
                        (QPalette.ColorRole.ToolTipText, text),
                        (QPalette.ColorRole.Highlight, QColor(61, 142, 201)),
                        (QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))):
        p.setColor(role, color)
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Text, QColor(128, 128, 128))
    p.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText, QColor(128, 128, 128))
    app.setPalette(p)
