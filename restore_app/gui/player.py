"""Video playback with our own decoder (no QtMultimedia): frames decoded on a thread, paced at fps."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from PySide6.QtCore import QObject, QThread, Signal, Slot

from restore_app.core.io import VideoInfo, VideoReader


class _Decoder(QObject):
    frame = Signal(int, object)
    stopped = Signal()

    def __init__(self, path: Path, info: VideoInfo, start: int, stop: threading.Event) -> None:
        super().__init__()
        self._path, self._info, self._start, self._stop = path, info, start, stop

    @Slot()
    def run(self) -> None:
        period = 1.0 / float(self._info.fps)
        reader = VideoReader(self._path, start=self._start, info=self._info)
        t0 = time.monotonic()
        try:
            for i, frame in enumerate(reader):
                if self._stop.is_set():
                    break
                self.frame.emit(self._start + i, frame)
                delay = t0 + (i + 1) * period - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        finally:
            reader.close()
            self.stopped.emit()


class VideoPlayer(QObject):
    """``play(path, info, start)`` emits ``frame(index, uint8 array)`` in real time until ``stop()``
    or the end (then ``finished``)."""

    frame = Signal(int, object)
    finished = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._thread: QThread | None = None
        self._stop = threading.Event()

    @property
    def playing(self) -> bool:
        return self._thread is not None

    def play(self, path: Path, info: VideoInfo, start: int) -> None:
        self.stop()
        self._stop = threading.Event()
        self._thread = QThread()
        self._decoder = _Decoder(path, info, start, self._stop)
        self._decoder.moveToThread(self._thread)
        self._thread.started.connect(self._decoder.run)
        self._decoder.frame.connect(self.frame)
        self._decoder.stopped.connect(self._done)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            thread, self._thread = self._thread, None
            thread.quit()
            thread.wait(5000)

    @Slot()
    def _done(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            thread.quit()
            thread.wait(5000)
            self.finished.emit()
