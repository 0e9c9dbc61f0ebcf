"""The PySide6 desktop application. It only calls :mod:`restore_app.core`."""
