"""The training loop every task shares: optimiser, schedule, mixed precision, checkpoints, resume,
logs, validation and export to a model folder.

A task supplies a model, a way to draw a batch and a validation; :func:`train` does the rest. The
run folder holds ``last.safetensors`` / ``best.safetensors`` (weights), ``state.pt`` (optimiser and
schedule, loaded with ``weights_only=True``), ``rng.json`` and ``log.jsonl``; running the same command
again resumes from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from restore_app.core.checks import check_choice, check_range
from restore_app.core.engine import cpu_has_fast_bf16, select_device
from restore_app.core.errors import InputError
from restore_app.core.io.atomic import atomic_output
from restore_app.core.jobs import CancelToken, check_cancel
from restore_app.core.losses import LOSSES


@dataclass
class TrainConfig:
    """Settings every task shares; each task's config adds its own fields."""

    out: Path = Path("runs/train")
    iterations: int = 40000
    batch: int = 16
    patch: int = 128
    lr: float = 5e-4
    lr_min: float = 1e-6
    warmup: int = 500
    loss: str = "mix"
    clip_grad: float = 1.0  # gradient-norm clipping; 0 disables
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    log_every: int = 50
    val_every: int = 1000
    init: Path | None = None  # fine-tune from these weights (transfer learning)
    val_ensemble: bool = False  # validate through the model's self-ensemble (default: its single pass)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        check_range(self.iterations, 1, None, "iterations")
        check_range(self.batch, 1, 4096, "batch")
        check_range(self.patch, 16, 4096, "patch")
        check_range(self.lr, 0.0, 1.0, "lr")
        check_choice(self.loss, self.loss_choices(), "loss")
        check_choice(self.precision, ("auto", "fp32", "bf16", "fp16"), "precision")
        if self.init is not None:
            self.init = Path(self.init)

    @classmethod
    def loss_choices(cls) -> tuple[str, ...]:
        """Losses this task accepts (the shared ones; a task with its own loss says so)."""
        return tuple(LOSSES)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (str(v) if isinstance(v := getattr(self, f.name), Path) else
                         [str(x) for x in v] if isinstance(v, tuple) else v) for f in fields(self)}


class Task(Protocol):
    """What a task gives the loop."""

    model: nn.Module

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, ...]:
        """``(inputs, targets)`` on the CPU, optionally followed by further tensors the task's
        ``predict`` takes after the inputs."""

    def validate(self, model: nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        """Scores on held-out data; must contain ``"score"`` (higher is better)."""

    # optional: ``predict(model, inputs, *extra)`` when the model's output needs reshaping for the loss
    # (``extra``: what ``batch`` returned after the targets), and
    # ``loss(pred, targets)`` for a task with a loss of its own


@dataclass
class TrainResult:
    iterations: int
    best_score: float
    best_iteration: int
    seconds: float
    out: Path


def train_precision(requested: str, device: torch.device) -> str:
    """bf16 autocast on a CPU with AMX (fp32 on other CPUs, where bf16 is slower: see
    :func:`~restore_app.core.engine.cpu_has_fast_bf16`), bf16 or fp16 AMP on a GPU."""
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise InputError("fp16 training is not supported on the CPU; use bf16 or fp32")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"


def int8_precision(precision: str) -> str:
    """The training precision of an int8 network (fake quantisers): fp32, the only one they take."""
    if precision not in ("auto", "fp32"):
        raise InputError(f"int8 training runs in fp32; got precision {precision!r}")
    return "fp32"


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay from ``lr`` to ``lr_min``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.iterations - cfg.warmup)
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(1.0, t)))


