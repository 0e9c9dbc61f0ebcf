"""The engine: devices, precisions, tiling that equals whole-image inference, progress and cancel."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch import nn

from restore_app.core.engine import (
    Engine,
    EngineConfig,
    autocast,
    configure_cpu_threads,
    cpu_has_fast_bf16,
    resolve_precision,
    select_device,
    tiled_apply,
)
from restore_app.core.errors import Cancelled, InputError
from restore_app.core.jobs import CancelToken


def _convnet(layers=5, scale=1):
    torch.manual_seed(0)
    mods = []
    for i in range(layers):
        out = 8 if i < layers - 1 else 3 * scale * scale
        mods += [nn.Conv2d(3 if i == 0 else 8, out, 3, padding=1, padding_mode="reflect")]
        if i < layers - 1:
            mods.append(nn.ReLU())
    if scale > 1:
        mods.append(nn.PixelShuffle(scale))
    return nn.Sequential(*mods).eval()


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    auto = select_device("auto")
    assert auto.type in ("cuda", "mps", "cpu")
    if not torch.cuda.is_available():
        assert auto.type != "cuda"
        with pytest.raises(InputError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(InputError, match="device must be one of"):
        select_device("tpu")


def test_resolve_precision():
    cpu = torch.device("cpu")
    with pytest.raises(InputError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", cpu, ("fp32", "fp16"))
    with pytest.raises(InputError, match="this model supports fp32"):
        resolve_precision("bf16", cpu, ("fp32",))
    assert resolve_precision("auto", cpu, ("fp32",)) == "fp32"
    assert resolve_precision("auto", cpu, ("fp32", "bf16")) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert resolve_precision("auto", torch.device("cuda"), ("fp32", "fp16")) == "fp16"
    with pytest.raises(InputError, match="precision must be one of"):
        resolve_precision("int8", cpu)
    # an int8 model runs as it is, whatever float precision is asked for
    for requested in ("auto", "fp32", "bf16"):
        assert resolve_precision(requested, cpu, ("int8",)) == "int8"


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags from Linux's /proc/cpuinfo")
def test_fast_bf16_means_amx():
    """bf16 is chosen on the CPU exactly where it has AMX (AVX-512 BF16 alone made it slower than fp32)."""
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags |= set(line.split(":", 1)[1].split())
    assert cpu_has_fast_bf16() == ({"amx_bf16", "amx_tile"} <= flags and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _blas_threads() -> list[int]:
    np.ones((64, 64)) @ np.ones((64, 64))  # NumPy's BLAS is loaded and used
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_cpu_threads_give_blas_one_thread(monkeypatch):
    """OpenBLAS's spinning workers took the cores from PyTorch's: the engine gives BLAS one thread."""
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        with threadpool_limits(limits=2, user_api="blas"):  # as NumPy starts on a multi-core machine
            assert configure_cpu_threads(1) == 1
            assert _blas_threads() and set(_blas_threads()) == {1}
            assert os.environ["OPENBLAS_NUM_THREADS"] == "1"  # for BLAS libraries loaded later
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # the user's choice is kept
        with threadpool_limits(limits=2, user_api="blas"):
            start = _blas_threads()
            configure_cpu_threads(1)
            assert _blas_threads() == start
    finally:
        torch.set_num_threads(before)


def test_bf16_autocast_runs_convs_in_bf16():
    net = _convnet(2)
    with torch.inference_mode(), autocast(torch.device("cpu"), "bf16"):
        y = net(torch.rand(1, 3, 16, 16))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("size,tile,overlap", [((1, 3, 100, 130), 32, 8), ((2, 3, 77, 61), 48, 12),
                                               ((1, 3, 64, 64), 64, 8), ((1, 3, 65, 200), 40, 16)])
def test_tiled_equals_untiled_when_overlap_covers_receptive_field(size, tile, overlap):
    net = _convnet(5)  # receptive-field radius 5 ≤ 3/4 of the overlap
    x = torch.rand(*size)
    with torch.no_grad():
        full = net(x)
        tiled = tiled_apply(net, x, tile=tile, overlap=overlap)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)


def test_tiled_with_scale_and_alignment():
    net = _convnet(3, scale=2)
    x = torch.rand(1, 3, 90, 118)
    seen = []

    def fn(t):
        seen.append(t.shape[-2:])
        return net(t)

    with torch.no_grad():
        tiled = tiled_apply(fn, x, tile=32, overlap=6, scale=2, align=2)
        full = net(x)
    assert tiled.shape == (1, 3, 180, 236)
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=0)
    assert len(seen) > 4


def test_tiles_start_on_the_alignment():
    starts = []
    x = torch.arange(97 * 101, dtype=torch.float32).reshape(1, 1, 97, 101)

    def fn(t):
        starts.append(int(t[0, 0, 0, 0]))
        return t

    tiled_apply(fn, x, tile=32, overlap=6, align=2)
    for s in starts:
        assert (s // 101) % 2 == 0 and (s % 101) % 2 == 0


def test_large_receptive_field_shows_no_seams():
    """With too little overlap tiles differ from the whole image, but cross-fading keeps it small."""
    net = _convnet(12)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        err = (tiled_apply(net, x, tile=48, overlap=8) - net(x)).abs().max()
    assert err < 1 / 255


def test_progress_and_cancel():
    calls = []
    x = torch.rand(1, 3, 100, 100)
    tiled_apply(lambda t: t, x, tile=40, overlap=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 9) for i in range(1, 10)]

    token = CancelToken()
    ran = []

    def fn(t):
        ran.append(1)
        token.cancel()
        return t

    with pytest.raises(Cancelled):
        tiled_apply(fn, x, tile=40, overlap=4, cancel=token)
    assert len(ran) == 1  # stopped at the next tile


def test_engine_run_returns_cpu_float32_and_frames_keep_order():
    engine = Engine(EngineConfig(device="cpu", tile=64, batch=3))
    net = engine.prepare(_convnet(3))
    y = engine.run(net, torch.rand(1, 3, 150, 90), overlap=8)
    assert y.dtype == torch.float32 and y.device.type == "cpu" and y.shape == (1, 3, 150, 90)
    batches = []

    def fn(batch):
        batches.append(len(batch))
        return torch.stack(batch) * 2

    frames = (torch.full((3, 4, 4), float(i)) for i in range(7))  # a lazy stream, as from a decoder
    out = list(engine.run_frames(fn, frames))
    assert batches == [3, 3, 1]
    assert [float(o[0, 0, 0]) for o in out] == [2.0 * i for i in range(7)]
    token = CancelToken()
    stream = engine.run_frames(fn, frames=(torch.zeros(3, 4, 4) for _ in range(9)), cancel=token)
    next(stream)
    token.cancel()
    next(stream), next(stream)  # the rest of the batch already computed
    with pytest.raises(Cancelled):
        next(stream)


def test_a_models_max_tile_caps_the_engine_tile():
    """A model's ``max_tile`` caps the engine's tile (video models hold a chunk of frames per tile),
    also when the engine runs whole images; without it the engine's own tile applies."""
    x = torch.rand(1, 3, 200, 120)
    for tile, max_tile, expected in ((1024, 64, 4 * 2), (0, 64, 4 * 2), (1024, 0, 1), (64, 512, 4 * 2)):
        calls = []
        Engine(EngineConfig(device="cpu", tile=tile)).run(lambda t: t, x, max_tile=max_tile,
                                                          progress=lambda d, n, c=calls: c.append(n))
        assert calls[-1] == expected, (tile, max_tile)


def test_engine_config_validation():
    with pytest.raises(InputError, match="tile must be 0"):
        EngineConfig(tile=8)
    with pytest.raises(InputError, match="precision"):
        EngineConfig(precision="fp64")
    with pytest.raises(InputError, match="batch"):
        EngineConfig(batch=0)
