"""Video: frames in as an iterator, frames out through libx264, the source's audio kept.

ffmpeg comes from ``imageio-ffmpeg`` (a static build with libx264; there is no ffprobe, so streams
are probed by parsing ``ffmpeg -i``). Frames are ``(H, W, 3)`` ``uint8`` RGB arrays.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from restore_app.core.checks import check_range
from restore_app.core.errors import InputError, OutputError
from restore_app.core.io.atomic import atomic_output
from restore_app.core.io.formats import VIDEO_OUTPUT_EXTENSIONS

# Audio codecs that each output container can hold as a stream copy; others are re-encoded to AAC.
_AUDIO_COPY_OK = {
    ".mp4": {"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"},
    ".m4v": {"aac", "mp3", "ac3", "eac3", "alac"},
    ".mov": {"aac", "mp3", "ac3", "eac3", "alac", "pcm_s16le", "pcm_s24le"},
    ".mkv": None,  # Matroska takes anything
}


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary bundled by imageio-ffmpeg."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found: frame size after rotation, exact frame rate, stream details."""

    path: Path
    width: int
    height: int
    fps: Fraction
    frame_count: int
    duration: float
    codec: str
    audio_codec: str | None = None
    audio_channels: str | None = None
    rotation: int = 0

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


_VIDEO_RE = re.compile(r"Stream #0:(\d+).*?: Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_FPS_RE = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_AUDIO_RE = re.compile(r"Stream #0:\d+.*?: Audio: (\w+)[^,]*, (\d+) Hz, ([^,]+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_FRAME_RE = re.compile(r"frame=\s*(\d+)")
_ROTATE_RE = re.compile(r"rotation of (-?[\d.]+) degrees")


def _exact_rate(value: float) -> Fraction:
    """Recover NTSC-style rates (29.97 → 30000/1001) from ffmpeg's rounded print-out."""
    ntsc = round(value * 1.001)
    if ntsc and abs(value - ntsc * 1000 / 1001) < 0.006 and abs(value - ntsc) > 0.006:
        return Fraction(ntsc * 1000, 1001)
    return Fraction(value).limit_denominator(1000)


def probe_video(path: str | Path) -> VideoInfo:
    """Read a video's streams and count its frames (a stream copy, no decoding).

    Raises :class:`InputError` naming the file if it is missing, empty, or holds no video stream
    ffmpeg can read.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: file is empty")
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(path), "-map", "0:v:0", "-c", "copy",
           "-f", "null", "-"]
    proc = subprocess.run(cmd, capture_output=True, timeout=600)
    log = proc.stderr.decode("utf-8", "replace").replace("\r", "\n")
    video = _VIDEO_RE.search(log)
    if proc.returncode != 0 or video is None:
        reason = _last_error_line(log) or "no video stream found"
        raise InputError(f"{path}: cannot read as video ({reason})")
    header = log[: log.find("Stream mapping")] if "Stream mapping" in log else log
    vline = header[video.start(): header.find("\n", video.start())]
    fps_match = _FPS_RE.search(vline)
    if fps_match is None:
        raise InputError(f"{path}: video stream has no frame rate")
    fps_value = float(fps_match.group(1)) * (1000 if fps_match.group(2) else 1)
    frames = [int(m) for m in _FRAME_RE.findall(log)]
    frame_count = frames[-1] if frames else 0
    if frame_count == 0:
        raise InputError(f"{path}: video stream holds no frames")
    dur = _DURATION_RE.search(header)
    duration = (int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3))) if dur else 0.0
    audio = _AUDIO_RE.search(header)
    rot = _ROTATE_RE.search(header)
    rotation = int(round(float(rot.group(1)))) % 360 if rot else 0
    width, height = int(video.group(3)), int(video.group(4))
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(path=path, width=width, height=height, fps=_exact_rate(fps_value),
                     frame_count=frame_count, duration=duration, codec=video.group(2),
                     audio_codec=audio.group(1) if audio else None,
                     audio_channels=audio.group(3).strip() if audio else None, rotation=rotation)


def _last_error_line(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        low = line.lower()
        if any(word in low for word in ("error", "invalid", "not found", "no such", "could not",
                                        "unknown", "corrupt", "failed")):
            return line
    return ""


class _StderrDrain(threading.Thread):
    """Read a subprocess's stderr continuously so it never blocks on a full pipe."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self._stream = stream
        self._chunks: list[bytes] = []

    def run(self) -> None:
        for chunk in iter(lambda: self._stream.read(4096), b""):
            self._chunks.append(chunk)
            if len(self._chunks) > 256:
                del self._chunks[:128]

    @property
    def text(self) -> str:
        return b"".join(self._chunks).decode("utf-8", "replace")


class VideoReader:
    """Iterate over a video's frames as ``(H, W, 3)`` ``uint8`` RGB arrays.

    >>> with VideoReader("clip.mp4") as reader:  # doctest: +SKIP
    ...     for frame in reader:
    ...         ...

    ``start`` skips to a frame index (ffmpeg seeks, then decodes accurately to that frame).
    Only the current frame is held in memory.
    """

    def __init__(self, path: str | Path, start: int = 0, info: VideoInfo | None = None) -> None:
        self.info = info or probe_video(path)
        self.path = Path(path)
        self.start = int(check_range(start, 0, max(self.info.frame_count - 1, 0), "start frame"))
        self._proc: subprocess.Popen | None = None
        self._drain: _StderrDrain | None = None

    def __len__(self) -> int:
        return self.info.frame_count - self.start

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._proc is not None:
            with contextlib.suppress(OSError):
                self._proc.stdout.close()
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def __iter__(self) -> Iterator[np.ndarray]:
        self.close()
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error"]
        if self.start:
            cmd += ["-ss", f"{float(self.start / self.info.fps):.6f}"]
        cmd += ["-i", str(self.path), "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-fps_mode", "passthrough", "-"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      stdin=subprocess.DEVNULL, bufsize=0)
        self._drain = _StderrDrain(self._proc.stderr)
        self._drain.start()
        w, h = self.info.width, self.info.height
        size = w * h * 3
        count = 0
        try:
            while True:
                buf = _read_exact(self._proc.stdout, size)
                if buf is None:
                    break
                count += 1
                yield np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
            self._proc.wait()
            self._drain.join(timeout=5)
            if count == 0:
                reason = _last_error_line(self._drain.text) or "no frame decoded"
                raise InputError(f"{self.path}: cannot decode video ({reason})")
        finally:
            self.close()


def _read_exact(stream, size: int) -> bytes | None:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            return None
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class VideoWriter:
    """Encode ``(H, W, 3)`` ``uint8`` RGB frames with libx264, atomically, keeping an audio track.

    ``quality`` is x264's CRF (0 lossless … 51 worst; 18 looks transparent). ``audio_from`` names a
    file whose first audio stream is copied (or re-encoded to AAC if the container cannot hold it).
    The output appears under its final name only after :meth:`close` succeeds; on an exception inside
    the ``with`` block the partial file is removed.
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: Fraction | float,
                 quality: int = 18, audio_from: str | Path | None = None,
                 audio_codec: str | None = None) -> None:
        self.path = Path(path)
        ext = self.path.suffix.lower()
        if ext not in VIDEO_OUTPUT_EXTENSIONS:
            raise OutputError(f"{path}: cannot write video of type {ext or '(none)'!r}; use one of "
                              f"{' '.join(sorted(VIDEO_OUTPUT_EXTENSIONS))}")
        check_range(quality, 0, 51, "video quality (CRF)")
        if width < 2 or height < 2:
            raise OutputError(f"{path}: frame size {width}×{height} is too small to encode")
        self.width, self.height = int(width), int(height)
        self.fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
        self.quality = int(quality)
        self.audio_from = Path(audio_from) if audio_from is not None else None
        self.audio_codec = audio_codec
        self.frames_written = 0
        self._atomic = atomic_output(self.path)
        self._tmp: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._drain: _StderrDrain | None = None

    def _command(self, tmp: Path) -> list[str]:
        cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-v", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}",
               "-r", f"{self.fps.numerator}/{self.fps.denominator}", "-i", "pipe:0"]
        if self.audio_from is not None:
            cmd += ["-i", str(self.audio_from), "-map", "0:v:0", "-map", "1:a:0?"]
            allowed = _AUDIO_COPY_OK[self.path.suffix.lower()]
            if allowed is None or (self.audio_codec or "") in allowed:
                cmd += ["-c:a", "copy"]
            else:
                cmd += ["-c:a", "aac", "-b:a", "192k"]
        even = self.width % 2 == 0 and self.height % 2 == 0
        cmd += ["-c:v", "libx264", "-preset", "medium", "-crf", str(self.quality),
                "-pix_fmt", "yuv420p" if even else "yuv444p"]
        if self.path.suffix.lower() in (".mp4", ".m4v", ".mov"):
            cmd += ["-movflags", "+faststart"]
        return cmd + [str(tmp)]

    def __enter__(self) -> VideoWriter:
        self._tmp = self._atomic.__enter__()
        self._proc = subprocess.Popen(self._command(self._tmp), stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._drain = _StderrDrain(self._proc.stderr)
        self._drain.start()
        return self

    def write(self, frame: np.ndarray) -> None:
        if self._proc is None:
            raise RuntimeError("VideoWriter.write called outside its with-block")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise InputError(f"frame must be ({self.height}, {self.width}, 3) uint8; "
                             f"got {frame.shape} {frame.dtype}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError) as exc:
            self._proc.wait()
            self._drain.join(timeout=5)
            raise OutputError(f"{self.path}: ffmpeg stopped: "
                              f"{_last_error_line(self._drain.text) or exc}") from exc
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        proc, self._proc = self._proc, None
        try:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            if exc_type is not None:
                proc.kill()
            rc = proc.wait()
            self._drain.join(timeout=5)
            if exc_type is None and rc != 0:
                raise OutputError(f"{self.path}: ffmpeg failed ({_last_error_line(self._drain.text) or rc})")
            if exc_type is None and self.frames_written == 0:
                raise OutputError(f"{self.path}: no frames were written")
        except BaseException as err:
            self._atomic.__exit__(type(err), err, err.__traceback__)
            raise
        self._atomic.__exit__(exc_type, exc, tb)
