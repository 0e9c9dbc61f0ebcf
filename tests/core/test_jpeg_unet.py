"""The JPEG network: any size, starts as the identity, grey as R = G = B; the JPEG training task."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from restore_app.core.archs.jpeg_unet import JpegUNet
from restore_app.core.errors import InputError
from restore_app.core.io import write_image
from restore_app.core.registry import default_registry
from restore_app.core.train.jpeg import JpegTask, JpegTrainConfig


def test_any_size_and_identity_start():
    torch.manual_seed(0)
    net = JpegUNet(widths=(16, 32, 32), blocks=(1, 1, 1)).eval()
    for h, w in ((8, 8), (37, 53), (64, 48)):
        x = torch.rand(2, 3, h, w)
        with torch.no_grad():
            y = net(x)
        assert y.shape == x.shape
        assert (y - x).abs().max() < 0.02  # the correction starts near zero
    with pytest.raises(InputError, match="3 channels"):
        net(torch.rand(1, 1, 16, 16))


def test_default_size_fits_the_budget():
    params = sum(p.numel() for p in JpegUNet().parameters())
    assert params <= 2_000_000


@pytest.fixture
def jpeg_task(tmp_path, coffee, astronaut):
    d = tmp_path / "imgs"
    d.mkdir()
    for i, img in enumerate((coffee, astronaut, coffee[::-1])):
        write_image(d / f"{i}.png", np.ascontiguousarray(img[:200, :240]))
    cfg = JpegTrainConfig(data=(d,), val_holdout=1, patch=64, widths="16,16,16", blocks="1,1,1",
                          grey_prob=0.5, double_prob=0.5)
    return JpegTask(cfg)


def test_batches_are_jpeg_pairs(jpeg_task):
    x, y = jpeg_task.batch(np.random.default_rng(0), 12)
    assert x.shape == y.shape == (12, 3, 64, 64)
    assert x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) <= 1
    err = (x - y).abs().mean(dim=(1, 2, 3))
    assert (err > 0).all()  # every input was compressed
    grey = [(t[0] == t[1]).all() and (t[1] == t[2]).all() for t in y]
    assert 0 < sum(bool(g) for g in grey) < 12  # some grey, some colour
    # target values are 8-bit levels
    assert torch.allclose(y * 255, (y * 255).round(), atol=1e-3)


def test_validation_scores(jpeg_task):
    scores = jpeg_task.validate(jpeg_task.model, torch.device("cpu"), "fp32")
    assert set(scores) == {"psnr_rgb_q10", "psnr_rgb_q30", "psnr_rgb_q90", "psnr_grey_q10", "score"}
    assert scores["psnr_rgb_q90"] > scores["psnr_rgb_q10"]


def test_grey_specialist_trains_and_validates_on_grey(tmp_path, jpeg_task):
    from restore_app.core.train.jpeg import manifest_fields

    cfg = JpegTrainConfig(data=jpeg_task.cfg.data, val_holdout=1, patch=64, widths="16,16,16",
                          blocks="1,1,1", grey_prob=1.0)
    task = JpegTask(cfg)
    _, y = task.batch(np.random.default_rng(0), 6)
    assert bool((y[:, 0] == y[:, 1]).all() and (y[:, 1] == y[:, 2]).all())  # every target grey
    scores = task.validate(task.model, torch.device("cpu"), "fp32")
    assert set(scores) == {"psnr_grey_q10", "psnr_grey_q30", "psnr_grey_q90", "score"}
    assert manifest_fields(cfg)["id"] == "restore-jpeg-grey"
    assert manifest_fields(jpeg_task.cfg)["id"] == "restore-jpeg"
    # exported as the one-channel network, equal on grey input to the colour one averaged over RGB
    from safetensors.torch import save_file

    from restore_app.core.registry import Registry, read_manifest

    run = tmp_path / "grey-run"
    run.mkdir()
    with torch.no_grad():
        task.model.tail.weight.normal_(std=0.05)  # a correction that differs between R, G and B
    save_file(task.model.state_dict(), str(run / "best.safetensors"))
    folder = task.export(run, tmp_path / "zoo" / "my-grey")
    manifest = read_manifest(folder)
    assert manifest.channels == (1,) and manifest.params["channels"] == 1
    grey = Registry(paths=[(tmp_path / "zoo", "test")], entry_points=False).load("my-grey").module
    x = torch.rand(1, 1, 40, 48)
    with torch.no_grad():
        want = task.model(x.expand(1, 3, -1, -1)).mean(1, keepdim=True)
        assert torch.allclose(grey(x), want, atol=1e-5)
    # and the shipped one-channel weights can be trained further: ``--init`` expands them back to
    # three channels without changing the output on grey input
    from safetensors.torch import load_file

    again = JpegTask(cfg)
    again.model.load_state_dict(again.init_state(load_file(str(folder / "weights.safetensors"))))
    with torch.no_grad():
        assert torch.allclose(again.model(x.expand(1, 3, -1, -1)), grey(x).expand(1, 3, -1, -1), atol=1e-5)
    colour = task.model.state_dict()
    assert again.init_state(colour) is colour  # three-channel weights are used as they are


def test_training_through_the_constraint(tmp_path, jpeg_task):
    """``train_constraint``: batches carry each patch's quantisation intervals (from the quality it was
    last compressed at), the loss sees the constrained output, and a short run trains and validates."""
    from restore_app.core.quantization import block_dct, ijg_table
    from restore_app.core.train.loop import train

    cfg = JpegTrainConfig(data=jpeg_task.cfg.data, val_holdout=1, patch=64, widths="16,16,16",
                          blocks="1,1,1", grey_prob=0.5, double_prob=0.5, train_constraint=True,
                          q_min=20, q_max=20, out=tmp_path / "run", iterations=4, batch=3, val_every=4,
                          log_every=2, warmup=1, precision="fp32", device="cpu")
    task = JpegTask(cfg)
    x, y, lo, hi = task.batch(np.random.default_rng(1), 3)
    assert lo.shape == hi.shape == (3, 8, 8, 8, 8)
    # the decoded input's own coefficients lie inside the (narrowed) intervals of quality 20
    coefs = torch.from_numpy(np.stack([block_dct(np.rint(t.numpy().transpose(1, 2, 0) @ [76.245, 149.685, 29.07]))
                                       for t in x]))
    q = torch.from_numpy(ijg_table(20)).float()
    finite = torch.isfinite(lo)
    assert finite.float().mean() > 0.5
    assert bool(((coefs - lo)[finite] >= -1.5).all() and ((hi - coefs)[finite] >= -1.5).all())
    assert torch.allclose((hi - lo)[finite], (0.7 * q).expand_as(hi)[finite])
    # the loss sees the constrained output (of a network whose correction is not near zero)
    with torch.no_grad():
        task.model.tail.weight.normal_(std=0.05)
    pred = task.predict(task.model, x, lo, hi)
    assert pred.shape == x.shape and not torch.equal(pred, task.model(x))
    result = train(task, cfg, log=lambda _: None)
    assert result.iterations == 4 and np.isfinite(result.best_score)


def test_distillation_targets_are_the_teachers_ensemble(tmp_path, jpeg_task):
    """``distill``: the teacher's self-ensemble output (through the constraint) joins the targets, the
    loss weighs it against the clean patch, and a short run trains a student with it."""
    from safetensors.torch import save_file

    from restore_app.core.losses import LOSSES
    from restore_app.core.pipeline import ensemble_transforms, with_ensemble
    from restore_app.core.quantization import clip_tensor
    from restore_app.core.train.loop import train

    teacher = JpegUNet(widths=(16, 16, 16), blocks=(1, 1, 1), channels=1)
    with torch.no_grad():
        teacher.tail.weight.normal_(std=0.05)  # a teacher whose passes differ
    save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    with pytest.raises(InputError):
        JpegTrainConfig(distill=tmp_path / "teacher.safetensors", distill_ensemble="fliplr,spin")
    with pytest.raises(InputError):
        JpegTrainConfig(distill_weight=1.5)
    cfg = JpegTrainConfig(data=jpeg_task.cfg.data, val_holdout=1, patch=64, widths="16,16,16", blocks="1,1,1",
                          grey_prob=1.0, train_constraint=True, q_min=20, q_max=20,
                          distill=tmp_path / "teacher.safetensors", distill_weight=0.25,
                          distill_ensemble="fliplr,flipud,rot180", out=tmp_path / "run", iterations=3, batch=2,
                          val_every=3, log_every=1, warmup=1, precision="fp32", device="cpu")
    task = JpegTask(cfg)
    x, y, lo, hi = task.batch(np.random.default_rng(2), 2)
    assert x.shape == (2, 3, 64, 64) and y.shape == (2, 6, 64, 64)
    clean, taught = y[:, :3], y[:, 3:]
    assert torch.allclose(clean * 255, (clean * 255).round(), atol=1e-3)  # the clean patch, as before
    flips = with_ensemble(teacher.eval(), ensemble_transforms(["fliplr", "flipud", "rot180"]), align=8)
    with torch.no_grad():
        want = clip_tensor(flips(x[:, :1]), lo, hi).expand(-1, 3, -1, -1)
        single = clip_tensor(teacher(x[:, :1]), lo, hi).expand(-1, 3, -1, -1)
    assert torch.allclose(taught, want, atol=1e-5)
    assert not torch.allclose(taught, single, atol=1e-4)  # the ensemble, not one pass
    pred = task.predict(task.model, x, lo, hi)
    l1 = LOSSES["l1"]
    assert torch.isclose(task.loss(pred, y), 0.75 * l1(pred, clean) + 0.25 * l1(pred, taught))
    assert torch.isclose(task.loss(pred, clean), l1(pred, clean))  # without a teacher: the loss alone
    result = train(task, cfg, log=lambda _: None)
    assert result.iterations == 3 and np.isfinite(result.best_score)


int8 = pytest.importorskip("restore_app.core.int8")
needs_int8 = pytest.mark.skipif(not int8.available(), reason="this PyTorch has no oneDNN quantised engine")


def test_sub_pixel_up_is_the_transposed_convolution():
    from restore_app.core.archs.jpeg_unet import SubPixelUp

    torch.manual_seed(0)
    t = torch.nn.ConvTranspose2d(8, 5, 2, stride=2)
    x = torch.rand(2, 8, 5, 7)
    with torch.no_grad():
        assert torch.allclose(SubPixelUp.from_transpose(t)(x), t(x), atol=1e-6)


@needs_int8
@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor:UserWarning")  # torch.ao's deprecation notice
def test_channels_last_pixel_shuffle_is_pixel_shuffle():
    x = torch.rand(2, 12, 5, 7).contiguous(memory_format=torch.channels_last)
    for t in (x, torch.quantize_per_tensor(x, 0.01, 3, torch.quint8)):
        out = int8.pixel_shuffle_channels_last(t, 2)
        assert out.is_contiguous(memory_format=torch.channels_last)
        ref = torch.pixel_shuffle(t, 2)
        assert torch.equal(out.int_repr() if out.is_quantized else out, ref.int_repr() if ref.is_quantized else ref)


def _smooth(shape, seed=0):
    """Image-like input: blurred noise, whose activations resemble a photo's more than white noise's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    return torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)


