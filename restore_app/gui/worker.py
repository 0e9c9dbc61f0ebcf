"""Running core jobs off the UI thread: a QThread per job, progress and cancel through signals.

The job is a plain function ``fn(progress, cancel)`` from the view-model; the core checks the cancel
token between tiles or frames, so Cancel takes effect within one of them. The UI thread never runs
a model.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from restore_app.core.errors import Cancelled, RestoreError
from restore_app.core.jobs import CancelToken

log = logging.getLogger(__name__)
JobFn = Callable[[Callable[[int, int], None], CancelToken], Any]


class _Worker(QObject):
    progress = Signal(int, int)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(self, fn: JobFn, token: CancelToken) -> None:
        super().__init__()
        self._fn, self._token = fn, token

    @Slot()
    def run(self) -> None:
        try:
            result = self._fn(lambda done, total: self.progress.emit(int(done), int(total)), self._token)
        except Cancelled:
            self.cancelled.emit()
        except RestoreError as exc:
            self.failed.emit(str(exc))
        except Exception as exc:  # a bug: show it in the window and keep the traceback in the log
            log.error("job failed:\n%s", traceback.format_exc())
            self.failed.emit(f"{type(exc).__name__}: {exc}")
        else:
            self.finished.emit(result)


class JobRunner(QObject):
    """Runs one job at a time on its own thread and relays its signals to the UI thread."""

    started = Signal()
    progress = Signal(int, int)
    finished = Signal(object)
    failed = Signal(str)
    cancelled = Signal()
    done = Signal()  # after any of finished / failed / cancelled

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._worker: _Worker | None = None
        self._token: CancelToken | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self, fn: JobFn) -> None:
        if self.running:
            raise RuntimeError("a job is already running")
        self._token = CancelToken()
        self._thread = QThread()
        self._worker = _Worker(fn, self._token)
        self._worker.moveToThread(self._thread)
        self._thread.started.connect(self._worker.run)
        self._worker.progress.connect(self.progress)
        for signal, relay in ((self._worker.finished, self.finished), (self._worker.failed, self.failed)):
            signal.connect(relay)
            signal.connect(self._cleanup)
        self._worker.cancelled.connect(self.cancelled)
        self._worker.cancelled.connect(self._cleanup)
        self._thread.start()
        self.started.emit()

    def cancel(self) -> None:
        if self._token is not None:
            self._token.cancel()

    def wait(self, ms: int = 30000) -> bool:
        return self._thread.wait(ms) if self._thread is not None else True

    @Slot()
    def _cleanup(self, *_: object) -> None:
        thread, self._thread, self._worker = self._thread, None, None
        if thread is not None:
            thread.quit()
            thread.wait()
            thread.deleteLater()
        self.done.emit()
