"""Settings that persist between sessions (plain Python, JSON on disk; no Qt)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from restore_app.core.checks import check_choice, check_range
from restore_app.core.engine import EngineConfig, ensemble_mode
from restore_app.core.errors import InputError
from restore_app.core.io.atomic import atomic_output
from restore_app.core.paths import user_config_dir

THEMES = ("system", "light", "dark")
MAX_RECENT = 10


@dataclass
class Settings:
    # the engine's settings start at the engine's own defaults
    device: str = EngineConfig.device
    precision: str = EngineConfig.precision
    tile: int = EngineConfig.tile
    ensemble: str = EngineConfig.ensemble  # "off" (one pass), "on" (model's default), "full" (best, slowest)
    jpeg_constraint: bool = EngineConfig.jpeg_constraint  # JPEG models: the quantisation constraint
    theme: str = "system"
    recent: list[str] = field(default_factory=list)
    last_folder: str = ""

    def validate(self) -> Settings:
        check_choice(self.device, ("auto", "cpu", "cuda", "mps"), "device")
        check_choice(self.precision, ("auto", "fp32", "bf16", "fp16"), "precision")
        check_range(self.tile, 0, 8192, "tile")
        self.ensemble = ensemble_mode(self.ensemble)  # older settings files hold true/false
        if not isinstance(self.jpeg_constraint, bool):
            raise InputError(f"jpeg_constraint must be true or false; got {self.jpeg_constraint!r}")
        check_choice(self.theme, THEMES, "theme")
        return self

    def add_recent(self, path: str | Path) -> None:
        """Put ``path`` first in the recent files, without duplicates, at most ``MAX_RECENT``."""
        p = str(Path(path).resolve())
        self.recent = [p] + [r for r in self.recent if r != p]
        del self.recent[MAX_RECENT:]

    def existing_recent(self) -> list[str]:
        return [r for r in self.recent if Path(r).exists()]


class SettingsStore:
    """Loads and saves :class:`Settings` as JSON; a damaged file falls back to the defaults."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or user_config_dir() / "settings.json"

    def load(self) -> Settings:
        try:
            data = json.loads(self.path.read_text())
            known = {f.name for f in fields(Settings)}
            return Settings(**{k: v for k, v in data.items() if k in known}).validate()
        except (OSError, ValueError, TypeError, InputError):
            return Settings()

    def save(self, settings: Settings) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(self.path) as tmp:
            tmp.write_text(json.dumps(asdict(settings.validate()), indent=2))