def _trained_pair(channels=1):
    """A float JpegUNet with a non-trivial correction, and the int8 network started from it, its
    quantiser ranges set by a few batches in training mode."""
    from restore_app.core.archs.jpeg_unet import JpegUNetInt8

    torch.manual_seed(1)
    net = JpegUNet(widths=(16, 32, 32), blocks=(1, 1, 1), channels=channels)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    q = JpegUNetInt8(widths=(16, 32, 32), blocks=(1, 1, 1), channels=channels)
    q.load_float_state(net.state_dict())
    q.train()
    with torch.no_grad():
        for seed in range(4):
            q(_smooth((2, channels, 64, 64), seed))
    return net.eval(), q.eval()


@needs_int8
def test_int8_network_follows_the_float_one_and_runs_int8_kernels():
    net, q = _trained_pair()
    x = _smooth((1, 1, 70, 93), 9)  # not a multiple of 8
    with torch.inference_mode():
        ref, out = net(x), q(x)
        sim = q.qat(torch.nn.functional.pad(x, (0, 3, 0, 2), mode="reflect"))
    assert out.shape == x.shape
    err = float(((out - ref) ** 2).mean())
    corr = float(((ref - x) ** 2).mean())
    assert 0 < err < 0.01 * corr  # the int8 output differs, by far less than the correction itself
    # the fake-quantised graph that trains is what the int8 graph computes
    with torch.no_grad():  # the graph converted under inference mode serves outside it too
        real = q.int8_graph()(torch.nn.functional.pad(x, (0, 3, 0, 2), mode="reflect"))
    assert float(((sim - real) ** 2).mean()) < 0.1 * corr
    # the correction leaves the fp32 last convolution through a float pixel shuffle, not rounded to 8 bits
    result = next(n for n in q.int8_graph().graph.nodes if n.op == "output").args[0]
    assert result.target is int8.pixel_shuffle_channels_last
    assert result.args[0].op == "call_module" and result.args[0].target == "tail"
    assert isinstance(q.int8_graph().tail, int8.Int8InputConv2d)  # on the 8-bit input, without a dequantize
    kinds = {type(m).__name__ for m in q.int8_graph().modules()}
    assert {"ConvAdd2d", "ConvReLU2d"} <= kinds  # fused int8 conv + add, conv + ReLU


