"""``restore train jpeg``: one blind model for JPEG artifacts at every quality, colour and grey.

Each patch is cut from BSDS500 train+val, flipped/rotated, rounded to 8 bits and compressed with
OpenCV at a quality uniform in [``q_min``, ``q_max``] (4:2:0 chroma for colour); with probability
``grey_prob`` it is made grey first and compressed as a grey JPEG; with probability ``double_prob``
it is compressed twice, at two qualities, the second time on a grid shifted by up to 7 pixels.
Validation: ``val_holdout`` held-out images at quality 10, 30 and 90 in colour and 10 in grey; the
score is their mean PSNR. ``downscale = 2`` shrinks training and validation photos first (MATLAB
bicubic), which removes the 8×8 traces of the camera's own JPEG from the targets. With
``grey_prob = 1`` the model is a grey specialist (fine-tuned from the blind colour model, for
greyscale files): it is trained with R = G = B, validated and exported as the one-channel network,
in grey at quality 10, 30 and 90. ``train_constraint`` trains through the quantisation constraint
the engine applies after the network (:mod:`restore_app.core.quantization`, with the manifests'
shrink and the encoder's own table): the loss sees the output with its luma coefficients clipped into
their intervals, so the network is not asked to fix what the constraint will. ``int8`` trains the
int8 form of the network (:class:`~restore_app.core.archs.jpeg_unet.JpegUNetInt8`, quantisation-aware
training) from ``--init`` fp32 weights; it exports as ``<id>-int8``. ``distill`` names a trained fp32
network (weights file, one or three channels) as a teacher: its self-ensemble over ``distill_ensemble``
(run on the CPU in fp32, through the constraint when training through it) becomes a second target,
weighted ``distill_weight`` against the clean patch, so a student (an int8 form, above all) learns
the teacher's averaged output rather than the noisier target alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from restore_app.core.archs.jpeg_unet import JpegUNet, JpegUNetInt8, colour_state, grey_state
from restore_app.core.checks import check_range
from restore_app.core.color import rgb_to_y
from restore_app.core.degrade import jpeg_compress
from restore_app.core.engine import Engine, EngineConfig
from restore_app.core.errors import InputError
from restore_app.core.evaluate import list_images
from restore_app.core.losses import LOSSES
from restore_app.core.metrics import psnr
from restore_app.core.pipeline import TRANSFORMS, Restorer, ensemble_transforms, with_ensemble
from restore_app.core.quantization import clip_tensor, ijg_table, intervals
from restore_app.core.registry import LoadedModel, parse_manifest
from restore_app.core.train.data import PatchSampler, bsds_train_val, image_files, load_images
from restore_app.core.train.loop import TrainConfig, export_model, int8_precision

JPEG_CONSTRAINT = 0.15  # the shipped models' interval shrink (manifest ``jpeg_constraint``)


@dataclass
class JpegTrainConfig(TrainConfig):
    out: Path = Path("runs/jpeg")
    loss: str = "l1"
    data: tuple[Path, ...] = field(default_factory=bsds_train_val)
    val_holdout: int = 20
    q_min: int = 5
    q_max: int = 95
    grey_prob: float = 0.25
    double_prob: float = 0.2
    downscale: int = 1  # 2: shrink the photos first, so the camera's own JPEG traces leave the targets
    train_constraint: bool = False  # the loss sees the output after the quantisation constraint
    widths: str = "48,96,128"
    blocks: str = "1,2,3"
    int8: bool = False  # quantisation-aware training of the int8 network (start it with --init fp32 weights)
    freeze_ranges: bool = False  # int8: keep the activations' quantiser ranges as --init has them
    distill: Path | None = None  # a teacher's fp32 weights: its self-ensemble's output is a second target
    distill_weight: float = 0.5  # the teacher's share of the loss
    distill_ensemble: str = "fliplr,flipud,rot180"  # the teacher's transforms besides the identity

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = tuple(Path(d) for d in self.data)
        check_range(self.distill_weight, 0.0, 1.0, "distill_weight")
        if self.distill is not None:
            self.distill = Path(self.distill)
            unknown = set(self.distill_names) - set(TRANSFORMS)
            if unknown:
                raise InputError(f"unknown distill_ensemble transforms {sorted(unknown)}; "
                                 f"choose from {sorted(TRANSFORMS)}")
        if self.int8:
            self.precision = int8_precision(self.precision)

    @property
    def grey_only(self) -> bool:
        return self.grey_prob >= 1.0

    @property
    def distill_names(self) -> list[str]:
        return [n for n in self.distill_ensemble.split(",") if n and n != "identity"]

    @property
    def arch_params(self) -> dict:
        return {"widths": [int(v) for v in self.widths.split(",")],
                "blocks": [int(v) for v in self.blocks.split(",")]}


def manifest_fields(cfg: JpegTrainConfig) -> dict:
    fields = _float_manifest_fields(cfg)
    if not cfg.int8:
        return fields
    int8 = {**fields, "id": fields["id"] + "-int8", "name": fields["name"].replace("(blind", "(int8, blind"),
            "description": fields["description"] + " 8-bit weights and activations, trained for them: about "
                                                   "three times as fast as the fp32 model on CPUs with VNNI or "
                                                   "AMX int8 instructions.",
            "architecture": "jpeg_unet_int8", "precisions": ["int8"]}
    if cfg.grey_only:
        # its passes are cheap enough for a third (the two mirrors, chosen on validation: CARD.md); it then
        # restores as well as the fp32 grey model's default, and stands in for it where int8 is fast
        int8.update(ensemble=["fliplr", "flipud"], int8_of=fields["id"], description=(
            fields["description"][:-1] + ", with 8-bit weights and activations trained for them. By default it "
            "averages three passes: the fp32 model's quality at about 2.5 times its speed on CPUs with VNNI or "
            "AMX int8 instructions, where it is the default for grey images."))
    else:
        # four passes (the mirror images, chosen on validation: CARD.md) restore better than the fp32
        # model's default (two) at every quality, in less time: it stands in for it where int8 is fast
        int8.update(ensemble=list(fields["ensemble_full"]), int8_of=fields["id"], description=(
            fields["description"][:-1] + ", with 8-bit weights and activations trained for them. By default it "
            "averages four passes: better than the fp32 model's default in less time on CPUs with VNNI or AMX "
            "int8 instructions, where it is the default for colour images."))
    return int8


def _float_manifest_fields(cfg: JpegTrainConfig) -> dict:
    if cfg.grey_only:  # trained as R = G = B, shipped as the one-channel network (see ``grey_state``)
        return {**_colour_manifest(cfg), "id": "restore-jpeg-grey",
                "name": "Restore JPEG artifact removal (blind, greyscale)",
                "description": "Removes JPEG blocking and ringing from greyscale images at any quality, without "
                               "being told the quality; the blind colour model fine-tuned on grey JPEGs alone.",
                "params": {**cfg.arch_params, "channels": 1}, "channels": [1]}
    return _colour_manifest(cfg)


def _colour_manifest(cfg: JpegTrainConfig) -> dict:
    return {
        "id": "restore-jpeg", "task": "jpeg", "name": "Restore JPEG artifact removal (blind)",
        "description": "Removes JPEG blocking, ringing and colour bleeding at any quality, in colour and grey, "
                       "without being told the quality; leaves high-quality files as they are.",
        "architecture": "jpeg_unet", "params": cfg.arch_params, "input": "rgb", "channels": [3],
        # self-ensembles chosen on validation (CARD.md): a 180° turn by default, the four flips for "full"
        "ensemble": ["rot180"], "ensemble_full": ["fliplr", "flipud", "rot180"],
        # the quantisation constraint's interval shrink, chosen on validation (CARD.md)
        "jpeg_constraint": JPEG_CONSTRAINT,
        "align": 8, "overlap": 64, "precisions": ["fp32", "bf16", "fp16"],
        "license": "MIT",
        "training_data": "BSDS500 train+val (BIDS/BSDS500 a04b7c6)"
                         + (f" shrunk ×{cfg.downscale}" if cfg.downscale > 1 else "")
                         + ", less the validation hold-out",
    }


def _to_grey(rgb_u8: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb_to_y(rgb_u8.astype(np.float64), 255.0)), 0, 255).astype(np.uint8)


class JpegTask:
    def __init__(self, cfg: JpegTrainConfig) -> None:
        self.cfg = cfg
        held_out = list_images(cfg.data[-1])[-cfg.val_holdout:] if cfg.val_holdout else []
        self.sampler = PatchSampler(load_images(image_files(cfg.data, exclude=held_out), cfg.downscale),
                                    cfg.patch + 8)
        self.val_images = [np.rint(im * 255).astype(np.uint8) for im in load_images(held_out, cfg.downscale)]
        self.model = self._network()
        self.teacher = self._teacher() if cfg.distill is not None else None
        self.taught = (with_ensemble(self.teacher, ensemble_transforms(cfg.distill_names), align=8)
                       if self.teacher is not None else None)  # the teacher's self-ensemble

    def _teacher(self) -> JpegUNet:
        """The ``distill`` network (its channel count from its weights), in eval mode on the CPU."""
        state = load_file(str(self.cfg.distill))
        params = {k: tuple(v) for k, v in self.cfg.arch_params.items()}
        net = JpegUNet(**params, channels=state["head.weight"].shape[1] // 4)
        net.load_state_dict(state)
        return net.eval().to(memory_format=torch.channels_last)

    def _sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
        """``(degraded, clean, quality)``: the pair and the quality of the last compression, whose grid
        is at the patch's corner."""
        p = self.cfg.patch
        big = np.rint(self.sampler(rng) * 255).astype(np.uint8)
        if rng.random() < self.cfg.grey_prob:
            big = _to_grey(big)
        quality = lambda: int(rng.integers(self.cfg.q_min, self.cfg.q_max + 1))  # noqa: E731
        if rng.random() < self.cfg.double_prob:
            first = jpeg_compress(big, quality())
            dy, dx = rng.integers(0, 8, size=2)
            clean = big[dy:dy + p, dx:dx + p]
            last = quality()
            degraded = jpeg_compress(np.ascontiguousarray(first[dy:dy + p, dx:dx + p]), last)
        else:
            clean = np.ascontiguousarray(big[:p, :p])
            last = quality()
            degraded = jpeg_compress(clean, last)
        if clean.ndim == 2:
            clean, degraded = np.repeat(clean[..., None], 3, axis=2), np.repeat(degraded[..., None], 3, axis=2)
        return degraded, clean, last

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, ...]:
        """``(inputs, targets)``, and with ``train_constraint`` the quantisation intervals ``(lo, hi)``."""
        samples = [self._sample(rng) for _ in range(size)]
        x = np.stack([d for d, _, _ in samples]).astype(np.float32) / 255.0
        y = np.stack([c for _, c, _ in samples]).astype(np.float32) / 255.0
        inputs, targets = torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(y).permute(0, 3, 1, 2)
        bounds = ()
        if self.cfg.train_constraint:
            per_image = [intervals(d, ijg_table(q), JPEG_CONSTRAINT) for d, (_, _, q) in zip(x, samples, strict=True)]
            bounds = tuple(torch.from_numpy(np.stack(b)) for b in zip(*per_image, strict=True))
        if self.teacher is not None:  # the teacher's output joins the targets, as further channels
            with torch.no_grad():
                taught = self._output(self.taught, self.teacher.channels,
                                      inputs.contiguous(memory_format=torch.channels_last), bounds)
            targets = torch.cat([targets, taught.contiguous()], dim=1)
        return inputs, targets, *bounds

    def loss(self, pred: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The config's loss against the clean patch, and with a teacher (``targets`` then holds its
        output as further channels) against the teacher's output too, weighted ``distill_weight``."""
        base = LOSSES[self.cfg.loss]
        c = pred.shape[1]
        if targets.shape[1] == c:
            return base(pred, targets)
        w = self.cfg.distill_weight
        return (1.0 - w) * base(pred, targets[:, :c]) + w * base(pred, targets[:, c:])

    def predict(self, model: JpegUNet | JpegUNetInt8, inputs: torch.Tensor, *bounds: torch.Tensor) -> torch.Tensor:
        """The output the loss sees: with ``bounds`` (``train_constraint``), after the constraint; a
        grey specialist's is its shipped output, the mean over R, G and B (:func:`grey_state`), or an
        int8 one's (a one-channel network) output on one of the equal channels."""
        channels = 1 if self.cfg.int8 and self.cfg.grey_only else inputs.shape[1]
        return self._output(model, channels, inputs, bounds)

    def _output(self, model, channels: int, inputs: torch.Tensor, bounds: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """:meth:`predict` for a network of ``channels`` (1: fed one of the equal grey channels)."""
        if channels == 1:
            out = model(inputs[:, :1])
            return (clip_tensor(out, *bounds) if bounds else out).expand(-1, inputs.shape[1], -1, -1)
        out = model(inputs)
        if not bounds:
            return out
        if self.cfg.grey_only:
            return clip_tensor(out.mean(1, keepdim=True), *bounds).expand(-1, out.shape[1], -1, -1)
        return clip_tensor(out, *bounds)

    def _network(self) -> JpegUNet | JpegUNetInt8:
        """The network this config trains: three-channel, or the shipped one-channel one for int8 grey."""
        params = {k: tuple(v) for k, v in self.cfg.arch_params.items()}
        if not self.cfg.int8:
            return JpegUNet(**params)
        net = JpegUNetInt8(**params, channels=1 if self.cfg.grey_only else 3)
        net.learn_ranges = not self.cfg.freeze_ranges
        return net

    def shipped(self, model: JpegUNet | JpegUNetInt8) -> JpegUNet | JpegUNetInt8:
        """The network as exported: a grey specialist becomes one-channel (:func:`grey_state`)."""
        if not self.cfg.grey_only or isinstance(model, JpegUNetInt8):
            return model
        grey = JpegUNet(widths=model.widths, blocks=model.blocks, channels=1).to(next(model.parameters()).device)
        grey.load_state_dict(grey_state(model.state_dict()))
        return grey.eval()

    def init_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``--init`` weights for the three-channel training network; a one-channel (shipped grey) model's
        are expanded by :func:`colour_state`, which leaves its output on grey input unchanged."""
        if self.cfg.int8:
            return self._int8_state(state)
        return colour_state(state) if state["head.weight"].shape[1] == 4 else state

    def _int8_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``--init`` weights for the int8 network: int8 weights as they are; fp32 ones (either channel
        count) with fresh quantiser ranges, which the first training batches set."""
        net = self._network()
        if any(k.startswith("qat.") for k in state):
            # weights saved before the last shuffle stayed fp32 have two more quantisers, unused now
            own = net.state_dict()
            return {k: v for k, v in state.items() if k in own or not k.startswith("qat.activation_post_process_")}
        if state["head.weight"].shape[1] != 4 * net.channels:
            state = grey_state(state) if net.channels == 1 else colour_state(state)
        net.load_float_state({k: v.cpu() for k, v in state.items()})
        return net.state_dict()

    def export(self, run: Path, dest: Path) -> Path:
        """Write the run's best weights as the model folder ``dest``, as shipped."""
        model = self._network()
        model.load_state_dict(load_file(str(run / "best.safetensors")))
        return export_model(self.shipped(model).state_dict(), dest, {**manifest_fields(self.cfg), "id": dest.name})

    def validate(self, model: torch.nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        manifest = parse_manifest({**manifest_fields(self.cfg), "id": "validation"})
        restorer = Restorer(LoadedModel(manifest, self.shipped(model)),
                            Engine(EngineConfig(device=str(device), precision=precision, tile=0,
                                                ensemble=self.cfg.val_ensemble)))
        scores = {}
        sets = (((True, 10), (True, 30), (True, 90)) if self.cfg.grey_only else
                ((False, 10), (False, 30), (False, 90), (True, 10)))
        for grey, quality in sets:
            gains = []
            for img in self.val_images:
                clean = _to_grey(img) if grey else img
                jpg = jpeg_compress(clean, quality)
                out = np.rint(restorer.restore_image(jpg.astype(np.float32) / 255) * 255)
                gains.append(psnr(clean, out, 255.0))
            scores[f"psnr_{'grey' if grey else 'rgb'}_q{quality}"] = float(np.mean(gains))
        scores["score"] = float(np.mean(list(scores.values())))
        return scores
