"""``restore demo``: the main job on a bundled sample, for a first look and a smoke test.

For each task with a default model that applies to a photo, the bundled sample is degraded the way
the task expects (mosaic + noise, JPEG, ×4 downscale), restored by the task's default model and
scored against the original. Each task writes ``<task>_degraded.png``, ``<task>_restored.png`` and
``<task>_comparison.png`` (degraded | restored | original) and the run writes ``summary.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from restore_app.core import int8
from restore_app.core.engine import Engine
from restore_app.core.io import read_image, to_float, write_image
from restore_app.core.jobs import CancelToken, check_cancel
from restore_app.core.metrics import compare
from restore_app.core.paths import resources_dir
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import Registry, default_registry
from restore_app.core.simulate import Degradation, simulate
from restore_app.core.visual import comparison_strip

SAMPLE = "samples/coffee.png"


@dataclass(frozen=True)
class DemoResult:
    task: str
    model: str
    degradation: str
    psnr_degraded: float | None
    psnr: float
    ssim: float
    ms_ssim: float | None
    seconds: float
    files: tuple[str, ...]


def run_demo(out_dir: str | Path, engine: Engine | None = None, registry: Registry | None = None,
             sample: str | Path | None = None, cancel: CancelToken | None = None,
             log=print) -> list[DemoResult]:
    """Run every applicable task's default model on the sample; returns one result per task."""
    registry = registry or default_registry()
    engine = engine or Engine()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean = np.ascontiguousarray(to_float(read_image(sample or resources_dir() / SAMPLE))[..., :3])
    results: list[DemoResult] = []
    for degradation in (Degradation("mosaic", sigma=5), Degradation("jpeg", quality=15),
                        Degradation("downscale", factor=4)):
        check_cancel(cancel)
        task = degradation.task
        if not registry.manifests(task):
            continue
        manifest = registry.default(task, int8=int8.preferred(str(engine.device), engine.config.precision))
        if task == "vsr":
            degradation = Degradation("downscale", factor=manifest.scale)
        restorer = Restorer(registry.load(manifest), engine)
        sim = simulate(clean, degradation)
        label, shown = degradation.describe(), sim.display
        psnr_in = compare(sim.reference, sim.display).psnr if task == "jpeg" else None
        restored = restorer.restore_image(sim.model_input, sigma=sim.sigma, cancel=cancel)
        scores = compare(sim.reference, restored)
        files = []
        for name, img in (("degraded", shown), ("restored", restored)):
            files.append(str(write_image(out / f"{task}_{name}.png", img)))
        strip = comparison_strip([(f"input: {label}", shown), (f"{manifest.id}: {scores.psnr:.2f} dB", restored),
                                  ("original", sim.reference)])
        files.append(str(write_image(out / f"{task}_comparison.png", strip)))
        result = DemoResult(task=task, model=manifest.id, degradation=label, psnr_degraded=psnr_in,
                            psnr=scores.psnr, ssim=scores.ssim, ms_ssim=scores.ms_ssim,
                            seconds=restorer.seconds, files=tuple(files))
        results.append(result)
        log(f"{task:9s} {manifest.id:22s} {label:30s} PSNR {scores.psnr:6.2f} dB  SSIM {scores.ssim:.4f}  "
            f"({restorer.seconds:.2f} s)")
    (out / "summary.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results
