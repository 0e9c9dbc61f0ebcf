"""The joint demosaicing network: shapes, noise conditioning, patterns, bf16, starting as bilinear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_app.core.archs.bilinear_demosaic import BilinearDemosaic
from restore_app.core.archs.demosaic_net import DemosaicNet
from restore_app.core.errors import InputError
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import LoadedModel, parse_manifest
from restore_app.core.train.demosaic import DemosaicTrainConfig, manifest_fields
from tests.helpers import smooth_rgb


def test_shapes_and_bad_input():
    net = DemosaicNet(width=16, blocks=2).eval()
    assert net(torch.rand(3, 2, 32, 48)).shape == (3, 3, 32, 48)
    with pytest.raises(InputError, match="must have 2 channels"):
        net(torch.rand(1, 1, 32, 32))


def test_untrained_network_is_bilinear():
    """The correction paths start at zero: a new network is bilinear demosaicing (to within the
    tiny initial tail)."""
    torch.manual_seed(0)
    net = DemosaicNet(width=16, blocks=2).eval()
    x = torch.rand(1, 2, 32, 32)
    with torch.no_grad():
        diff = (net(x) - BilinearDemosaic()(x[:, :1])).abs().max()
    assert diff < 0.02


def test_noise_map_reaches_the_output():
    torch.manual_seed(0)
    net = DemosaicNet(width=16, blocks=1)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    mosaic = torch.rand(1, 1, 32, 32)
    low = net(torch.cat([mosaic, torch.zeros_like(mosaic)], 1))
    high = net(torch.cat([mosaic, torch.full_like(mosaic, 0.08)], 1))
    assert (low - high).abs().max() > 1e-4


@pytest.mark.parametrize("pattern", ["RGGB", "BGGR", "GRBG", "GBRG"])
def test_every_pattern_and_sigma_estimation_through_the_restorer(pattern):
    cfg = DemosaicTrainConfig(width=16, blocks=1)
    manifest = parse_manifest({**manifest_fields(cfg), "id": "tiny-dm"})
    restorer = Restorer(LoadedModel(manifest, DemosaicNet(width=16, blocks=1)))
    from restore_app.core.degrade import mosaic

    m = mosaic(smooth_rgb(40, 56), pattern)
    out = restorer.restore_image(m, pattern=pattern)  # σ not given: estimated
    assert out.shape == (40, 56, 3) and np.isfinite(out).all()
    given = restorer.restore_image(m, pattern=pattern, sigma=np.full(m.shape, 0.01, np.float32))
    assert given.shape == out.shape
    with pytest.raises(InputError, match="noise map of shape"):
        restorer.restore_image(m, pattern=pattern, sigma=np.zeros((4, 4), np.float32))


def test_bf16_close_to_fp32():
    torch.manual_seed(0)
    net = DemosaicNet(width=32, blocks=2).eval()
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.rand(1, 2, 64, 64)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    assert (ref - low).abs().max() < 0.02


int8 = pytest.importorskip("restore_app.core.int8")
needs_int8 = pytest.mark.skipif(not int8.available(), reason="this PyTorch has no oneDNN quantised engine")


def _noisy_input(shape, sigma, seed):
    """A mosaic of a smooth image with Gaussian noise of ``sigma``, and its noise map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(shape, generator=g), 5, stride=1, padding=2,
                                       count_include_pad=False)
    return torch.cat([x + sigma * torch.randn(shape, generator=g), torch.full(shape, sigma)], dim=1)


def _trained_pair():
    """A float DemosaicNet with a non-trivial correction, and the int8 network started from it, its
    quantiser ranges set by a few batches in training mode."""
    from restore_app.core.archs.demosaic_net import DemosaicNetInt8

    torch.manual_seed(1)
    net = DemosaicNet(width=16, blocks=2)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    q = DemosaicNetInt8(width=16, blocks=2)
    q.load_float_state(net.state_dict())
    q.train()
    with torch.no_grad():
        for seed in range(4):
            q(_noisy_input((2, 1, 48, 48), 0.04 * (seed % 2), seed))
    return net.eval(), q.eval()


@needs_int8
def test_int8_network_follows_the_float_one_and_runs_int8_kernels():
    net, q = _trained_pair()
    x = _noisy_input((1, 1, 50, 66), 0.02, 9)
    quarter = torch.cat([torch.nn.functional.pixel_unshuffle(x[:, :1], 2),
                         torch.nn.functional.avg_pool2d(x[:, 1:], 2)], dim=1)  # what the stack takes
    with torch.inference_mode():
        ref, out = net(x), q(x)
        sim = q.qat.train(False)(quarter)
        base = net.bilinear(x[:, :1])
    assert out.shape == ref.shape == (1, 3, 50, 66)
    err = float(((out - ref) ** 2).mean())
    corr = float(((ref - base) ** 2).mean())
    assert 0 < err < 0.01 * corr  # the int8 output differs, by far less than the correction itself
    graph = q.int8_graph()
    with torch.no_grad():  # the fake-quantised graph that trains is what the int8 graph computes
        real = graph(quarter.contiguous(memory_format=torch.channels_last))
    assert real.dtype == torch.float32
    assert float((sim - real).abs().max()) < 4 * float(sim.abs().max()) / 255  # a few 8-bit steps of rounding
    # the first convolution reads the mosaic in float; the last reads 8-bit activations and gives fp32
    assert type(graph.get_submodule("head.0.0")) is torch.nn.Conv2d and isinstance(graph.tail, int8.Int8InputConv2d)
    kinds = {type(m).__name__ for m in graph.modules()}
    assert {"ConvAdd2d", "ConvReLU2d"} <= kinds  # the residual blocks: fused int8 conv + add, conv + ReLU
    # the float full-resolution stage is the float network's
    assert torch.equal(q.refine.weight, net.refine.weight) and torch.equal(q.out.weight, net.out.weight)


