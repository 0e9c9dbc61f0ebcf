"""Reading and writing images, camera RAW files and videos.

>>> from restore_app.core.io import read_image, write_image, media_kind
"""

from restore_app.core.io.atomic import atomic_output, check_not_overwriting
from restore_app.core.io.formats import IMAGE_EXTENSIONS, RAW_EXTENSIONS, VIDEO_EXTENSIONS, MediaKind, media_kind
from restore_app.core.io.image import from_float, read_image, to_float, to_rgb, write_image
from restore_app.core.io.raw import RawImage, read_raw
from restore_app.core.io.video import VideoInfo, VideoReader, VideoWriter, probe_video

__all__ = [
    "IMAGE_EXTENSIONS", "RAW_EXTENSIONS", "VIDEO_EXTENSIONS", "MediaKind", "RawImage", "VideoInfo",
    "VideoReader", "VideoWriter", "atomic_output", "check_not_overwriting", "from_float",
    "media_kind", "probe_video", "read_image", "read_raw", "to_float", "to_rgb", "write_image",
]
