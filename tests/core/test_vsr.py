"""Video super-resolution networks and streaming over clips in bounded chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_app.core.archs.brcn import BRCN
from restore_app.core.archs.vsr_net import RecurrentVSR
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import LoadedModel, parse_manifest


def _clip_restorer(module, channels, clip_length=4, context=2, tile=0):
    manifest = parse_manifest({"id": "clip-test", "task": "vsr", "name": "t", "architecture": "identity",
                               "input": "clip", "channels": channels, "scale": 2, "overlap": 8,
                               "clip_context": context, "license": "MIT", "training_data": "none"})
    return Restorer(LoadedModel(manifest, module), Engine(EngineConfig(tile=tile, clip_length=clip_length)))


class _Recorder(torch.nn.Module):
    """Upscales by 2 (nearest) and records how many frames each call saw."""

    def __init__(self):
        super().__init__()
        self.lengths = []

    def forward(self, x):
        self.lengths.append(x.shape[1])
        b, t, c, h, w = x.shape
        up = torch.nn.functional.interpolate(x.reshape(b * t, c, h, w), scale_factor=2, mode="nearest")
        return up.reshape(b, t, c, 2 * h, 2 * w)


def test_networks_shapes_and_ablation():
    torch.manual_seed(0)
    x = torch.rand(2, 5, 1, 12, 10)
    full, ff = BRCN(scale=2), BRCN(scale=2, recurrent=False, conditional=False)
    assert full(x).shape == ff(x).shape == (2, 5, 1, 24, 20)
    assert sum(p.numel() for p in ff.parameters()) < sum(p.numel() for p in full.parameters())
    # the ablation treats frames independently: changing frame 0 leaves frame 3 alone
    y = x.clone()
    y[:, 0] += 0.5
    with torch.no_grad():
        assert torch.allclose(ff(x)[:, 3], ff(y)[:, 3])
        assert not torch.allclose(full(x)[:, 3], full(y)[:, 3])  # the recurrence carries it forward
    net = RecurrentVSR(width=16, blocks=1, scale=4)
    assert net(torch.rand(1, 3, 3, 8, 8)).shape == (1, 3, 3, 32, 32)


def test_untrained_improved_model_is_bicubic():
    from restore_app.core.resize import imresize

    net = RecurrentVSR(width=16, blocks=1, scale=2).eval()
    x = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        base = imresize(x.reshape(3, 3, 16, 16), 2.0).reshape(1, 3, 3, 32, 32)
        assert (net(x) - base).abs().max() < 0.05


@pytest.mark.parametrize("n", [1, 3, 4, 9, 10])
def test_streaming_chunks_are_bounded_and_ordered(n):
    rec = _Recorder()
    r = _clip_restorer(rec, [3], clip_length=4, context=2)
    frames = [np.full((6, 8, 3), 10 * i, np.uint8) for i in range(n)]
    out = list(r.restore_frames(iter(frames)))
    assert len(out) == n
    assert [int(o[0, 0, 0]) for o in out] == [10 * i for i in range(n)]
    assert all(o.shape == (12, 16, 3) for o in out)
    assert max(rec.lengths) <= 4 + 2 * 2  # never more than a chunk and its context


def test_streaming_equals_whole_sequence_with_enough_context():
    torch.manual_seed(0)
    net = RecurrentVSR(width=8, blocks=1, scale=2).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (10, 12, 3), dtype=np.uint8) for _ in range(7)]
    whole = list(_clip_restorer(net, [3], clip_length=7, context=0).restore_frames(frames))
    chunked = list(_clip_restorer(net, [3], clip_length=2, context=7).restore_frames(frames))
    for a, b in zip(whole, chunked, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_luma_clip_model_on_colour_frames_and_tiling():
    torch.manual_seed(0)
    net = BRCN(scale=2).eval()
    frames = [np.random.default_rng(i).integers(0, 256, (70, 80, 3), dtype=np.uint8) for i in range(3)]
    whole = list(_clip_restorer(net, [1], tile=0).restore_frames(frames))
    tiled = list(_clip_restorer(net, [1], tile=32).restore_frames(frames))
    assert whole[0].shape == (140, 160, 3)
    assert max(np.abs(a.astype(int) - b.astype(int)).max() for a, b in zip(whole, tiled, strict=True)) <= 1


def test_synthetic_clips_move_and_shrink(coffee):
    from restore_app.core.io import to_float
    from restore_app.core.train.vsr import VSRTrainConfig, synth_clip

    cfg = VSRTrainConfig(frames=6, max_shift=2.0, max_zoom=0.0, max_rotate=0.0, blur_prob=0.0, noise_max=0.0)
    lr, hr = synth_clip(to_float(coffee), np.random.default_rng(3), cfg, 16)
    assert lr.shape == (6, 16, 16, 3) and hr.shape == (6, 64, 64, 3)
    assert np.allclose(lr * 255, np.rint(lr * 255), atol=1e-3)  # 8-bit low-resolution frames
    assert not np.allclose(hr[0], hr[-1])  # the camera moved


def test_brcn_starts_from_its_trained_ablation(tmp_path):
    from safetensors.torch import save_file

    from restore_app.core.train.vsr import VSRTrainConfig, build

    torch.manual_seed(0)
    ff = BRCN(scale=2, recurrent=False, conditional=False)
    save_file({k: v.contiguous() for k, v in ff.state_dict().items()}, str(tmp_path / "ff.safetensors"))
    net = build(VSRTrainConfig(arch="brcn", scale=2, init_ablation=tmp_path / "ff.safetensors"))
    x = torch.rand(1, 4, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ff(x))  # identical until training moves the new connections


def test_folder_of_frames_to_video_and_to_frames(tmp_path, coffee):
    from restore_app.core.io import probe_video, read_image, write_image
    from restore_app.core.pipeline import RunOptions, process_file

    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(12):  # natural order: 2 before 10
        write_image(frames / f"f{i}.png", np.ascontiguousarray(np.roll(coffee, 5 * i, axis=1)[:48, :64]))
    r = Restorer.from_id("bicubic-x2")
    out = process_file(frames, tmp_path / "out.mp4", r, RunOptions(fps=12))
    info = probe_video(out)
    assert (info.width, info.height, info.frame_count, float(info.fps)) == (128, 96, 12, 12.0)
    folder = process_file(frames, tmp_path / "sr", r)
    assert sorted(p.name for p in folder.iterdir())[:3] == ["f0.png", "f1.png", "f10.png"]
    assert read_image(folder / "f3.png").shape == (96, 128, 3)
    with pytest.raises(Exception, match="must not be inside"):
        process_file(frames, frames / "sr", r)
