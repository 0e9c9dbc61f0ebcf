"""Video: probing, frame iteration, encoding with libx264, audio kept; real clips from the datasets."""

from __future__ import annotations

import subprocess
from fractions import Fraction

import numpy as np
import pytest

from restore_app.core.errors import InputError, OutputError
from restore_app.core.io import VideoReader, VideoWriter, probe_video
from restore_app.core.metrics import psnr
from restore_app.core.pipeline import Restorer, RunOptions, process_file
from tests.helpers import make_clip


def _frames(n=12, h=64, w=96):
    yy, xx = np.mgrid[0:h, 0:w]
    return [np.stack([(xx * 2 + 8 * i) % 256, (yy * 3) % 256, np.full_like(xx, 20 * i % 256)],
                     axis=-1).astype(np.uint8) for i in range(n)]


def test_write_then_read_back(tmp_path):
    frames = _frames()
    with VideoWriter(tmp_path / "v.mp4", 96, 64, Fraction(25), quality=8) as writer:
        for f in frames:
            writer.write(f)
    info = probe_video(tmp_path / "v.mp4")
    assert (info.width, info.height, info.frame_count, info.fps) == (96, 64, 12, Fraction(25))
    assert info.codec == "h264" and not info.has_audio
    back = list(VideoReader(tmp_path / "v.mp4"))
    assert len(back) == 12
    assert min(psnr(a, b, 255) for a, b in zip(frames, back, strict=True)) > 30


def test_reader_start_frame(tmp_path):
    clip = make_clip(tmp_path / "c.mp4", seconds=2, rate="10", audio=False)
    all_frames = list(VideoReader(clip))
    assert len(all_frames) == 20
    tail = list(VideoReader(clip, start=13))
    assert len(tail) == 7
    for a, b in zip(tail, all_frames[13:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_ntsc_rate_is_exact(tmp_path):
    clip = make_clip(tmp_path / "ntsc.mp4", seconds=1, rate="30000/1001", audio=False)
    assert probe_video(clip).fps == Fraction(30000, 1001)


def test_processing_keeps_audio_fps_and_frames(tmp_path):
    clip = make_clip(tmp_path / "in.mp4", seconds=1.5, rate="12", audio=True)
    src = probe_video(clip)
    assert src.has_audio and src.audio_codec == "aac"
    out = process_file(clip, tmp_path / "out.mkv", Restorer.from_id("bicubic-x2"), RunOptions(crf=12))
    info = probe_video(out)
    assert (info.width, info.height) == (2 * src.width, 2 * src.height)
    assert info.fps == src.fps and info.frame_count == src.frame_count
    assert info.audio_codec == "aac" and info.audio_channels == "stereo"


def test_writer_failure_leaves_no_file(tmp_path):
    target = tmp_path / "broken.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(target, 32, 32, 10) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
            raise RuntimeError("cancelled halfway")
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_bad_frames_and_types(tmp_path):
    with pytest.raises(OutputError, match="cannot write video of type '.gif'"):
        VideoWriter(tmp_path / "x.gif", 32, 32, 10)
    with pytest.raises(InputError, match=r"frame must be \(32, 32, 3\) uint8"):
        with VideoWriter(tmp_path / "x.mp4", 32, 32, 10) as writer:
            writer.write(np.zeros((16, 16, 3), np.uint8))
    assert not (tmp_path / "x.mp4").exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 5000, b"not a video at all " * 100])
def test_bad_video_files(tmp_path, content):
    path = tmp_path / "bad.mp4"
    path.write_bytes(content)
    with pytest.raises(InputError, match="bad.mp4"):
        probe_video(path)


def test_truncated_video(tmp_path):
    clip = make_clip(tmp_path / "t.mp4", seconds=1, audio=False, extra=["-movflags", "+faststart"])
    data = clip.read_bytes()
    clip.write_bytes(data[:1500])
    with pytest.raises(InputError, match="t.mp4"):
        list(VideoReader(clip))


@pytest.mark.data
@pytest.mark.parametrize("name,frames,fps,size,audio", [
    ("bikes.mp4", 250, Fraction(25), (640, 272), None),
    ("bigbuckbunny.mp4", 132, Fraction(25), (1280, 720), "5.1"),
    ("carphone_pristine.mp4", 120, Fraction(30000, 1001), (176, 144), None),
])
def test_real_clips_probe_and_decode(datasets, name, frames, fps, size, audio):
    path = datasets / "video" / name
    info = probe_video(path)
    assert (info.frame_count, info.fps, (info.width, info.height)) == (frames, fps, size)
    assert info.audio_channels == audio
    n = sum(1 for f in VideoReader(path) if f.shape == (size[1], size[0], 3))
    assert n == frames


@pytest.mark.data
@pytest.mark.slow
def test_real_clip_keeps_its_51_audio(datasets, tmp_path):
    src = datasets / "video" / "bigbuckbunny.mp4"
    out = process_file(src, tmp_path / "bbb.mp4", Restorer.from_id("jpeg-identity"), RunOptions(crf=28))
    info = probe_video(out)
    assert info.frame_count == 132 and info.fps == Fraction(25)
    assert info.audio_codec == "aac" and info.audio_channels == "5.1"
    # the audio was copied, not re-encoded: its packets are byte-identical
    from restore_app.core.io.video import ffmpeg_exe

    def audio_md5(p):
        r = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(p), "-map", "0:a:0", "-c", "copy",
                            "-f", "md5", "-"], capture_output=True, check=True)
        return r.stdout.strip()

    assert audio_md5(src) == audio_md5(out)