@needs_int8
def test_int8_training_starts_from_float_weights_and_exports(tmp_path, coffee):
    """``restore train demosaic --int8``: starts from a float model's weights, trains, and exports a
    loadable int8 model that gives what the run's network gives."""
    from safetensors.torch import load_file, save_file

    from restore_app.core.io import write_image
    from restore_app.core.registry import Registry
    from restore_app.core.train.demosaic import DemosaicTask
    from restore_app.core.train.loop import export_model, train

    data = tmp_path / "data"
    data.mkdir()
    for i in range(3):
        write_image(data / f"{i}.png", np.ascontiguousarray(np.roll(coffee, 50 * i, axis=1)[:128, :160]))
    net, _ = _trained_pair()
    save_file(net.state_dict(), str(tmp_path / "float.safetensors"))
    cfg = DemosaicTrainConfig(out=tmp_path / "run", data=(data,), iterations=3, batch=2, patch=32, lr=1e-4, warmup=1,
                              log_every=1, val_every=3, val_holdout=1, width=16, blocks=2, device="cpu", int8=True,
                              init=tmp_path / "float.safetensors", loss="mix", calibrate=2)
    assert cfg.precision == "fp32"
    with pytest.raises(InputError):
        DemosaicTrainConfig(int8=True, precision="bf16")
    with pytest.raises(InputError, match="--int8"):
        DemosaicTrainConfig(calibrate=2)
    task = DemosaicTask(cfg)
    start = task.init_state(load_file(str(cfg.init)))  # float weights, ranges calibrated on 2 batches
    ranges = {k: v for k, v in start.items() if k.startswith("qat.activation_post_process_") and k.endswith("scale")}
    assert ranges and all(float(v) > 0 for v in ranges.values())
    result = train(task, cfg, log=lambda _: None)
    assert result.iterations == 3 and np.isfinite(result.best_score)
    trained = load_file(str(cfg.out / "last.safetensors"))
    assert all(torch.equal(trained[k], v) for k, v in ranges.items())  # calibrated ranges are kept in training
    assert not torch.equal(trained["qat.body.0.conv1.weight"], start["qat.body.0.conv1.weight"])  # weights learn
    fields = manifest_fields(cfg)
    assert fields["id"] == "restore-dm-int8" and fields["architecture"] == "demosaic_net_int8"
    assert fields["precisions"] == ["int8"] and fields["int8_of"] == "restore-dm"
    from restore_app.core.registry import default_registry

    shipped = default_registry().get("restore-dm-int8")  # what an export writes is what ships
    assert (fields["description"], tuple(fields["ensemble"]), fields["int8_of"], fields["keep_samples"],
            fields["stand_in_with_bf16"]) == \
        (shipped.description, shipped.ensemble, shipped.int8_of, shipped.keep_samples, shipped.stand_in_with_bf16)
    folder = export_model(cfg.out / "best.safetensors", tmp_path / "zoo" / "tiny-dm-int8",
                          {**fields, "id": "tiny-dm-int8", "params": {"width": 16, "blocks": 2}})
    model = Registry(paths=[(folder.parent, "test")], entry_points=False).load("tiny-dm-int8").module
    task.model.load_state_dict(load_file(str(cfg.out / "best.safetensors")))
    x = _noisy_input((1, 1, 40, 48), 0.03, 2)
    with torch.inference_mode():
        # the same result (the trained network's float layers are channels-last: rounding may differ)
        assert torch.allclose(model(x), task.model.eval()(x), atol=1e-6)


def test_export_writes_the_shipped_float_manifest():
    """What ``restore train demosaic`` exports is what ships, the self-ensembles chosen on validation
    (4 passes by default) included."""
    from restore_app.core.registry import default_registry

    shipped = default_registry().get("restore-dm")
    fields = manifest_fields(DemosaicTrainConfig())
    assert (fields["description"], tuple(fields["ensemble"]), tuple(fields["ensemble_full"]), fields["keep_samples"]) \
        == (shipped.description, shipped.ensemble, shipped.ensemble_full, shipped.keep_samples)
    assert len(shipped.ensemble) == 3
