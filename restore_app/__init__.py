"""Restore: repair photos and videos with small neural networks.

The computing core lives in :mod:`restore_app.core` (no Qt); the command line in
:mod:`restore_app.cli`; the desktop application in :mod:`restore_app.gui`.
"""

__version__ = "0.1.0"
