"""The registry: built-in manifests, strict parsing, safetensors loading, plugins by entry point."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from restore_app.core.errors import ModelLoadError, ModelNotFoundError
from restore_app.core.paths import builtin_models_dir
from restore_app.core.registry import (
    ENTRY_POINT_GROUP,
    Registry,
    build_model,
    default_registry,
    parse_manifest,
    read_manifest,
)

BASE = {"id": "m", "task": "jpeg", "name": "M", "architecture": "identity", "input": "rgb",
        "license": "MIT", "training_data": "none"}


def test_builtin_models_load_cleanly():
    reg = default_registry()
    assert reg.issues == []
    ids = reg.ids()
    for task in ("demosaic", "jpeg", "vsr", "segment"):
        assert reg.manifests(task), f"no classical model for {task}"
        assert reg.default(task).task == task
    for folder in builtin_models_dir().iterdir():
        if folder.is_dir():
            assert (folder / "CARD.md").is_file(), f"{folder.name} has no CARD.md"
            assert read_manifest(folder).id == folder.name
    assert "bilinear-demosaic" in ids and "bicubic-x4" in ids


def test_unknown_id_lists_known_ones():
    with pytest.raises(ModelNotFoundError, match=r"unknown model 'nope'; known models: .*bicubic-x4"):
        default_registry().get("nope")


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, "unknown keys colour"),
    ({"task": "deblur"}, "task must be one of"),
    ({"input": "bayer"}, "input must be one of"),
    ({"id": "Bad Id"}, "id must be"),
    ({"precisions": ["int4"]}, "precisions must be"),
    ({"precisions": ["fp32", "int8"]}, "precisions must be"),
    ({"weights": "../w.safetensors"}, "weights must be"),
    ({"weights": "w.pth"}, "weights must be"),
    ({"sha256": "abc"}, "sha256 must be"),
    ({"scale": 0}, "scale must be"),
    ({"channels": [2]}, "channels must be"),
    ({"ensemble": ["rot45"]}, "ensemble must be"),
    ({"ensemble_full": ["flip"]}, "ensemble_full must be"),
    ({"jpeg_constraint": 0.5}, "jpeg_constraint must be"),
    ({"max_tile": -1}, "max_tile must be"),
    ({"max_tile": True}, "max_tile must be"),
    ({"jpeg_constraint": -0.1}, "jpeg_constraint must be"),
    ({"jpeg_constraint": True}, "jpeg_constraint must be"),
    ({"jpeg_constraint": "0.1"}, "jpeg_constraint must be"),
    ({"int8_of": "a-model"}, "int8_of must be"),  # on a float model
    ({"int8_of": "Bad Id", "precisions": ["int8"]}, "int8_of must be"),
    ({"stand_in_with_bf16": "no"}, "stand_in_with_bf16 must be"),
])
def test_manifest_validation(change, message):
    with pytest.raises(ModelLoadError, match=message):
        parse_manifest({**BASE, **change})


def test_manifest_missing_keys():
    data = dict(BASE)
    del data["license"]
    with pytest.raises(ModelLoadError, match="missing keys license"):
        parse_manifest(data)


def test_manifest_is_frozen():
    m = parse_manifest({**BASE, "params": {"a": 1}})
    with pytest.raises(AttributeError):
        m.id = "x"
    with pytest.raises(TypeError):
        m.params["a"] = 2


# -- a plugin package written to disk, with a real dist-info entry point -------------------------

ARCH = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x)
'''


def _model_folder(folder: Path, model_id: str, arch: str, weights: dict | None, sha: bool = True,
                  extra: str = "") -> Path:
    folder.mkdir(parents=True)
    lines = [f'id = "{model_id}"', 'task = "jpeg"', f'name = "{model_id}"', f'architecture = "{arch}"',
             'input = "rgb"', 'license = "MIT"', 'training_data = "synthetic"']
    if weights is not None:
        save_file(weights, str(folder / "w.safetensors"))
        lines.append('weights = "w.safetensors"')
        if sha:
            digest = hashlib.sha256((folder / "w.safetensors").read_bytes()).hexdigest()
            lines.append(f'sha256 = "{digest}"')
    (folder / "manifest.toml").write_text("\n".join(lines) + "\n" + extra)
    (folder / "CARD.md").write_text("card")
    return folder


def _tiny_weights():
    torch.manual_seed(0)
    return {"conv.weight": torch.randn(3, 3, 3, 3) * 0.01, "conv.bias": torch.zeros(3)}


@pytest.fixture
def plugin_site(tmp_path, monkeypatch):
    """A site folder with an installed plugin `tinyplug` declaring models through an entry point."""
    site = tmp_path / "site"
    pkg = site / "tinyplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "arch.py").write_text(ARCH)
    _model_folder(pkg / "models" / "tiny-plugin", "tiny-plugin", "tinyplug.arch:TinyNet", _tiny_weights())
    dist = site / "tinyplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tinyplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\ntiny = tinyplug:models\n"
                                           "broken = not_installed_pkg:models\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("tinyplug")]:
        del sys.modules[name]


def test_plugin_models_are_found_lazily(plugin_site):
    reg = Registry(paths=[])
    m = reg.get("tiny-plugin")
    assert m.source == "plugin:tiny"
    assert "tinyplug.arch" not in sys.modules  # listing did not import the plugin's code
    loaded = reg.load("tiny-plugin")
    assert "tinyplug.arch" in sys.modules
    torch.testing.assert_close(loaded.module.conv.weight, _tiny_weights()["conv.weight"])
    assert loaded.weights_sha256 == m.sha256
    # the broken plugin is reported, not fatal
    assert [i.source for i in reg.issues] == ["plugin:broken"]
    assert "not_installed_pkg" in reg.issues[0].message


def test_weights_problems_are_clear_errors(tmp_path, plugin_site):
    arch = "tinyplug.arch:TinyNet"
    w = _tiny_weights()
    cases = {
        "missing-key": ({"conv.weight": w["conv.weight"]}, "missing conv.bias"),
        "extra-key": ({**w, "head.weight": torch.zeros(1)}, "unexpected head.weight"),
        "wrong-shape": ({**w, "conv.bias": torch.zeros(4)}, r"wrong shape conv.bias \(4,\)≠\(3,\)"),
    }
    for name, (weights, message) in cases.items():
        folder = _model_folder(tmp_path / "zoo" / name, name, arch, weights)
        with pytest.raises(ModelLoadError, match=message):
            build_model(read_manifest(folder))
    folder = _model_folder(tmp_path / "zoo" / "bad-sha", "bad-sha", arch, w)
    (folder / "manifest.toml").write_text((folder / "manifest.toml").read_text().replace(
        read_manifest(folder).sha256, "0" * 64))
    with pytest.raises(ModelLoadError, match="does not match the manifest"):
        build_model(read_manifest(folder))
    folder = _model_folder(tmp_path / "zoo" / "no-weights", "no-weights", arch, None)
    with pytest.raises(ModelLoadError, match="has trainable parameters but no weights file"):
        build_model(read_manifest(folder))
    folder = _model_folder(tmp_path / "zoo" / "corrupt", "corrupt", arch, w, sha=False)
    (folder / "w.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        build_model(read_manifest(folder))


def test_broken_architectures(tmp_path):
    folder = _model_folder(tmp_path / "a", "a", "nosuch.module:Net", None)
    with pytest.raises(ModelLoadError, match="cannot import architecture 'nosuch.module:Net'"):
        build_model(read_manifest(folder))
    folder = _model_folder(tmp_path / "b", "b", "bogus", None)
    with pytest.raises(ModelLoadError, match="unknown architecture 'bogus'"):
        build_model(read_manifest(folder))
    folder = _model_folder(tmp_path / "c", "c", "bicubic", None, extra="[params]\nfactor = 3\n")
    with pytest.raises(ModelLoadError, match="cannot build bicubic"):
        build_model(read_manifest(folder))


def test_search_order_duplicates_and_bad_folders(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    _model_folder(first / "x", "dup", "identity", None)
    _model_folder(second / "y", "dup", "identity", None)
    bad = second / "z"
    bad.mkdir()
    (bad / "manifest.toml").write_text("id = [unclosed")
    reg = Registry(paths=[(first, "first"), (second, "second")], entry_points=False)
    assert reg.get("dup").source == "first"
    messages = [i.message for i in reg.issues]
    assert any("already defined" in m for m in messages)
    assert any("manifest.toml" in m for m in messages)


def test_env_path_is_searched(tmp_path, monkeypatch):
    _model_folder(tmp_path / "mine" / "my-model", "my-model", "identity", None)
    monkeypatch.setenv("RESTORE_MODELS_PATH", str(tmp_path / "mine"))
    reg = Registry(entry_points=False)
    assert reg.get("my-model").source == "RESTORE_MODELS_PATH"
    assert "bilinear-demosaic" in reg.ids()


def test_an_int8_form_stands_in_for_its_default_where_int8_is_fast(tmp_path):
    """``int8_of`` makes an int8 model the default in place of the float one it names, only when asked
    (an engine on a CPU with fast int8: ``int8.preferred``); the shipped grey JPEG model has one."""
    zoo = tmp_path / "zoo"
    _model_folder(zoo / "a", "a-grey", "identity", None, extra="default = true\nchannels = [1]\n")
    _model_folder(zoo / "b", "b-grey-int8", "identity", None,
                  extra='channels = [1]\nprecisions = ["int8"]\nint8_of = "a-grey"\n')
    _model_folder(zoo / "c", "c-colour", "identity", None, extra='default = true\nprecisions = ["fp32", "bf16"]\n')
    _model_folder(zoo / "d", "d-colour-int8", "identity", None,
                  extra='precisions = ["int8"]\nint8_of = "c-colour"\nstand_in_with_bf16 = false\n')
    reg = Registry(paths=[(zoo, "zoo")], entry_points=False)
    assert reg.default("jpeg", grey=True).id == "a-grey"
    assert reg.default("jpeg", grey=True, int8=True).id == "b-grey-int8"
    assert reg.default("jpeg", grey=True, int8=True, fast_bf16=True).id == "b-grey-int8"
    # a form with stand_in_with_bf16 = false defers to its float model where that runs in bf16 (AMX)
    assert reg.default("jpeg", int8=True, fast_bf16=False).id == "d-colour-int8"
    assert reg.default("jpeg", int8=True, fast_bf16=True).id == "c-colour"
    assert reg.default("jpeg", fast_bf16=False).id == "c-colour"  # int8 not asked for
    # ... but not where the float model would not run in bf16 anyway
    import dataclasses

    from restore_app.core.registry import stands_in

    form, colour = reg.get("d-colour-int8"), reg.get("c-colour")
    assert stands_in(form, dataclasses.replace(colour, precisions=("fp32",)), fast_bf16=True)
    assert not stands_in(form, reg.get("a-grey"), fast_bf16=False)  # not the model it names
    shipped = default_registry()
    assert shipped.default("jpeg", grey=True, int8=True).id == "restore-jpeg-grey-int8"
    assert (shipped.default("jpeg").id, shipped.default("jpeg", int8=True).id) == ("restore-jpeg", "restore-jpeg-int8")
    assert shipped.default("demosaic").id == "restore-dm"
    assert shipped.default("demosaic", int8=True, fast_bf16=False).id == "restore-dm-int8"
    assert shipped.default("demosaic", int8=True, fast_bf16=True).id == "restore-dm"
    from restore_app.core import int8
    from restore_app.core.engine import cpu_has_fast_bf16

    assert shipped.default("demosaic", int8=True).id == ("restore-dm" if cpu_has_fast_bf16() else "restore-dm-int8")

    assert not int8.preferred("cpu", "fp32")  # a precision asked for: the float model
    assert int8.preferred("cpu") == int8.fast_on_this_cpu()


def test_grey_and_colour_defaults(tmp_path):
    zoo = tmp_path / "zoo"
    _model_folder(zoo / "a", "a-colour", "identity", None, extra="default = true\n")
    _model_folder(zoo / "b", "b-grey", "identity", None, extra="default = true\nchannels = [1]\n")
    _model_folder(zoo / "c", "c-other", "identity", None)
    reg = Registry(paths=[(zoo, "zoo")], entry_points=False)
    assert reg.default("jpeg").id == "a-colour"
    assert reg.default("jpeg", grey=True).id == "b-grey"
    # a grey model that is not marked default is not chosen: the marked colour model serves grey too
    other = tmp_path / "other"
    _model_folder(other / "a", "a-colour", "identity", None, extra="default = true\n")
    _model_folder(other / "b", "b-grey", "identity", None, extra="channels = [1]\n")
    assert Registry(paths=[(other, "other")], entry_points=False).default("jpeg", grey=True).id == "a-colour"
