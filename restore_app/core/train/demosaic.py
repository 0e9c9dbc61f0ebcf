"""``restore train demosaic``: joint demosaicing and denoising.

Patches come from BSDS500 train+val shrunk ×2 (so the camera's demosaicing and JPEG traces are not in
the target), flipped/rotated and jittered in exposure and colour, then mosaicked (RGGB) and given
Gaussian noise of σ uniform in [0, ``sigma_max``]/255 or, with probability ``sensor_prob``,
Poisson-Gaussian sensor noise of the same range. The model also receives the noise map. Validation:
``val_holdout`` images of the last data folder, never trained on, at σ = 0, 10 and 20 (the
demosaic eval protocol's PSNR, 10-pixel crop); the score is their mean PSNR. ``int8`` trains the
network's int8 form (:class:`~restore_app.core.archs.demosaic_net.DemosaicNetInt8`, quantisation-aware
training) from ``--init`` fp32 weights; it exports as ``restore-dm-int8``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from restore_app.core import int8
from restore_app.core.archs.demosaic_net import DemosaicNet, DemosaicNetInt8
from restore_app.core.checks import check_range
from restore_app.core.degrade import add_gaussian_noise, add_poisson_gaussian_noise, mosaic
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.errors import InputError
from restore_app.core.evaluate import list_images
from restore_app.core.metrics import psnr
from restore_app.core.noise import sensor_noise_map
from restore_app.core.pipeline import Restorer
from restore_app.core.registry import ENSEMBLE_TRANSFORMS, LoadedModel, parse_manifest
from restore_app.core.train.data import (
    Jitter,
    PatchSampler,
    bsds_train_val,
    dead_leaves,
    image_files,
    load_images,
    saturate,
)
from restore_app.core.train.loop import TrainConfig, int8_precision


@dataclass
class DemosaicTrainConfig(TrainConfig):
    out: Path = Path("runs/demosaic")
    loss: str = "l1"  # stage 1; stage 2 fine-tunes with --loss mix --init (see the model card)
    data: tuple[Path, ...] = field(default_factory=bsds_train_val)
    val_holdout: int = 20
    downscale: int = 2
    sigma_max: float = 20.0
    sensor_prob: float = 0.3
    zero_noise_prob: float = 0.0  # share of patches with no noise at all (σ = 0 exactly)
    hard_prob: float = 0.0  # share of patches mined as the hardest of ``hard_candidates`` for bilinear
    hard_candidates: int = 4
    synthetic_prob: float = 0.0  # share of patches that are synthetic dead leaves (data.dead_leaves)
    saturation: float = 1.0  # chroma gain up to this (1 = off), on ``saturation_prob`` of patches
    saturation_prob: float = 0.0
    luma_contrast: float = 1.0  # on those patches, luma contrast × a factor down to this (1 = off)
    val_saturation: float = 0.0  # > 0: also validate noise-free on the hold-out with chroma × this
    val_luma_contrast: float = 1.0  # ... and luma contrast × this
    width: int = 64
    blocks: int = 7
    refine: int = 16  # channels of the full-resolution 3×3 convolution (Gharbi et al.'s: 64)
    int8: bool = False  # quantisation-aware training of the int8 network (start it with --init fp32 weights)
    calibrate: int = 0  # int8: set the activation ranges from histograms of this many batches, then keep them

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = tuple(Path(d) for d in self.data)
        check_range(self.calibrate, 0, None, "calibrate")
        check_range(self.luma_contrast, 0.0, 1.0, "luma_contrast")
        check_range(self.synthetic_prob, 0.0, 1.0, "synthetic_prob")
        check_range(self.val_luma_contrast, 0.0, 1.0, "val_luma_contrast")
        if self.calibrate and not self.int8:
            raise InputError("--calibrate sets the ranges of an int8 network: give --int8 too")
        if self.int8:
            self.precision = int8_precision(self.precision)


def manifest_fields(cfg: DemosaicTrainConfig) -> dict:
    """The manifest of a model trained with ``cfg`` (weights and sha256 are added on export)."""
    fields = _float_manifest_fields(cfg)
    if not cfg.int8:
        return fields
    return {**fields, "id": "restore-dm-int8", "name": "Restore joint demosaicing and denoising (int8)",
            "description": fields["description"][:-1] + ", with 8-bit weights and activations at quarter "
                           "resolution, trained for them. By default it averages three passes, in a quarter of the "
                           "time of the fp32 model's default on CPUs with VNNI int8 instructions, where it is the "
                           "default demosaicer. On CPUs with AMX the fp32 model, run in bf16, stays the default: its "
                           "four passes fit the same time there and restore better.",
            "architecture": "demosaic_net_int8", "precisions": ["int8"], "int8_of": fields["id"],
            # on AMX the fp32 model's default runs in bf16 within issue 3's time budget and is better noise-free
            "stand_in_with_bf16": False,
            # its passes are cheap enough for a third: the transposed and the turned mosaic, chosen on
            # validation (CARD.md); it then restores as well as the fp32 model's four-pass default with
            # noise and 0.19 dB below it noise-free (on validation)
            "ensemble": ["transpose", "rot180"]}


def _float_manifest_fields(cfg: DemosaicTrainConfig) -> dict:
    receptive = 2 * (2 * cfg.blocks + 2) + 2  # quarter-resolution 3×3 stack, then full-resolution convs
    return {
        "id": "restore-dm", "task": "demosaic", "name": "Restore joint demosaicing and denoising",
        "description": "Neural joint demosaicing and denoising for Bayer mosaics and camera RAW files, "
                       "conditioned on the noise level (given or estimated); one model for every pattern "
                       "and noise level.",
        "architecture": "demosaic_net", "params": {"width": cfg.width, "blocks": cfg.blocks,
                                                   **({"refine": cfg.refine} if cfg.refine != 16 else {})},
        "input": "cfa", "channels": [3], "conditioning": ["sigma"], "align": 2,
        # self-ensembles chosen on validation within a time budget (CARD.md): the transpose, the turn
        # by 180° and the anti-transpose (4 passes); all 8 symmetries for "full"
        "ensemble": ["transpose", "rot180", "antitranspose"], "ensemble_full": list(ENSEMBLE_TRANSFORMS),
        "keep_samples": True,  # a noise-free mosaic's samples are exact (+0.09 dB on validation at σ = 0)
        "overlap": int(np.ceil(receptive / 0.75 / 2) * 2), "precisions": ["fp32", "bf16", "fp16"],
        "license": "MIT",
        "training_data": "BSDS500 train+val (BIDS/BSDS500 a04b7c6) shrunk ×2, less the validation hold-out",
    }


def widen_refine(state: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its full-resolution refinement convolution widened to ``fresh``'s channel count.

    The added channels keep ``fresh``'s (random) initial weights and the 1×1 output convolution reads
    them with zero weights, so the widened network computes exactly what ``state``'s did and the new
    channels start learning from the first step (net2wider-style). Equal widths: ``state`` unchanged."""
    have, want = state["refine.weight"].shape[0], fresh["refine.weight"].shape[0]
    if have == want:
        return state
    if have > want:
        raise InputError(f"--init weights have {have} refinement channels, more than --refine {want}")
    out = dict(state)
    out["refine.weight"] = torch.cat([state["refine.weight"], fresh["refine.weight"][have:].to(state["refine.weight"])])
    out["refine.bias"] = torch.cat([state["refine.bias"], fresh["refine.bias"][have:].to(state["refine.bias"])])
    w = state["out.weight"]
    out["out.weight"] = torch.cat([w, w.new_zeros(w.shape[0], want - have, *w.shape[2:])], dim=1)
    return out