def _file_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as safetensors stores it: on the CPU, floats as fp32, integer buffers kept, and
    entries that share memory (one quantiser serving two places in an int8 graph) copied apart."""
    out, seen = {}, set()
    for key, value in state.items():
        value = value.detach().cpu()
        value = value.float() if value.is_floating_point() else value
        ptr = value.untyped_storage().data_ptr()
        if ptr and ptr in seen:
            value = value.clone()
        seen.add(ptr)
        out[key] = value.contiguous()
    return out


def _save_weights(model: nn.Module, path: Path) -> None:
    state = _file_tensors(model.state_dict())
    with atomic_output(path) as tmp:
        save_file(state, str(tmp))


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def train(task: Task, cfg: TrainConfig, *, log: Callable[[str], None] = print,
          cancel: CancelToken | None = None) -> TrainResult:
    """Train ``task.model`` for ``cfg.iterations`` steps, resuming from ``cfg.out`` if it holds a run."""
    out = cfg.out
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(cfg.device)
    precision = train_precision(cfg.precision, device)
    torch.manual_seed(cfg.seed)
    model = task.model.to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    rng = np.random.default_rng(cfg.seed)
    loss_fn = getattr(task, "loss", None) or LOSSES[cfg.loss]
    predict = getattr(task, "predict", None) or (lambda m, x: m(x))
    step, best, best_step, elapsed = 0, -math.inf, 0, 0.0

    state_path, rng_path = out / "state.pt", out / "rng.json"
    if (out / "last.safetensors").is_file() and state_path.is_file():
        model.load_state_dict(load_file(str(out / "last.safetensors"), device=str(device)))
        state = torch.load(state_path, map_location=device, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, best, best_step = int(state["step"]), float(state["best"]), int(state["best_step"])
        elapsed = float(state["seconds"])
        rng.bit_generator.state = json.loads(rng_path.read_text())
        log(f"resumed {out} at step {step} (best score {best:.4f} at {best_step})")
    elif cfg.init is not None:
        state = load_file(str(cfg.init), device=str(device))
        adapt = getattr(task, "init_state", None)  # a task may map other shapes (e.g. a shipped grey model)
        model.load_state_dict(adapt(state) if adapt else state)
        log(f"initialised from {cfg.init}")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))

    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16"
                               else torch.float16) if precision != "fp32" else contextlib.nullcontext())
    model.train()
    t0 = time.perf_counter() - elapsed
    running = 0.0
    while step < cfg.iterations:
        check_cancel(cancel)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        inputs, targets, *extra = task.batch(rng, cfg.batch)
        inputs = inputs.to(device, non_blocking=True)
        if device.type == "cpu" and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        targets = targets.to(device, non_blocking=True)
        extra = [t.to(device, non_blocking=True) for t in extra]
        with autocast:
            pred = predict(model, inputs, *extra)
        loss = loss_fn(pred.float(), targets)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        running += loss.item()
        step += 1
        if step % cfg.log_every == 0:
            sec = time.perf_counter() - t0
            _log(out / "log.jsonl", {"step": step, "loss": running / cfg.log_every,
                                     "lr": optimizer.param_groups[0]["lr"], "seconds": round(sec, 1)})
            log(f"step {step}/{cfg.iterations} loss {running / cfg.log_every:.5f} "
                f"lr {optimizer.param_groups[0]['lr']:.2e} ({sec / step:.3f} s/step)")
            running = 0.0
        if step % cfg.val_every == 0 or step == cfg.iterations:
            model.eval()
            scores = task.validate(model, device, precision)
            model.train()
            improved = scores["score"] > best
            if improved:
                best, best_step = scores["score"], step
                _save_weights(model, out / "best.safetensors")
            _save_weights(model, out / "last.safetensors")
            with atomic_output(state_path) as tmp:
                torch.save({"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                            "step": step, "best": best, "best_step": best_step,
                            "seconds": time.perf_counter() - t0}, tmp)
            with atomic_output(rng_path) as tmp:
                tmp.write_text(json.dumps(rng.bit_generator.state))
            _log(out / "log.jsonl", {"step": step, "val": scores, "best": improved})
            log(f"step {step}: validation " + " ".join(f"{k} {v:.4f}" for k, v in scores.items())
                + (" (best)" if improved else ""))
    return TrainResult(iterations=step, best_score=best, best_iteration=best_step,
                       seconds=time.perf_counter() - t0, out=out)


def best_validation(out: Path) -> dict[str, Any]:
    """The ``log.jsonl`` record (step, scores) of a run's best validated checkpoint."""
    path = out / "log.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    best = [r for r in records if r.get("best") and "val" in r]
    if not best or not (out / "best.safetensors").is_file():
        raise InputError(f"{out}: no validated best checkpoint")
    return best[-1]


def export_model(weights: Path | dict[str, torch.Tensor], folder: Path, manifest: dict[str, Any]) -> Path:
    """Write ``weights`` (a safetensors file or a state dict) into a model folder as
    ``weights.safetensors`` with a manifest and its sha256.

    The manifest's values are written as TOML; ``CARD.md`` is left for the author (it needs the
    measured table), but a stub is created if missing so the folder is complete. Re-exporting into a
    folder keeps its manifest's ``default`` mark (where the model stands in the zoo, not a property of
    the weights); its ``metrics`` are dropped, as they measured the weights being replaced.
    """
    folder.mkdir(parents=True, exist_ok=True)
    old = folder / "manifest.toml"
    if "default" not in manifest and old.is_file():
        with contextlib.suppress(OSError, tomllib.TOMLDecodeError), open(old, "rb") as fh:
            if (mark := tomllib.load(fh).get("default")) is not None:
                manifest = {**manifest, "default": mark}
    target = folder / "weights.safetensors"
    state = weights if isinstance(weights, dict) else load_file(str(weights))
    with atomic_output(target) as tmp:
        save_file(_file_tensors(state), str(tmp))
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    data = {**manifest, "weights": target.name, "sha256": digest}
    with atomic_output(folder / "manifest.toml") as tmp:
        tmp.write_text(to_toml(data))
    card = folder / "CARD.md"
    if not card.exists():
        card.write_text(f"# {manifest.get('name', folder.name)}\n\n(measurements to be added)\n")
    return folder


def to_toml(data: dict[str, Any]) -> str:
    """The small TOML subset manifests use: scalars, lists and one level of tables."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v), ensure_ascii=False)

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, dict) or k == "params"]
    for k, v in data.items():
        if isinstance(v, dict) and k != "params":
            lines += ["", f"[{k}]"] + [f"{json.dumps(str(kk))} = {value(x)}" for kk, x in v.items()]
    return "\n".join(lines) + "\n"


__all__ = ["Task", "TrainConfig", "TrainResult", "export_model", "lr_at", "to_toml", "train",
           "train_precision"]