@needs_int8
def test_int8_graph_fuses_the_upsamplings_relus_without_changing_a_value(monkeypatch):
    """The ReLU after each sub-pixel up-sampling moves into its convolution: no ReLU is left in the
    graph, and the output is bit for bit what the graph with the ReLUs gives."""
    _, q = _trained_pair()
    x = _smooth((1, 1, 64, 96), 5)
    fused = q.int8_graph()

    def relus(graph_module):
        return [n for n in graph_module.graph.nodes if n.op == "call_function"
                and n.target in (torch.relu, torch.nn.functional.relu)]

    monkeypatch.setattr(int8, "_relus_into_convs", lambda graph_module: None)  # convert without the fusion
    q._drop_int8()
    plain = q.int8_graph()
    assert len(relus(plain)) == 2 and not relus(fused)
    with torch.inference_mode():
        assert torch.equal(fused(x), plain(x))


@needs_int8
@pytest.mark.filterwarnings("ignore:.*quantize_per_tensor:UserWarning")
def test_int8_input_convolution_is_the_float_one_on_rounded_weights():
    """An int8-input convolution gives in fp32 what the float convolution gives on the dequantised input
    with its weights through the weight quantiser (as quantisation-aware training sees it)."""
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(16, 4, 3, padding=1)
    x = torch.rand(1, 16, 20, 28).contiguous(memory_format=torch.channels_last)
    qx = torch.quantize_per_tensor(x, 1 / 200, 7, torch.quint8)
    out = int8.Int8InputConv2d(conv)(qx)
    trained = int8._WeightFakeQuantConv2d(16, 4, 3, padding=1)
    trained.load_state_dict(conv.state_dict())
    with torch.no_grad():
        ref, unrounded = trained(qx.dequantize()), conv(qx.dequantize())
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float((out - ref).abs().max()) < 1e-4 < float((unrounded - ref).abs().max())
    with pytest.raises(ValueError, match="explicit zero padding"):
        int8.Int8InputConv2d(torch.nn.Conv2d(16, 4, 3, padding="same"))
    with pytest.raises(ValueError, match="keep_float"):
        int8.prepare(torch.nn.Sequential(conv), x, int8_input=("0",))


