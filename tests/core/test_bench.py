"""The bench's anchors (run only where the optional `bench` extra is installed) and its table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_app.core.bench import BenchRow, bench_demosaic, bench_jpeg, format_table
from restore_app.core.degrade import mosaic
from restore_app.core.io import to_float, write_image
from restore_app.core.metrics import psnr


def test_table_and_missing_anchor_note():
    rows = [BenchRow("a", {"X σ=0": {"psnr": 30.0, "ssim": 0.9}}, 0.5, 1234),
            BenchRow("b", note="not run: x is not installed")]
    table = format_table(rows)
    assert "| a | 30.00 / 0.9000 | 0.500 | 1,234 |" in table
    assert "not run: x is not installed" in table


def test_bench_runs_models_on_the_same_images(tmp_path, coffee):
    write_image(tmp_path / "a.png", coffee[:200, :200])
    logs = []
    rows = bench_demosaic(["bilinear-demosaic", "opencv-vng-demosaic"], {"tiny": tmp_path}, sigmas=(0, 10),
                          anchors=False, log=logs.append)
    assert [r.method for r in rows] == ["bilinear-demosaic", "opencv-vng-demosaic"]
    assert set(rows[0].cells) == {"tiny σ=0", "tiny σ=10"}
    assert rows[0].cells["tiny σ=10"]["psnr"] < rows[0].cells["tiny σ=0"]["psnr"]
    assert rows[0].seconds_per_mp > 0 and len(logs) == 4


def test_bench_warms_each_model_up_untimed(tmp_path, coffee):
    """Each model first runs once, untimed, on the first image: the timed runs then see every image
    once per setting."""
    from restore_app.core.bench import run_bench
    from restore_app.core.evaluate import DemosaicProtocol
    from restore_app.core.pipeline import Restorer

    for name in ("a.png", "b.png"):
        write_image(tmp_path / name, coffee[:96, :128])
    restorer = Restorer.from_id("bilinear-demosaic")
    shapes = []
    run = restorer.restore_image

    def counted(image, **kwargs):
        shapes.append(image.shape)
        return run(image, **kwargs)

    restorer.restore_image = counted
    rows = run_bench("demosaic", [("bilinear", lambda: restorer)], {"tiny": tmp_path},
                     [("σ=0", DemosaicProtocol(sigma=0.0))], log=lambda s: None)
    assert len(shapes) == 3  # one warm-up and the two timed images
    assert rows[0].cells["tiny σ=0"]["psnr"] > 20


def test_gharbi_anchor_demosaics(coffee):
    pytest.importorskip("demosaicnet")
    from restore_app.core.bench import GharbiReleased

    net = GharbiReleased().eval()
    rgb = to_float(coffee[:130, :151])  # odd sizes exercise the shift and padding
    with torch.no_grad():
        out = net(torch.from_numpy(mosaic(rgb, "RGGB"))[None, None])[0].permute(1, 2, 0).numpy()
    assert out.shape == rgb.shape
    assert psnr(rgb[10:-10, 10:-10], np.clip(out, 0, 1)[10:-10, 10:-10]) > 33  # far above bilinear


def test_colour_anchors(coffee):
    pytest.importorskip("colour_demosaicing")
    from restore_app.core.bench import ColourDemosaic

    rgb = to_float(coffee[:100, :120])
    for method in ("malvar", "menon"):
        out = ColourDemosaic(method)(torch.from_numpy(mosaic(rgb, "RGGB"))[None, None])[0].permute(1, 2, 0).numpy()
        assert psnr(rgb[8:-8, 8:-8], np.clip(out, 0, 1)[8:-8, 8:-8]) > 28


def test_jpeg_bench_input_versus_model(tmp_path, coffee):
    write_image(tmp_path / "a.png", coffee[:160, :200])
    rows = bench_jpeg(["jpeg-identity"], {"tiny": tmp_path}, qualities=(10, 90), log=lambda s: None)
    cells = rows[0].cells
    assert set(cells) == {"tiny q=10", "tiny q=90"} and cells["tiny q=90"]["psnr"] > cells["tiny q=10"]["psnr"]
    assert rows[0].parameters == 0


def test_batch_throughput_bench(tmp_path):
    from restore_app.core.bench import bench_batch, format_throughput

    rows = bench_batch("jpeg-identity", tmp_path, count=6, size=48, loop_sample=1, log=lambda s: None)
    assert [r.images for r in rows] == [6, 1] and all(r.per_second > 0 for r in rows)
    assert len(list((tmp_path / "batch").glob("*.png"))) == 6
    assert "batch / loop" in format_throughput(rows)
