"""The shared training loop: it learns, it resumes exactly, it exports a loadable model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from restore_app.core.engine import cpu_has_fast_bf16
from restore_app.core.errors import Cancelled, InputError
from restore_app.core.io import write_image
from restore_app.core.jobs import CancelToken
from restore_app.core.registry import Registry, read_manifest
from restore_app.core.train.demosaic import DemosaicTask, DemosaicTrainConfig, manifest_fields
from restore_app.core.train.loop import TrainConfig, export_model, lr_at, train, train_precision


@pytest.fixture
def tiny_data(tmp_path, coffee, astronaut):
    folders = []
    for name, img in (("a", coffee), ("b", astronaut)):
        d = tmp_path / name
        d.mkdir()
        for i in range(3):
            write_image(d / f"{i}.png", np.ascontiguousarray(np.roll(img, 40 * i, axis=1)[:160, :200]))
        folders.append(d)
    return tuple(folders)


def _cfg(tmp_path, data, name, **kw):
    base = dict(out=tmp_path / name, data=data, iterations=12, batch=2, patch=32, lr=1e-3, warmup=2,
                log_every=4, val_every=6, val_holdout=1, width=16, blocks=1, precision="fp32", device="cpu")
    return DemosaicTrainConfig(**{**base, **kw})


def test_training_improves_on_bilinear(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, tiny_data, "run", iterations=150, val_every=75, log_every=25, lr=2e-3, loss="l1")
    task = DemosaicTask(cfg)
    start = task.validate(task.model, torch.device("cpu"), "fp32")["score"]
    result = train(task, cfg, log=lambda s: None)
    assert result.best_score > start + 0.3  # better than the bilinear it starts from
    lines = [json.loads(line) for line in (cfg.out / "log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert [line["step"] for line in lines if "loss" in line] == list(range(25, 151, 25))
    assert losses[-1] < losses[0]
    assert sum(1 for line in lines if "val" in line) == 2


def test_resume_reproduces_an_uninterrupted_run(tmp_path, tiny_data):
    straight = _cfg(tmp_path, tiny_data, "straight")
    train(DemosaicTask(straight), straight, log=lambda s: None)
    # the same run, cancelled after its checkpoint at step 6, then started again
    first = _cfg(tmp_path, tiny_data, "resumed")
    token = CancelToken()

    def stop_after_checkpoint(message: str) -> None:
        if message.startswith("step 6: validation"):
            token.cancel()

    with pytest.raises(Cancelled):
        train(DemosaicTask(first), first, log=stop_after_checkpoint, cancel=token)
    messages = []
    second = _cfg(tmp_path, tiny_data, "resumed")
    train(DemosaicTask(second), second, log=messages.append)
    assert messages[0].startswith("resumed") and "at step 6" in messages[0]
    a = load_file(str(straight.out / "last.safetensors"))
    b = load_file(str(second.out / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_export_then_load_through_the_registry(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, tiny_data, "run")
    train(DemosaicTask(cfg), cfg, log=lambda s: None)
    folder = export_model(cfg.out / "best.safetensors", tmp_path / "zoo" / "my-dm",
                          {**manifest_fields(cfg), "id": "my-dm"})
    manifest = read_manifest(folder)
    assert manifest.id == "my-dm" and manifest.sha256 and manifest.conditioning == ("sigma",)
    model = Registry(paths=[(tmp_path / "zoo", "test")], entry_points=False).load("my-dm")
    assert model.weights_sha256 == manifest.sha256
    # exported again (new weights), the folder keeps its place in the zoo but not the old metrics
    text = (folder / "manifest.toml").read_text()
    (folder / "manifest.toml").write_text(text + 'default = true\n\n[metrics]\n"x.psnr" = 30.0\n')
    assert read_manifest(folder).default
    export_model(cfg.out / "last.safetensors", folder, {**manifest_fields(cfg), "id": "my-dm"})
    again = read_manifest(folder)
    assert again.default and not again.metrics


def test_config_validation_and_schedule():
    with pytest.raises(InputError, match="loss must be one of"):
        TrainConfig(loss="l3")
    with pytest.raises(InputError, match="fp16 training is not supported on the CPU"):
        train_precision("fp16", torch.device("cpu"))
    # bf16 autocast only where the CPU runs it faster than fp32 (AMX)
    assert train_precision("auto", torch.device("cpu")) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    assert train_precision("bf16", torch.device("cpu")) == "bf16"  # asked for, it is used anyway
    cfg = TrainConfig(iterations=1000, warmup=100, lr=1e-3, lr_min=0.0)
    assert lr_at(0, cfg) == pytest.approx(1e-5)
    assert lr_at(99, cfg) == pytest.approx(1e-3)
    assert lr_at(550, cfg) == pytest.approx(5e-4)
    assert lr_at(1000, cfg) == pytest.approx(0.0)


def test_train_cli_runs_and_exports(tmp_path, tiny_data):
    out = tmp_path / "cli-run"
    zoo = tmp_path / "zoo2" / "cli-dm"
    cmd = [sys.executable, "-m", "restore_app", "train", "demosaic", "--out", str(out), "--iterations", "4",
           "--batch", "2", "--patch", "32", "--width", "16", "--blocks", "1", "--val-every", "4",
           "--val-holdout", "1", "--data", *map(str, tiny_data), "--precision", "fp32", "--export", str(zoo)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "exported" in result.stdout and (zoo / "weights.safetensors").is_file()
    models = subprocess.run([sys.executable, "-m", "restore_app", "models", "--json"], capture_output=True,
                            text=True, env={**__import__("os").environ, "RESTORE_MODELS_PATH": str(zoo.parent)})
    ids = [m["id"] for m in json.loads(models.stdout)["models"]]
    assert "cli-dm" in ids


def test_hard_mining_and_noise_free_share(tmp_path, tiny_data):
    from restore_app.core.train.demosaic import _bilinear_error

    plain = DemosaicTask(_cfg(tmp_path, tiny_data, "plain"))
    mined = DemosaicTask(_cfg(tmp_path, tiny_data, "mined", hard_prob=1.0, hard_candidates=4,
                              zero_noise_prob=1.0))
    rng_a, rng_b = np.random.default_rng(0), np.random.default_rng(0)
    err_plain = np.mean([_bilinear_error(plain._patch(rng_a)) for _ in range(40)])
    err_mined = np.mean([_bilinear_error(mined._patch(rng_b)) for _ in range(40)])
    assert err_mined > 1.2 * err_plain
    x, _ = mined.batch(np.random.default_rng(1), 4)
    assert float(x[:, 1].abs().max()) == 0.0  # no noise and a zero noise map
    x, _ = plain.batch(np.random.default_rng(1), 4)
    assert float(x[:, 1].max()) > 0.0


def test_saturation_jitter_and_vivid_validation(tmp_path, tiny_data, coffee):
    from restore_app.core.train.data import LUMA, Jitter, saturate

    rgb = np.full((4, 4, 3), [0.5, 0.4, 0.3], dtype=np.float32)
    vivid = saturate(rgb, 2.0)
    assert np.allclose(vivid @ LUMA, rgb @ LUMA, atol=1e-6)  # luma kept where nothing clips
    assert np.allclose(vivid - (vivid @ LUMA)[..., None], 2 * (rgb - (rgb @ LUMA)[..., None]), atol=1e-6)
    assert np.array_equal(saturate(rgb, 1.0), rgb)
    assert saturate(np.float32(coffee) / 255, 3.0).max() <= 1.0

    def chroma(p: np.ndarray) -> float:
        return float(np.abs(p - (p @ LUMA)[..., None]).mean())

    patch = np.float32(coffee[:64, :64]) / 255
    plain, boosted = Jitter(exposure=1.0, colour=0.0), Jitter(exposure=1.0, colour=0.0, saturation=2.0,
                                                             saturation_prob=1.0)
    assert np.array_equal(plain(patch, np.random.default_rng(0)), patch)
    assert np.mean([chroma(boosted(patch, np.random.default_rng(s))) for s in range(8)]) > 1.2 * chroma(patch)

    task = DemosaicTask(_cfg(tmp_path, tiny_data, "vivid", val_saturation=1.8))
    scores = task.validate(task.model, torch.device("cpu"), "fp32")
    assert set(scores) == {"psnr_s0", "psnr_s10", "psnr_s20", "psnr_sat_s0", "score"}
    # vivid colours are harder for a bilinear-initialised network than the same images as they are
    assert scores["psnr_sat_s0"] < scores["psnr_s0"]


def test_luma_contrast_jitter_makes_colour_edges_of_similar_brightness(tmp_path, tiny_data, coffee):
    from restore_app.core.train.data import LUMA, Jitter, saturate

    rgb = np.float32(coffee[:64, :64]) / 255 * 0.5 + 0.25  # nothing clips below
    luma, chroma = rgb @ LUMA, rgb - (rgb @ LUMA)[..., None]
    out = saturate(rgb, 1.5, contrast=0.5)
    out_luma = out @ LUMA
    assert np.isclose(out_luma.mean(), luma.mean(), atol=1e-5)  # mean brightness kept
    assert np.allclose(out_luma - out_luma.mean(), 0.5 * (luma - luma.mean()), atol=1e-5)
    assert np.allclose(out - out_luma[..., None], 1.5 * chroma, atol=1e-5)

    def edge_ratio(p: np.ndarray) -> float:  # colour change against brightness change across columns
        c = p - (p @ LUMA)[..., None]
        return float(np.abs(np.diff(c, axis=1)).sum() / np.abs(np.diff(p @ LUMA, axis=1)).sum())

    patch = np.float32(coffee[:64, :64]) / 255
    sat_only = Jitter(exposure=1.0, colour=0.0, saturation=1.5, saturation_prob=1.0)
    both = Jitter(exposure=1.0, colour=0.0, saturation=1.5, saturation_prob=1.0, luma_contrast=0.4)
    ratios = [(edge_ratio(sat_only(patch, np.random.default_rng(s))), edge_ratio(both(patch, np.random.default_rng(s))))
              for s in range(8)]
    assert all(b > a for a, b in ratios)

    task = DemosaicTask(_cfg(tmp_path, tiny_data, "decor", val_saturation=1.6, val_luma_contrast=0.6))
    plain = DemosaicTask(_cfg(tmp_path, tiny_data, "sat", val_saturation=1.6))
    assert not np.allclose(task.vivid_images[0], plain.vivid_images[0])
    with pytest.raises(InputError, match="luma_contrast"):
        _cfg(tmp_path, tiny_data, "bad", luma_contrast=1.5)


@pytest.mark.parametrize("int8_net", [False, True])
def test_a_wider_refinement_starts_from_narrower_weights_unchanged(tmp_path, tiny_data, int8_net):
    from restore_app.core import int8

    if int8_net and not int8.available():
        pytest.skip("this PyTorch has no oneDNN quantised engine")
    narrow = DemosaicTask(_cfg(tmp_path, tiny_data, "narrow"))
    torch.manual_seed(0)
    for p in narrow.model.parameters():  # trained-looking weights: every path non-zero
        p.data.normal_(0, 0.05)
    state = narrow.model.state_dict()
    wide = DemosaicTask(_cfg(tmp_path, tiny_data, "wide", refine=32, int8=int8_net))
    wide.model.load_state_dict(wide.init_state(state))
    assert wide.model.refine.weight.shape[0] == 32 and wide.model.out.weight.shape[1] == 32
    assert float(wide.model.refine.weight.detach()[16:].abs().max()) > 0  # the new channels are live...
    assert float(wide.model.out.weight.detach()[:, 16:].abs().max()) == 0  # ...and read with zero weights
    x = torch.rand(2, 2, 32, 32) * torch.tensor([1.0, 0.05])[None, :, None, None]
    same = DemosaicTask(_cfg(tmp_path, tiny_data, "same", int8=int8_net))
    same.model.load_state_dict(same.init_state(state))
    with torch.no_grad():
        torch.testing.assert_close(wide.model.train()(x), same.model.train()(x), rtol=0, atol=1e-6)
    # the output layer's new weights get a gradient at once
    wide.model(x).square().mean().backward()
    assert float(wide.model.out.weight.grad[:, 16:].abs().max()) > 0
    assert manifest_fields(wide.cfg)["params"]["refine"] == 32 and "refine" not in manifest_fields(same.cfg)["params"]
    with pytest.raises(InputError, match="refinement channels"):
        narrow.init_state(wide.model.state_dict())


def test_a_deeper_network_starts_from_shallower_weights_unchanged(tmp_path, tiny_data):
    shallow = DemosaicTask(_cfg(tmp_path, tiny_data, "shallow"))
    torch.manual_seed(0)
    for p in shallow.model.parameters():
        p.data.normal_(0, 0.05)
    deep = DemosaicTask(_cfg(tmp_path, tiny_data, "deep", blocks=3))
    deep.model.load_state_dict(deep.init_state(shallow.model.state_dict()))
    torch.testing.assert_close(deep.model.body[0].conv1.weight, shallow.model.body[0].conv1.weight)
    assert float(deep.model.body[2].conv1.weight.detach().abs().max()) > 0  # live, read through a zero conv
    x = torch.rand(2, 2, 32, 32) * torch.tensor([1.0, 0.05])[None, :, None, None]
    with torch.no_grad():
        torch.testing.assert_close(deep.model(x), shallow.model(x), rtol=0, atol=1e-6)
    deep.model(x).square().mean().backward()
    assert float(deep.model.body[2].conv2.weight.grad.abs().max()) > 0
    with pytest.raises(InputError, match="residual blocks"):
        shallow.init_state(deep.model.state_dict())


def test_dead_leaves_patches_are_dense_in_colour_edges(tmp_path, tiny_data, coffee):
    from restore_app.core.color import LUMA
    from restore_app.core.train.data import dead_leaves

    def edge_ratio(p: np.ndarray) -> float:  # colour change against brightness change across columns
        c = p - (p @ LUMA)[..., None]
        return float(np.abs(np.diff(c, axis=1)).sum() / np.abs(np.diff(p @ LUMA, axis=1)).sum())

    patches = [dead_leaves(np.random.default_rng(s), 64) for s in range(8)]
    assert all(p.shape == (64, 64, 3) and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1 for p in patches)
    assert np.array_equal(patches[0], dead_leaves(np.random.default_rng(0), 64))
    assert all(len(np.unique(p.reshape(-1, 3).round(2), axis=0)) > 20 for p in patches)  # many regions, not flat
    photo = np.float32(coffee[:64, :64]) / 255
    assert np.median([edge_ratio(p) for p in patches]) > 1.5 * edge_ratio(photo)  # a colourful photo
    task = DemosaicTask(_cfg(tmp_path, tiny_data, "dl", synthetic_prob=1.0, patch=64))
    _, y = task.batch(np.random.default_rng(0), 2)
    rng = np.random.default_rng(0)
    rng.random()  # the draw that picks a synthetic patch
    assert np.array_equal(y[0].numpy().transpose(1, 2, 0), dead_leaves(rng, 64))  # the target is the patch
    with pytest.raises(InputError, match="synthetic_prob"):
        _cfg(tmp_path, tiny_data, "bad", synthetic_prob=1.5)