def deepen_body(state: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float ``state`` with the residual blocks that ``fresh`` has beyond its own appended from
    ``fresh``: a new block starts as the identity (its second convolution is zero), so the deeper
    network computes what ``state``'s did."""
    have = {k.split(".")[1] for k in state if k.startswith("body.")}
    want = {k.split(".")[1] for k in fresh if k.startswith("body.")}
    if len(have) > len(want):
        raise InputError(f"--init weights have {len(have)} residual blocks, more than --blocks {len(want)}")
    return {**state, **{k: v for k, v in fresh.items() if k.startswith("body.") and k.split(".")[1] not in have}}


def _bilinear_error(rgb: np.ndarray) -> float:
    """Mean absolute error of OpenCV's bilinear demosaicing of ``rgb``'s RGGB mosaic."""
    m16 = np.rint(mosaic(rgb, "RGGB") * 65535).astype(np.uint16)
    out = cv2.cvtColor(m16, cv2.COLOR_BayerBG2RGB).astype(np.float32) / 65535
    return float(np.abs(out[2:-2, 2:-2] - rgb[2:-2, 2:-2]).mean())


class DemosaicTask:
    def __init__(self, cfg: DemosaicTrainConfig) -> None:
        self.cfg = cfg
        held_out = list_images(cfg.data[-1])[-cfg.val_holdout:] if cfg.val_holdout else []
        self.val_files = held_out
        self.sampler = PatchSampler(load_images(image_files(cfg.data, exclude=held_out), cfg.downscale),
                                    cfg.patch, Jitter(saturation=cfg.saturation,
                                                      saturation_prob=cfg.saturation_prob,
                                                      luma_contrast=cfg.luma_contrast))
        self.val_images = load_images(held_out, cfg.downscale)
        # the same hold-out with chroma × val_saturation and luma contrast × val_luma_contrast
        # (vivid colours of similar brightness), made once
        self.vivid_images = [saturate(np.rint(im * 255) / 255, cfg.val_saturation, cfg.val_luma_contrast)
                             for im in self.val_images] if cfg.val_saturation > 0 else []
        self.model = self._network()

    def _network(self) -> DemosaicNet | DemosaicNetInt8:
        if not self.cfg.int8:
            return DemosaicNet(width=self.cfg.width, blocks=self.cfg.blocks, refine=self.cfg.refine)
        net = DemosaicNetInt8(width=self.cfg.width, blocks=self.cfg.blocks, refine=self.cfg.refine)
        net.learn_ranges = not self.cfg.calibrate  # calibrated ranges are kept as they are
        return net

    def init_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``--init`` weights: for the int8 network, int8 weights as they are and fp32 ones with fresh
        quantiser ranges, which the first training batches set; with ``calibrate``, the ranges are
        then set from histograms of that many training batches (:func:`~restore_app.core.int8.calibrate_ranges`).
        Float weights with fewer residual blocks or a narrower full-resolution stage than asked for
        are grown without changing what they compute (:func:`deepen_body`, :func:`widen_refine`)."""
        quantised = any(k.startswith("qat.") for k in state)
        fresh = DemosaicNet(self.cfg.width, self.cfg.blocks, self.cfg.refine).state_dict()
        state = widen_refine(state if quantised else deepen_body(state, fresh), fresh)
        if not self.cfg.int8:
            return state
        net = self._network()
        if quantised:
            net.load_state_dict(state)
        else:
            net.load_float_state({k: v.cpu() for k, v in state.items()})
        if self.cfg.calibrate:
            rng = np.random.default_rng(self.cfg.seed + 1)  # batches of their own: training's are not drawn
            net.train()  # the fake-quantised graph, its ranges frozen (``learn_ranges`` is off)

            def feed() -> None:
                for _ in range(self.cfg.calibrate):
                    net(self.batch(rng, self.cfg.batch)[0])

            int8.calibrate_ranges(net.qat, feed)
        return net.state_dict()

    def _patch(self, rng: np.random.Generator) -> np.ndarray:
        """A random patch or, with probability ``hard_prob``, the one of ``hard_candidates`` that
        bilinear demosaicing gets most wrong (hard-case mining after Gharbi et al., with bilinear
        error standing in for their network's: it finds fine texture, moiré and colour edges).
        With probability ``synthetic_prob`` it is a synthetic dead-leaves patch instead."""
        if self.cfg.synthetic_prob > 0 and rng.random() < self.cfg.synthetic_prob:
            return dead_leaves(rng, self.cfg.patch)
        if self.cfg.hard_prob <= 0 or rng.random() >= self.cfg.hard_prob:
            return self.sampler(rng)
        candidates = [self.sampler(rng) for _ in range(max(1, self.cfg.hard_candidates))]
        return max(candidates, key=_bilinear_error)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        smax = self.cfg.sigma_max / 255.0
        inputs, targets = [], []
        for _ in range(size):
            clean = self._patch(rng)
            m = mosaic(clean, "RGGB")
            if rng.random() < self.cfg.zero_noise_prob:
                noisy, noise = m, np.zeros_like(m)
            elif rng.random() < self.cfg.sensor_prob:
                # sensor noise whose σ at mid-grey is in [0, sigma_max]: split between shot and read
                total = rng.uniform(0, smax)
                share = rng.uniform(0, 1)
                shot, read = 2 * share * total ** 2, np.sqrt(1 - share) * total
                noisy = add_poisson_gaussian_noise(m, shot, read, seed=rng)
                noise = sensor_noise_map(noisy, shot, read)
            else:
                sigma = rng.uniform(0, smax)
                noisy = add_gaussian_noise(m, sigma, seed=rng)
                noise = np.full_like(m, sigma)
            inputs.append(np.stack([noisy, noise]))
            targets.append(clean.transpose(2, 0, 1))
        return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))

    def validate(self, model: torch.nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        manifest = parse_manifest({**manifest_fields(self.cfg), "id": "validation"})
        restorer = Restorer(LoadedModel(manifest, model),
                            Engine(EngineConfig(device=str(device), precision=precision, tile=0,
                                                ensemble=self.cfg.val_ensemble)))
        u8 = lambda x: np.rint(np.clip(x, 0, 1) * 255)  # noqa: E731
        sets = [(f"psnr_s{sigma}", sigma, self.val_images) for sigma in (0, 10, 20)]
        if self.vivid_images:
            sets.append(("psnr_sat_s0", 0, self.vivid_images))
        scores = {}
        for name, sigma, images in sets:
            vals = []
            for i, clean in enumerate(images):
                noisy = add_gaussian_noise(mosaic(clean, "RGGB"), sigma / 255, seed=1000 + i)
                out = restorer.demosaic(noisy, sigma=sigma / 255)
                vals.append(psnr(u8(clean), u8(out), 255.0, crop=10))
            scores[name] = float(np.mean(vals))
        scores["score"] = float(np.mean(list(scores.values())))
        return scores
