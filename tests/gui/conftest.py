from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["QT_QPA_PLATFORM"] = "offscreen"

OUTPUT = Path(__file__).resolve().parents[2] / "test-output"


@pytest.fixture
def window(qtbot, tmp_path, monkeypatch):
    """The main window with its settings in tmp_path and the real model registry."""
    monkeypatch.setenv("RESTORE_CONFIG_DIR", str(tmp_path / "config"))
    from restore_app.core.registry import default_registry
    from restore_app.gui.main_window import MainWindow
    from restore_app.gui.settings import SettingsStore

    w = MainWindow(default_registry(), SettingsStore(tmp_path / "config" / "settings.json"))
    qtbot.addWidget(w)
    w.resize(1280, 800)
    w.show()
    qtbot.waitExposed(w)
    yield w
    w.runner.cancel()
    w.runner.wait(10000)
    w.player.stop()


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave pictures for a person to look at (git-ignored)."""
    OUTPUT.mkdir(exist_ok=True)
    return OUTPUT
