"""``restore gui [FILE]``: start the desktop application."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtWidgets import QApplication

    from restore_app.core.engine import configure_cpu_threads
    from restore_app.core.registry import default_registry
    from restore_app.gui.main_window import MainWindow
    from restore_app.gui.settings import SettingsStore

    args = sys.argv[1:] if argv is None else argv
    configure_cpu_threads()
    app = QApplication.instance() or QApplication([sys.argv[0], *[a for a in args if a.startswith("-")]])
    app.setApplicationName("Restore")
    window = MainWindow(default_registry(), SettingsStore())
    window.show()
    files = [a for a in args if not a.startswith("-")]
    if files:
        window.open_path(Path(files[0]))
    return app.exec()
