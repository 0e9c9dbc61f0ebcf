"""``restore train vsr``: video super-resolution from clips synthesised out of still photos.

Each training volume is ``frames`` consecutive views of a BSDS500 photo under a random camera
motion (translation, zoom and a small rotation, constant over the clip), rendered with bicubic
warps, optionally motion-blurred along the motion, then shrunk ×``scale`` with MATLAB bicubic,
given a little noise and rounded to 8 bits: the low-resolution clip; the sharp views are the target.
``arch`` picks BRCN (``brcn``), its feedforward-only ablation (``brcn_ff``) or the improved network
(``recurrent_vsr``). BRCN works on luminance, the improved network on RGB. Validation: clips made
the same way (fixed seed) from ``val_holdout`` held-out photos; the score is their mean Y PSNR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file

from restore_app.core.archs.brcn import BRCN
from restore_app.core.archs.vsr_net import RecurrentVSR
from restore_app.core.checks import check_choice
from restore_app.core.color import rgb_to_y
from restore_app.core.degrade import downsample
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.errors import InputError
from restore_app.core.evaluate import list_images
from restore_app.core.metrics import psnr
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import LoadedModel, parse_manifest
from restore_app.core.train.data import bsds_train_val, image_files, load_images
from restore_app.core.train.loop import TrainConfig

ARCHS = ("brcn", "brcn_ff", "recurrent_vsr")


@dataclass
class VSRTrainConfig(TrainConfig):
    out: Path = Path("runs/vsr")
    arch: str = "recurrent_vsr"
    loss: str = "l1"
    patch: int = 24  # low-resolution patch side
    batch: int = 4
    scale: int = 4
    frames: int = 10
    data: tuple[Path, ...] = field(default_factory=bsds_train_val)
    val_holdout: int = 10
    max_shift: float = 2.0     # low-resolution pixels per frame
    max_zoom: float = 0.015    # relative zoom per frame
    max_rotate: float = 0.5    # degrees per frame
    blur_prob: float = 0.3
    noise_max: float = 2.0     # σ of the low-resolution noise, 8-bit units
    width: int = 48
    blocks: int = 4
    init_ablation: Path | None = None  # brcn: start from a trained brcn_ff (recurrent/conditional at 0)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.arch, ARCHS, "arch")
        if self.init_ablation is not None:
            self.init_ablation = Path(self.init_ablation)
            if self.arch != "brcn":
                raise InputError("init_ablation applies to arch brcn only")
        check_choice(self.scale, (2, 4), "scale")
        self.data = tuple(Path(d) for d in self.data)

    @property
    def channels(self) -> int:
        return 3 if self.arch == "recurrent_vsr" else 1


def build(cfg: VSRTrainConfig) -> torch.nn.Module:
    if cfg.arch == "recurrent_vsr":
        return RecurrentVSR(channels=3, width=cfg.width, blocks=cfg.blocks, scale=cfg.scale)
    net = BRCN(scale=cfg.scale, recurrent=cfg.arch == "brcn", conditional=cfg.arch == "brcn")
    if cfg.arch == "brcn":
        # the recurrent and conditional connections start at zero: BRCN starts as its ablation
        for name, p in net.named_parameters():
            if name.split(".")[1][0] in "rt":
                torch.nn.init.zeros_(p)
        if cfg.init_ablation is not None:
            state = load_file(str(cfg.init_ablation))
            missing, unexpected = net.load_state_dict(state, strict=False)
            if unexpected or any(k.split(".")[1][0] not in "rt" for k in missing):
                raise InputError(f"{cfg.init_ablation}: not the weights of a BRCN feedforward ablation")
    return net


def manifest_fields(cfg: VSRTrainConfig) -> dict:
    params = ({"channels": 3, "width": cfg.width, "blocks": cfg.blocks, "scale": cfg.scale}
              if cfg.arch == "recurrent_vsr" else
              {"scale": cfg.scale, "recurrent": cfg.arch == "brcn", "conditional": cfg.arch == "brcn"})
    names = {"brcn": "BRCN (Huang et al. 2015)", "brcn_ff": "BRCN feedforward-only ablation (single frame)",
             "recurrent_vsr": "Restore recurrent video super-resolution"}
    return {
        "id": {"brcn": "brcn", "brcn_ff": "brcn-ff", "recurrent_vsr": "restore-vsr"}[cfg.arch] + f"-x{cfg.scale}",
        "task": "vsr", "name": f"{names[cfg.arch]} ×{cfg.scale}",
        "architecture": "recurrent_vsr" if cfg.arch == "recurrent_vsr" else "brcn", "params": params,
        "input": "clip", "channels": [cfg.channels], "scale": cfg.scale, "overlap": 16, "clip_context": 6,
        "max_tile": 512,  # a tile holds a whole chunk of frames: 2.5 GB peak at 512 (CARD.md)
        "precisions": ["fp32", "bf16", "fp16"], "license": "MIT",
        "training_data": "clips synthesised from BSDS500 train+val (BIDS/BSDS500 a04b7c6) photos with random "
                         "camera motion, less the validation hold-out",
    }


def synth_clip(image: np.ndarray, rng: np.random.Generator, cfg: VSRTrainConfig,
               lr_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lr, hr)``: ``(T, p, p, 3)`` uint8-valued float low-resolution frames and their sharp views."""
    s, t = cfg.scale, cfg.frames
    hr_size = lr_size * s
    v = rng.uniform(-cfg.max_shift, cfg.max_shift, size=2) * s        # HR pixels per frame
    zoom = rng.uniform(-cfg.max_zoom, cfg.max_zoom)
    rot = math.radians(rng.uniform(-cfg.max_rotate, cfg.max_rotate))
    h, w = image.shape[:2]
    reach = np.abs(v) * (t - 1) / 2 + hr_size * (1 + abs(zoom) * t) * 0.75
    cx = rng.uniform(reach[0], max(reach[0] + 1, w - reach[0]))
    cy = rng.uniform(reach[1], max(reach[1] + 1, h - reach[1]))
    blur = rng.random() < cfg.blur_prob
    hr_frames = []
    for k in range(t):
        off = k - (t - 1) / 2
        scale, angle = (1 + zoom) ** off, rot * off
        centre = np.array([cx, cy]) + v * off
        frame = _render(image, centre, scale, angle, hr_size)
        if blur and np.hypot(*v) > 1:
            frame = _motion_blur(frame, v)
        hr_frames.append(frame)
    hr = np.stack(hr_frames).astype(np.float32)
    sigma = rng.uniform(0, cfg.noise_max) / 255.0
    lr = np.stack([downsample(f, s) for f in hr])
    lr = lr + rng.standard_normal(lr.shape, dtype=np.float32) * np.float32(sigma)
    lr = np.clip(np.rint(lr * 255), 0, 255).astype(np.float32) / 255.0
    return lr, np.clip(hr, 0, 1)


