"""The model registry: frozen manifests keyed by model id, and loading of their weights.

Models are folders holding a ``manifest.toml``, optional ``*.safetensors`` weights and a ``CARD.md``.
They are found in, in order: the folders of ``RESTORE_MODELS_PATH``; the built-in ``models/``; the
user's ``models/`` folder; and plugins, which declare a folder of model folders through the entry
point group ``restore_app.models`` (``name = "package:folder"``). A plugin's code is imported only
when one of its models is built; a plugin or manifest that fails shows up in :attr:`Registry.issues`
instead of stopping the application.

>>> registry = Registry()                              # doctest: +SKIP
>>> model = registry.load("bilinear-demosaic")         # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import threading
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

from restore_app.core.archs import ARCHITECTURES
from restore_app.core.errors import ModelLoadError, ModelNotFoundError
from restore_app.core.paths import builtin_models_dir, user_data_dir
from restore_app.core.quantization import MAX_SHRINK

ENTRY_POINT_GROUP = "restore_app.models"
MANIFEST_NAME = "manifest.toml"
TASKS = ("demosaic", "jpeg", "vsr", "segment")
INPUT_KINDS = ("cfa", "rgb", "clip")
OUTPUT_KINDS = ("image", "labels")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")  # int8: the model is 8-bit by construction, and only that
# test-time transforms a self-ensemble may use: the 7 symmetries of the square besides the identity
ENSEMBLE_TRANSFORMS = ("transpose", "rot180", "fliplr", "flipud", "rot90", "rot270", "antitranspose")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ModelManifest:
    """Everything known about a model without building it (timm's ``pretrained_cfg``).

    ``input`` is ``"cfa"`` (an RGGB mosaic ``(B, 1, H, W)``), ``"rgb"`` (images of ``channels``
    channels) or ``"clip"`` (frame sequences ``(B, T, C, H, W)``); ``output`` is ``"image"`` or
    ``"labels"``. ``overlap`` is the tile context in input pixels, ``align`` the tile alignment
    (2 for mosaics). ``conditioning`` names extra inputs such as ``"sigma"`` (noise level).
    ``ensemble`` names test-time transforms whose results are averaged with the plain pass (a
    self-ensemble; the engine's ``ensemble`` setting turns it off): each is one of the symmetries
    of the square (``ENSEMBLE_TRANSFORMS``): ``"transpose"`` swaps x and y, which keeps an RGGB
    mosaic RGGB; the others change the Bayer phase, so they suit images only (the 8×8 JPEG grid is
    kept on the grid by padding). ``ensemble`` is the default set (the engine's ``"on"``), and
    ``ensemble_full`` the larger, slower set of its ``"full"`` mode (default: the same).
    ``jpeg_constraint`` (JPEG models) turns on the quantisation constraint of
    :mod:`restore_app.core.quantization` after the model, with that interval ``shrink`` (0–0.49).
    ``keep_samples`` (``cfa`` models): when the mosaic is declared noise-free (σ = 0), the result
    keeps its samples exactly where they were measured. ``max_tile`` caps the engine's tile size for
    this model (0: no cap), for models whose memory grows faster with the tile (clip models hold a
    whole chunk of frames per tile). ``int8_of`` (int8 models): the id of the float model this one
    is a faster form of, restoring about as well by default (its card compares them); where int8 is
    fast (a CPU with VNNI or AMX) it stands in for that model as the task's default
    (:meth:`Registry.default`). ``stand_in_with_bf16 = false`` (int8 models) keeps the float model
    as the default where it runs in bf16 on AMX, for a pair whose float default fits the time there
    and restores better (:func:`stands_in`).
    """

    id: str
    task: str
    name: str
    architecture: str
    input: str
    license: str
    training_data: str
    output: str = "image"
    channels: tuple[int, ...] = (3,)
    scale: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)
    tileable: bool = True
    overlap: int = 16
    align: int = 1
    precisions: tuple[str, ...] = ("fp32",)
    conditioning: tuple[str, ...] = ()
    ensemble: tuple[str, ...] = ()
    ensemble_full: tuple[str, ...] = ()
    jpeg_constraint: float | None = None
    keep_samples: bool = False
    max_tile: int = 0
    clip_context: int = 6  # clip models: frames of context on each side of a chunk
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    weights: str | None = None
    sha256: str | None = None
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    description: str = ""
    default: bool = False
    int8_of: str = ""
    stand_in_with_bf16: bool = True
    root: Path | None = None
    source: str = "built-in"

    @property
    def weights_path(self) -> Path | None:
        if self.weights is None:
            return None
        return (self.root or Path(".")) / self.weights

    def ensemble_for(self, mode: str) -> tuple[str, ...]:
        """The transforms (besides the identity) the engine's ensemble ``mode`` averages for this model:
        none for ``"off"``, ``ensemble`` for ``"on"``, ``ensemble_full`` (or ``ensemble``) for ``"full"``."""
        if mode == "off":
            return ()
        return (self.ensemble_full or self.ensemble) if mode == "full" else self.ensemble

    @property
    def card_path(self) -> Path | None:
        return self.root / "CARD.md" if self.root is not None else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        return out


_REQUIRED = ("id", "task", "name", "architecture", "input", "license", "training_data")
_FILE_FIELDS = {f.name for f in fields(ModelManifest)} - {"root", "source"}


def parse_manifest(data: Mapping[str, Any], root: Path | None = None,
                   source: str = "built-in") -> ModelManifest:
    """Validate a manifest's fields and freeze them; unknown or missing keys are errors."""
    where = f"{root / MANIFEST_NAME}" if root is not None else "manifest"
    unknown = sorted(set(data) - _FILE_FIELDS)
    if unknown:
        raise ModelLoadError(f"{where}: unknown keys {', '.join(unknown)}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ModelLoadError(f"{where}: missing keys {', '.join(missing)}")

    def expect(name: str, cond: bool, what: str) -> None:
        if not cond:
            raise ModelLoadError(f"{where}: {name} must be {what}; got {data.get(name)!r}")

    d = dict(data)
    expect("id", isinstance(d["id"], str) and bool(_ID_RE.match(d["id"])),
           "lowercase letters, digits, '.', '_' or '-'")
    expect("task", d["task"] in TASKS, f"one of {', '.join(TASKS)}")
    expect("input", d["input"] in INPUT_KINDS, f"one of {', '.join(INPUT_KINDS)}")
    expect("output", d.get("output", "image") in OUTPUT_KINDS, f"one of {', '.join(OUTPUT_KINDS)}")
    for key in ("channels", "precisions", "conditioning", "value_range", "ensemble", "ensemble_full"):
        if key in d:
            expect(key, isinstance(d[key], list), "a list")
            d[key] = tuple(d[key])
    expect("precisions", set(d.get("precisions", ("fp32",))) <= set(PRECISIONS),
           f"a list of {', '.join(PRECISIONS)}")
    expect("precisions", "int8" not in d.get("precisions", ()) or tuple(d["precisions"]) == ("int8",),
           "[\"int8\"] alone for an int8 model (it has no float precisions to choose from)")
    for key in ("ensemble", "ensemble_full"):
        expect(key, set(d.get(key, ())) <= set(ENSEMBLE_TRANSFORMS), f"a list of {', '.join(ENSEMBLE_TRANSFORMS)}")
    if d.get("int8_of"):
        expect("int8_of", isinstance(d["int8_of"], str) and bool(_ID_RE.match(d["int8_of"]))
               and tuple(d.get("precisions", ())) == ("int8",), "a model id, in an int8 model's manifest")
    if d.get("jpeg_constraint") is not None:
        expect("jpeg_constraint", isinstance(d["jpeg_constraint"], (int, float))
               and not isinstance(d["jpeg_constraint"], bool) and 0 <= d["jpeg_constraint"] <= MAX_SHRINK,
               f"a number from 0 to {MAX_SHRINK} (the interval shrink)")
    for key in ("tileable", "default", "keep_samples", "stand_in_with_bf16"):
        if key in d:
            expect(key, isinstance(d[key], bool), "true or false")
    expect("channels", all(c in (1, 3) for c in d.get("channels", (3,))), "a list of 1 and/or 3")
    for key in ("scale", "overlap", "align", "clip_context", "max_tile"):
        if key in d:
            expect(key, isinstance(d[key], int) and not isinstance(d[key], bool)
                   and d[key] >= (0 if key in ("overlap", "clip_context", "max_tile") else 1), "a positive integer")
    for key in ("params", "metrics"):
        if key in d:
            expect(key, isinstance(d[key], dict), "a table")
            d[key] = MappingProxyType(dict(d[key]))
    if d.get("weights") is not None:
        expect("weights", isinstance(d["weights"], str) and d["weights"].endswith(".safetensors")
               and "/" not in d["weights"] and "\\" not in d["weights"],
               "a .safetensors file name inside the model folder")
    if d.get("sha256") is not None:
        expect("sha256", isinstance(d["sha256"], str) and bool(re.fullmatch(r"[0-9a-f]{64}", d["sha256"])),
               "64 lowercase hex digits")
    return ModelManifest(**d, root=root, source=source)


def read_manifest(folder: Path, source: str = "built-in") -> ModelManifest:
    """Read and validate ``folder/manifest.toml``."""
    path = folder / MANIFEST_NAME
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from exc
    return parse_manifest(data, root=folder, source=source)


@dataclass(frozen=True)
class RegistryIssue:
    """A model folder or plugin that could not be used, with the reason."""

    source: str
    message: str


@dataclass
class LoadedModel:
    """A built model with its weights in, ready for the engine."""

    manifest: ModelManifest
    module: nn.Module
    weights_sha256: str | None = None


def stands_in(form: ModelManifest, model: ModelManifest, fast_bf16: bool | None = None) -> bool:
    """Whether the int8 model ``form`` stands in for ``model`` as the default on a CPU with fast int8:
    where its ``int8_of`` names ``model``, unless its manifest sets ``stand_in_with_bf16 = false`` and
    ``model`` runs in bf16 here (it allows bf16 and ``fast_bf16``, the CPU has AMX:
    :func:`~restore_app.core.engine.cpu_has_fast_bf16`, found out when ``None``)."""
    if form.int8_of != model.id:
        return False
    if form.stand_in_with_bf16 or "bf16" not in model.precisions:
        return True
    if fast_bf16 is None:
        from restore_app.core.engine import cpu_has_fast_bf16

        fast_bf16 = cpu_has_fast_bf16()
    return not fast_bf16


def default_model_paths() -> list[tuple[Path, str]]:
    """The folders searched for models, with their source labels, in priority order."""
    paths: list[tuple[Path, str]] = []
    for entry in os.environ.get("RESTORE_MODELS_PATH", "").split(os.pathsep):
        if entry:
            paths.append((Path(entry), "RESTORE_MODELS_PATH"))
    paths.append((builtin_models_dir(), "built-in"))
    paths.append((user_data_dir() / "models", "user"))
    return paths


def resolve_architecture(name: str) -> type[nn.Module]:
    """Import the class a manifest's ``architecture`` names (built-in name or ``"module:Class"``)."""
    target = ARCHITECTURES.get(name, name if ":" in name else None)
    if target is None:
        raise ModelLoadError(f"unknown architecture {name!r}; built-in ones are "
                             f"{', '.join(sorted(ARCHITECTURES))} (plugins write 'module:Class')")
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, attr)
    except Exception as exc:  # a plugin's import can fail in any way
        raise ModelLoadError(f"cannot import architecture {target!r}: {type(exc).__name__}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"architecture {target!r} is not a torch.nn.Module class")
    return cls


_SHA_CACHE: dict[tuple[str, int, int], str] = {}
_SHA_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, cached by path, size and modification time."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _SHA_LOCK:
        if key in _SHA_CACHE:
            return _SHA_CACHE[key]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    value = digest.hexdigest()
    with _SHA_LOCK:
        _SHA_CACHE[key] = value
    return value


def load_weights(module: nn.Module, path: Path, sha256: str | None = None) -> str:
    """Load safetensors weights into ``module`` with strict key and shape checks; returns the hash."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise ModelLoadError(f"{path}: weights file is missing")
    actual = file_sha256(path)
    if sha256 is not None and actual != sha256:
        raise ModelLoadError(f"{path}: sha256 {actual[:12]}… does not match the manifest's "
                             f"{sha256[:12]}… (corrupt or replaced file)")
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({exc})") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:8])}{' …' if len(unexpected) > 8 else ''}")
        if wrong:
            parts.append("wrong shape " + ", ".join(
                f"{k} {tuple(state[k].shape)}≠{tuple(expected[k].shape)}" for k in wrong[:8]))
        raise ModelLoadError(f"{path}: weights do not fit the architecture: {'; '.join(parts)}")
    module.load_state_dict(state, strict=True)
    return actual


def build_module(manifest: ModelManifest) -> nn.Module:
    """Construct the manifest's architecture with its params, without loading any weights."""
    cls = resolve_architecture(manifest.architecture)
    try:
        return cls(**dict(manifest.params))
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"model {manifest.id!r}: cannot build {manifest.architecture} with "
                             f"params {dict(manifest.params)}: {exc}") from exc


def build_model(manifest: ModelManifest) -> LoadedModel:
    """Construct the manifest's architecture with its params and load its weights (on the CPU)."""
    module = build_module(manifest)
    sha = None
    if manifest.weights is not None:
        sha = load_weights(module, manifest.weights_path, manifest.sha256)
    elif any(True for _ in module.parameters()):
        raise ModelLoadError(f"model {manifest.id!r} has trainable parameters but no weights file")
    return LoadedModel(manifest=manifest, module=module.eval(), weights_sha256=sha)


def _entry_point_folder(ep: importlib.metadata.EntryPoint) -> Path:
    """Locate a plugin's model folder (``"package:folder"``) without running the package's code."""
    module, _, attr = ep.value.partition(":")
    if not attr:
        raise ModelLoadError(f"entry point {ep.name} = {ep.value!r} must be 'package:folder'")
    spec = importlib.util.find_spec(module.strip())
    if spec is None:
        raise ModelLoadError(f"package {module!r} is not installed")
    if spec.submodule_search_locations:
        base = Path(list(spec.submodule_search_locations)[0])
    elif spec.origin:
        base = Path(spec.origin).parent
    else:
        raise ModelLoadError(f"cannot locate package {module!r}")
    folder = base / attr.strip()
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: plugin model folder does not exist")
    return folder


class Registry:
    """All models Restore knows, found on first use and cached.

    ``paths`` overrides the searched folders (a list of ``(folder, source label)``);
    ``entry_points=False`` ignores installed plugins.
    """

    def __init__(self, paths: Sequence[tuple[Path, str]] | None = None,
                 entry_points: bool = True) -> None:
        self._paths = list(paths) if paths is not None else None
        self._use_entry_points = entry_points
        self._manifests: dict[str, ModelManifest] | None = None
        self._issues: list[RegistryIssue] = []
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Forget what was found; the next query scans again."""
        with self._lock:
            self._manifests = None

    def _scan(self) -> dict[str, ModelManifest]:
        with self._lock:
            if self._manifests is not None:
                return self._manifests
            found: dict[str, ModelManifest] = {}
            issues: list[RegistryIssue] = []
            sources = list(self._paths if self._paths is not None else default_model_paths())
            if self._use_entry_points:
                for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                    try:
                        sources.append((_entry_point_folder(ep), f"plugin:{ep.name}"))
                    except Exception as exc:  # a broken plugin must not stop the app
                        issues.append(RegistryIssue(f"plugin:{ep.name}", str(exc)))
            for folder, label in sources:
                if not folder.is_dir():
                    continue
                for sub in sorted(p for p in folder.iterdir() if (p / MANIFEST_NAME).is_file()):
                    try:
                        manifest = read_manifest(sub, source=label)
                    except ModelLoadError as exc:
                        issues.append(RegistryIssue(label, str(exc)))
                        continue
                    if manifest.id in found:
                        issues.append(RegistryIssue(label, f"{sub}: model id {manifest.id!r} is already "
                                                           f"defined by {found[manifest.id].root}"))
                        continue
                    found[manifest.id] = manifest
            self._manifests, self._issues = found, issues
            return found

    @property
    def issues(self) -> list[RegistryIssue]:
        """Model folders and plugins that failed to load, with reasons."""
        self._scan()
        return list(self._issues)

    def manifests(self, task: str | None = None) -> list[ModelManifest]:
        """Every manifest (of one ``task`` if given), sorted by task then id."""
        items = self._scan().values()
        return sorted((m for m in items if task is None or m.task == task), key=lambda m: (m.task, m.id))

    def ids(self) -> list[str]:
        return sorted(self._scan())

    def get(self, model_id: str) -> ModelManifest:
        """The manifest of ``model_id``; an unknown id raises an error listing the known ones."""
        found = self._scan()
        if model_id not in found:
            known = ", ".join(sorted(found)) or "(none)"
            raise ModelNotFoundError(f"unknown model {model_id!r}; known models: {known}")
        return found[model_id]

    def default(self, task: str, grey: bool = False, int8: bool = False,
                fast_bf16: bool | None = None) -> ModelManifest:
        """The task's default model (``default = true`` in its manifest, else the first by id).

        A task may mark a colour and a grey default: for ``grey`` input the one that takes one
        channel is preferred, otherwise one that takes three. With ``int8`` (where int8 models are
        fast: :func:`restore_app.core.int8.preferred`), an int8 model whose ``int8_of`` names the
        default stands in for it, unless it defers to the float model in bf16 (:func:`stands_in`;
        ``fast_bf16``: whether this CPU has fast bf16, ``None`` = find out).
        """
        candidates = self.manifests(task)
        if not candidates:
            raise ModelNotFoundError(f"no model for task {task!r}")
        marked = [m for m in candidates if m.default] or candidates[:1]
        fits = [m for m in marked if (1 if grey else 3) in m.channels]
        chosen = (fits or marked)[0]
        forms = [m for m in candidates if int8 and stands_in(m, chosen, fast_bf16)]
        return forms[0] if forms else chosen

    def load(self, model: str | ModelManifest) -> LoadedModel:
        """Build a model by id or manifest, with its weights loaded (on the CPU)."""
        manifest = self.get(model) if isinstance(model, str) else model
        return build_model(manifest)


_default_registry: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry over the default folders and installed plugins."""
    global _default_registry
    if _default_registry is None:
        _default_registry = Registry()
    return _default_registry
