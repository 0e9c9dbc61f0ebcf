"""Exception types shared by the core, the CLI and the GUI.

Every error a user can cause derives from :class:`RestoreError`; the CLI prints its message on one
line and exits non-zero, the GUI shows it in the window. Anything else is a bug.
"""

from __future__ import annotations


class RestoreError(Exception):
    """Base class of every error caused by the user's input or settings."""


class InputError(RestoreError, ValueError):
    """A file or value given by the user cannot be used (corrupt, truncated, unsupported, too large)."""


class OutputError(RestoreError, OSError):
    """An output cannot be written where asked (unwritable folder, would overwrite an input)."""


class ModelNotFoundError(RestoreError, LookupError):
    """An unknown model id; the message lists the known ones."""


class ModelLoadError(RestoreError, RuntimeError):
    """A model's manifest, weights or architecture cannot be loaded."""


class Cancelled(RestoreError):
    """The user cancelled a long-running job."""