def _render(image: np.ndarray, centre: np.ndarray, scale: float, angle: float, size: int) -> np.ndarray:
    """The ``size``×``size`` view centred on ``centre``, zoomed by ``scale`` and rotated by ``angle``."""
    c, sn = math.cos(angle) / scale, math.sin(angle) / scale
    half = (size - 1) / 2
    # output (x, y) → source: centre + R·(x − half, y − half)
    m = np.array([[c, -sn, centre[0] - c * half + sn * half],
                  [sn, c, centre[1] - sn * half - c * half]], dtype=np.float64)
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _motion_blur(frame: np.ndarray, v: np.ndarray) -> np.ndarray:
    length = int(min(9, max(2, round(np.hypot(*v) / 2))))
    kernel = np.zeros((length * 2 + 1, length * 2 + 1), np.float32)
    d = v / np.hypot(*v)
    for i in np.linspace(-length, length, 4 * length + 1):
        kernel[int(round(length + i * d[1])), int(round(length + i * d[0]))] = 1
    return cv2.filter2D(frame, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


class VSRTask:
    def __init__(self, cfg: VSRTrainConfig) -> None:
        self.cfg = cfg
        held_out = list_images(cfg.data[-1])[-cfg.val_holdout:] if cfg.val_holdout else []
        self.images = load_images(image_files(cfg.data, exclude=held_out))
        val_images = load_images(held_out)
        rng = np.random.default_rng(12345)
        self.val_clips = [synth_clip(im, rng, cfg, 48) for im in val_images]
        self.model = build(cfg)

    def _planes(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) → (T, C, H, W) in the model's channels (Y for BRCN)."""
        if self.cfg.channels == 1:
            return rgb_to_y(frames).astype(np.float32)[:, None]
        return frames.transpose(0, 3, 1, 2)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(size):
            lr, hr = synth_clip(self.images[rng.integers(len(self.images))], rng, self.cfg, self.cfg.patch)
            xs.append(self._planes(lr))
            ys.append(self._planes(hr))
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        # the losses take (B, C, H, W): time is folded into the batch, here and in predict()
        return x, y.reshape(-1, *y.shape[2:])

    @staticmethod
    def predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        return out.reshape(-1, *out.shape[2:])

    def validate(self, model: torch.nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        manifest = parse_manifest({**manifest_fields(self.cfg), "id": "validation"})
        restorer = Restorer(LoadedModel(manifest, model),
                            Engine(EngineConfig(device=str(device), precision=precision, tile=0)))
        values = []
        for lr, hr in self.val_clips:
            frames = [np.rint(f * 255).astype(np.uint8) for f in lr]
            for out, ref in zip(restorer.restore_frames(frames), hr, strict=True):
                values.append(psnr(rgb_to_y(np.rint(ref * 255)), rgb_to_y(out.astype(np.float64)), 255.0))
        return {"psnr_y": float(np.mean(values)), "score": float(np.mean(values))}