@needs_int8
def test_int8_weights_round_trip_through_a_model_folder(tmp_path):
    from restore_app.core.registry import Registry
    from restore_app.core.train.loop import export_model

    _, q = _trained_pair(channels=3)
    export_model(q.state_dict(), tmp_path / "zoo" / "tiny-int8",
                 {"id": "tiny-int8", "task": "jpeg", "name": "t", "architecture": "jpeg_unet_int8",
                  "params": {"widths": [16, 32, 32], "blocks": [1, 1, 1], "channels": 3}, "input": "rgb",
                  "align": 8, "license": "MIT", "training_data": "none"})
    loaded = Registry(paths=[(tmp_path / "zoo", "test")], entry_points=False).load("tiny-int8").module
    x = _smooth((1, 3, 48, 40), 5)
    with torch.inference_mode():
        assert torch.equal(loaded(x), q(x))
        # the engine's channels-last layout gives the same result
        assert torch.allclose(loaded.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)), q(x), atol=1e-6)


@needs_int8
def test_int8_training_starts_from_float_weights_and_exports(tmp_path, jpeg_task):
    """``restore train jpeg --int8`` for a grey specialist: starts from the float model's weights,
    trains the one-channel network through the constraint, and exports a loadable int8 model."""
    from safetensors.torch import save_file

    from restore_app.core.registry import Registry, read_manifest
    from restore_app.core.train.jpeg import manifest_fields
    from restore_app.core.train.loop import train

    base = JpegUNet(widths=(16, 16, 16), blocks=(1, 1, 1), channels=1)
    with torch.no_grad():
        base.tail.weight.normal_(std=0.05)
    save_file(base.state_dict(), str(tmp_path / "float.safetensors"))
    cfg = JpegTrainConfig(data=jpeg_task.cfg.data, val_holdout=1, patch=64, widths="16,16,16", blocks="1,1,1",
                          grey_prob=1.0, train_constraint=True, int8=True, init=tmp_path / "float.safetensors",
                          out=tmp_path / "run", iterations=3, batch=2, val_every=3, log_every=1, warmup=1,
                          device="cpu")
    assert cfg.precision == "fp32"
    with pytest.raises(InputError):
        JpegTrainConfig(int8=True, precision="bf16")
    task = JpegTask(cfg)
    assert task.model.channels == 1
    # --init with float weights: the same network, with quantiser ranges set by the first batches
    from safetensors.torch import load_file

    start = JpegTask(cfg).model
    start.load_state_dict(task.init_state(load_file(str(cfg.init))))
    x = _smooth((1, 1, 40, 48))
    with torch.no_grad():
        start.train()(_smooth((2, 1, 64, 64), 3))
        out, ref = start.eval()(x), base.eval()(x)
    assert float(((out - ref) ** 2).mean()) < 0.05 * float(((ref - x) ** 2).mean())
    result = train(task, cfg, log=lambda _: None)
    assert result.iterations == 3 and np.isfinite(result.best_score)
    fields = manifest_fields(cfg)
    assert fields["id"] == "restore-jpeg-grey-int8" and fields["architecture"] == "jpeg_unet_int8"
    shipped = default_registry().get("restore-jpeg-grey-int8")  # what an export writes is what ships
    assert (fields["description"], tuple(fields["ensemble"]), fields["int8_of"]) == \
        (shipped.description, shipped.ensemble, shipped.int8_of)
    folder = task.export(cfg.out, tmp_path / "zoo" / "grey-int8")
    assert read_manifest(folder).channels == (1,)
    model = Registry(paths=[(tmp_path / "zoo", "test")], entry_points=False).load("grey-int8").module
    task.model.load_state_dict(load_file(str(cfg.out / "best.safetensors")))
    with torch.inference_mode():
        assert torch.equal(model(x), task.model.eval()(x))


def test_colour_int8_export_is_what_ships():
    """``restore train jpeg --int8`` for the colour model writes the shipped manifest's default: the
    four mirror images, standing in for ``restore-jpeg`` where int8 is fast."""
    from restore_app.core.train.jpeg import manifest_fields

    fields = manifest_fields(JpegTrainConfig(int8=True))
    shipped = default_registry().get("restore-jpeg-int8")
    assert fields["id"] == shipped.id and fields["int8_of"] == "restore-jpeg"
    assert (fields["description"], tuple(fields["ensemble"]), fields["int8_of"]) == \
        (shipped.description, shipped.ensemble, shipped.int8_of)
    assert set(shipped.ensemble) == {"fliplr", "flipud", "rot180"}
