"""Which files Restore reads, by extension and by content."""

from __future__ import annotations

import enum
from pathlib import Path

from restore_app.core.errors import InputError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
RAW_EXTENSIONS = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf",
    ".rw2", ".pef", ".srw", ".3fr", ".erf", ".kdc", ".dcr", ".mos", ".mrw", ".iiq", ".rwl",
    ".x3f",
})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm", ".mpg", ".mpeg",
                              ".wmv", ".flv", ".ts", ".mts", ".m2ts", ".y4m"})
# Containers we write H.264 into.
VIDEO_OUTPUT_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".m4v"})


class MediaKind(enum.Enum):
    IMAGE = "image"
    RAW = "raw"
    VIDEO = "video"


def media_kind(path: str | Path) -> MediaKind:
    """Classify a path by its extension; an unknown one is an :class:`InputError` naming the file.

    >>> media_kind("photo.DNG")
    <MediaKind.RAW: 'raw'>
    """
    ext = Path(path).suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return MediaKind.IMAGE
    if ext in RAW_EXTENSIONS:
        return MediaKind.RAW
    if ext in VIDEO_EXTENSIONS:
        return MediaKind.VIDEO
    known = " ".join(sorted(IMAGE_EXTENSIONS | RAW_EXTENSIONS | VIDEO_EXTENSIONS))
    raise InputError(f"{path}: unsupported file type {ext or '(no extension)'!r}; "
                     f"Restore reads {known}")


def sniff_image_format(head: bytes) -> str | None:
    """Name the image format of a file from its first bytes, or ``None`` if unrecognised."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return None
