"""The core (and the CLI) import and run with PySide6 blocked: Qt stays in restore_app.gui."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_core_imports_with_qt_blocked():
    code = textwrap.dedent("""
        import importlib, pkgutil, sys

        class BlockQt:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("PySide6", "PyQt5", "PyQt6", "shiboken6", "qtpy"):
                    raise ImportError(f"Qt is blocked: {name}")
                return None

        sys.meta_path.insert(0, BlockQt())
        import restore_app.core, restore_app.cli
        names = []
        for pkg in (restore_app.core, restore_app.cli):
            for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
                importlib.import_module(info.name)
                names.append(info.name)
        from restore_app.core.pipeline import Restorer
        import numpy as np
        Restorer.from_id("bilinear-demosaic").restore_image(np.zeros((8, 8), np.float32))
        assert not any(m.startswith(("PySide6", "shiboken6")) for m in sys.modules)
        print(len(names))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= 15  # every core module was imported
