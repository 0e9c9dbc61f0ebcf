"""Where things live: built-in models, the user's models and settings, the shared datasets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE_ROOT = Path(__file__).resolve().parents[1]
PROJECT_ROOT = _PACKAGE_ROOT.parent


def builtin_models_dir() -> Path:
    """The model zoo shipped with Restore (``models/`` beside the package)."""
    return PROJECT_ROOT / "models"


def resources_dir() -> Path:
    """Bundled resources: sample images (with their licences), icons."""
    return PROJECT_ROOT / "resources"


def user_data_dir() -> Path:
    """Per-user data folder (fine-tuned models go in its ``models/``)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming"))
        return base / "Restore"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "Restore"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "restore"


def user_config_dir() -> Path:
    """Per-user settings folder (``RESTORE_CONFIG_DIR`` overrides it, e.g. for tests)."""
    env = os.environ.get("RESTORE_CONFIG_DIR")
    if env:
        return Path(env)
    if sys.platform == "win32":
        return user_data_dir()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Preferences" / "Restore"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "restore"


def datasets_dir() -> Path | None:
    """The shared datasets: ``RESTORE_DATA``, else ``../shared/datasets`` beside the project."""
    env = os.environ.get("RESTORE_DATA")
    candidate = Path(env) if env else PROJECT_ROOT.parent / "shared" / "datasets"
    return candidate if candidate.is_dir() else None


def datasets_root() -> Path:
    """:func:`datasets_dir`, or ``../shared/datasets`` when it is missing (so that a default data path
    still names where the data was expected, for the error that follows)."""
    return datasets_dir() or Path("../shared/datasets")
