"""Progress reporting and cancellation for long-running work.

The core takes a ``progress`` callback and a :class:`CancelToken` and checks the token between tiles
or frames; the CLI drives them with a progress bar, the GUI with Qt signals from a worker thread.
"""

from __future__ import annotations

import threading
from typing import Protocol

from restore_app.core.errors import Cancelled


class ProgressCallback(Protocol):
    """``progress(done, total)``: ``done`` units of ``total`` finished (``total`` may be 0 if unknown)."""

    def __call__(self, done: int, total: int) -> None: ...


class CancelToken:
    """A thread-safe flag a user sets to stop a job at its next tile or frame.

    >>> token = CancelToken()
    >>> token.cancel()
    >>> token.cancelled
    True
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~restore_app.core.errors.Cancelled` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise Cancelled("cancelled by the user")


def check_cancel(cancel: CancelToken | None) -> None:
    """Raise ``Cancelled`` if ``cancel`` is set; a ``None`` token never cancels."""
    if cancel is not None:
        cancel.raise_if_cancelled()
