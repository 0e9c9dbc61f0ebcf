"""``restore train segment``: the Deep Watershed Transform from very little labelled data.

Batches mix the labelled tiles (``data``: a folder with ``images/`` and ``labels/``, such as
``nuclei_he`` or a user's own) with synthetic scenes: touching and overlapping blobs and ellipses of
varied size, textured with BSDS500 patches, in H&E-like colours, solid or vesicular (pale with a dark
rim and chromatin clumps), blurred and noisy. Everything gets
strong augmentation: rescaling, the 8 flips and rotations, stain jitter in HED colour space (haematoxylin down to pale),
objects faded towards their local background (pale nuclei),
brightness and contrast. ``holdout`` leaves one tile out entirely (leave-one-out evaluation).
Validation (and the choice of the energy cut level) uses synthetic scenes with a fixed seed and
the training tiles' 256-pixel corners, never the held-out tile; ``val_tiles`` instead keeps tiles out
of training and validates on them alone, whole (nested leave-one-out: scores on tiles the network
never saw, which scores on the training tiles do not predict: see ``models/restore-dwt/CARD.md``).
``--init`` fine-tunes a trained model on new data. ``copy_paste_prob`` pastes real nuclei cut from the
training tiles into their patches (:func:`copy_paste`; off by default: on ``nuclei_he`` it did not help,
see ``models/restore-dwt/CARD.md``); ``cut_level`` fixes the energy cut level instead of validation's choice.
``distill`` (with ``--init``) adds self-ensemble distillation: the ``--init`` network, frozen, averages its
maps over the 8 symmetries of the square (what ``--ensemble full`` does at inference, 8 passes) and the
network learns those maps beside the labels (:func:`distill_targets`, :func:`distill_loss`), so that its
one or two passes come nearer the ensemble's eight.
``int8`` trains the network's int8 form (:class:`~restore_app.core.archs.dwt_net.DWTNetInt8`, batch
norms folded, quantisation-aware training) from ``--init`` fp32 weights (for a leave-one-out run, the
fp32 fold's); it exports as ``restore-dwt-int8``.

Losses, after Bai and Urtasun: binary cross-entropy on the foreground; squared error between unit
direction vectors (twice the angular cosine error) on the foreground; cross-entropy on the energy
levels with the low (near-boundary) levels up-weighted; the last two weighted by 1/√(instance area).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from restore_app.core.archs.dwt_net import ENERGY_LEVELS, DWTNet, DWTNetInt8
from restore_app.core.checks import check_range
from restore_app.core.engine import autocast, select_device
from restore_app.core.errors import InputError
from restore_app.core.evaluate import image_named, labelled_images
from restore_app.core.io import read_image, to_float, to_rgb
from restore_app.core.metrics import instance_scores
from restore_app.core.paths import datasets_root
from restore_app.core.registry import ENSEMBLE_TRANSFORMS
from restore_app.core.segment import dwt_targets, instances_from_maps
from restore_app.core.train.data import dihedral, image_files, load_images
from restore_app.core.train.loop import TrainConfig, best_validation, export_model, int8_precision, train_precision

# near-boundary levels matter most for separating touching objects
VAL_SCENE = 192  # side of the synthetic validation scenes

LEVEL_WEIGHTS = np.array([1.0, 3.0, 2.5, 2.0, 1.6, 1.3, 1.1] + [1.0] * (ENERGY_LEVELS - 7), np.float32)


@dataclass
class SegmentTrainConfig(TrainConfig):
    out: Path = Path("runs/segment")
    loss: str = "dwt"
    iterations: int = 4000
    batch: int = 8
    patch: int = 128
    lr: float = 1e-3
    warmup: int = 200
    val_every: int = 500
    data: Path = field(default_factory=lambda: datasets_root() / "nuclei_he")
    textures: tuple[Path, ...] = field(default_factory=lambda: (datasets_root() / "bsds500" / "train",))
    holdout: str = ""  # a tile left out (leave-one-out); "" trains on every tile
    val_tiles: str = ""  # comma-separated tiles kept out of training, validated on instead of the training tiles
    synthetic_prob: float = 0.5
    fade_prob: float = 0.4  # share of patches whose objects are made pale (fade_foreground)
    copy_paste_prob: float = 0.0  # share of labelled-tile patches given extra nuclei cut from the tiles (copy_paste)
    vesicular_prob: float = 0.5  # share of synthetic scenes with vesicular (pale, rimmed, clumped) nuclei
    scale_min: float = 0.6  # rescaling of the labelled tiles: the five tiles' nuclei differ 2× in size
    scale_max: float = 1.6
    widths: str = "24,48,96,128"
    bin_scale: float = 1.0
    cut_level: int = 0  # the energy cut level: 0 chooses it on validation among 2, 3 and 4; else fixed
    distill: bool = False  # also learn the --init weights' 8-symmetry self-ensemble (distill_targets)
    distill_weight: float = 1.0  # the distillation loss's weight beside the labels' loss
    int8: bool = False  # quantisation-aware training of the int8 network (start it with --init fp32 weights)

    @classmethod
    def loss_choices(cls) -> tuple[str, ...]:
        return ("dwt",)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.data = Path(self.data)
        self.textures = tuple(Path(t) for t in self.textures)
        check_range(self.scale_min, 0.1, self.scale_max, "scale_min")
        check_range(self.scale_max, self.scale_min, 10.0, "scale_max")
        check_range(self.vesicular_prob, 0.0, 1.0, "vesicular_prob")
        check_range(self.copy_paste_prob, 0.0, 1.0, "copy_paste_prob")
        check_range(self.distill_weight, 0.0, 100.0, "distill_weight")
        if self.distill and self.init is None:
            raise InputError("--distill learns the self-ensemble of the --init weights: give --init")
        if self.cut_level not in (0, 2, 3, 4):
            raise InputError(f"cut_level {self.cut_level}: 0 (chosen on validation), 2, 3 or 4")
        if self.holdout and Path(self.holdout).stem in {Path(v).stem for v in self.val_tile_names}:
            raise InputError(f"--val-tiles {self.val_tiles!r} names the held-out tile {self.holdout!r}: "
                             "a validation tile must be one the held-out score does not use")
        if self.int8:
            self.precision = int8_precision(self.precision)

    @property
    def val_tile_names(self) -> list[str]:
        return [v.strip() for v in self.val_tiles.split(",") if v.strip()]

    @property
    def arch_widths(self) -> list[int]:
        return [int(v) for v in self.widths.split(",")]


def manifest_fields(cfg: SegmentTrainConfig, cut_level: int = 2) -> dict:
    fields = _float_manifest_fields(cfg, cut_level)
    if not cfg.int8:
        return fields
    return {**fields, "id": "restore-dwt-int8", "name": "Deep Watershed Transform (nuclei, int8)",
            "description": fields["description"] + " 8-bit weights and activations, trained for them: two to "
                                                   "three times faster than the fp32 model a pass on CPUs with "
                                                   "VNNI or AMX int8 instructions, where it is the default.",
            "architecture": "dwt_net_int8", "precisions": ["int8"], "int8_of": fields["id"],
            # chosen on validation (CARD.md, twentieth session): the four rotations, which int8's speed allows
            "ensemble": ["rot90", "rot180", "rot270"]}


def _float_manifest_fields(cfg: SegmentTrainConfig, cut_level: int) -> dict:
    left = [t for t in (cfg.holdout, *cfg.val_tile_names) if t]
    return {
        "id": "restore-dwt", "task": "segment", "name": "Deep Watershed Transform (nuclei)",
        "description": "Separates and counts touching nuclei and similar objects: label map, overlay, count "
                       "and a CSV of instances.",
        "architecture": "dwt_net", "params": {"widths": cfg.arch_widths, "cut_level": cut_level, "min_area": 8},
        "input": "rgb", "output": "labels", "channels": [3], "tileable": True, "overlap": 48, "align": 8,
        # chosen on validation (CARD.md): the transpose by default, all 8 symmetries for "full"
        "ensemble": ["transpose"],
        "ensemble_full": list(ENSEMBLE_TRANSFORMS),
        "precisions": ["fp32", "bf16"], "license": "MIT",
        "training_data": f"{cfg.data.name} tiles{' except ' + ', '.join(left) if left else ''} and synthetic "
                         "scenes textured with BSDS500 train patches",
    }


def load_tiles(folder: Path, exclude: str | Sequence[str] = "",
               only: Sequence[str] = ()) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(image float RGB, labels int)`` pairs from ``folder/images`` and ``folder/labels``, less
    ``exclude`` or, given ``only``, just the tiles it names (names with or without the extension)."""
    pairs = labelled_images(folder, exclude)
    if only:
        pairs = [(path, lab) for path, lab in pairs if any(image_named(path, n) for n in only)]
    return [(to_float(to_rgb(read_image(path))), read_image(lab_path).astype(np.int64))
            for path, lab_path in pairs]


def stain_jitter(rgb: np.ndarray, rng: np.random.Generator, strength: float = 0.25) -> np.ndarray:
    """Random haematoxylin/eosin stain variation in HED space, then brightness and contrast.

    Haematoxylin (the nuclear stain) varies most between labs and scanners: it is scaled down to
    ``1 − 2.4·strength`` (pale nuclei) and up to ``1 + 1.2·strength``; eosin and DAB by ``±strength``…``±1.6·strength``.
    """
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(rgb, 0, 1))
    scale = np.array([rng.uniform(1 - 2.4 * strength, 1 + 1.2 * strength),
                      rng.uniform(1 - 1.6 * strength, 1 + 1.6 * strength),
                      rng.uniform(1 - strength, 1 + strength)])
    hed = hed * scale + rng.uniform(-0.03, 0.03, 3) * strength
    out = hed2rgb(hed)
    out = (out - 0.5) * rng.uniform(0.85, 1.15) + 0.5 + rng.uniform(-0.06, 0.06)
    return np.clip(out, 0, 1).astype(np.float32)


def fade_foreground(rgb: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                    low: float = 0.2, high: float = 0.7) -> np.ndarray:
    """Pale objects: move every foreground pixel a random fraction of the way to the local background
    colour, keeping its texture, so the network cannot count on objects being dark."""
    bg = (labels == 0).astype(np.float32)
    if bg.sum() < 16 or bg.all():
        return rgb
    sigma = max(4.0, rgb.shape[0] / 16)
    weight = cv2.GaussianBlur(bg, (0, 0), sigma)[..., None]
    local = cv2.GaussianBlur(rgb * bg[..., None], (0, 0), sigma) / np.maximum(weight, 1e-3)
    local = np.where(weight > 1e-3, local, rgb[bg > 0].mean(axis=0))
    amount = rng.uniform(low, high) * (labels > 0)[..., None]
    return (rgb + amount * (local - rgb)).astype(np.float32)


def drop_slivers(labels: np.ndarray, min_pixels: int = 12) -> np.ndarray:
    """``labels`` less the instances under ``min_pixels`` pixels (what occluding objects leave of
    the ones beneath them)."""
    keep = np.bincount(labels.ravel()) >= min_pixels
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def donor_objects(tiles: Sequence[tuple[np.ndarray, np.ndarray]], min_area: int = 20,
                  margin: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """The labelled objects of ``tiles`` as ``(rgb crop, mask crop)`` pairs with ``margin`` pixels
    around each, for :func:`copy_paste`; objects cut by a tile's border or under ``min_area`` pixels
    are left out (their outline is not the object's)."""
    from scipy import ndimage as ndi

    out = []
    for img, lab in tiles:
        h, w = lab.shape
        for obj, box in enumerate(ndi.find_objects(lab), start=1):
            if box is None or box[0].start == 0 or box[1].start == 0 or box[0].stop == h or box[1].stop == w:
                continue
            y0, y1 = max(0, box[0].start - margin), min(h, box[0].stop + margin)
            x0, x1 = max(0, box[1].start - margin), min(w, box[1].stop + margin)
            mask = lab[y0:y1, x0:x1] == obj
            if mask.sum() >= min_area:
                out.append((img[y0:y1, x0:x1].copy(), mask))
    return out


def copy_paste(rgb: np.ndarray, labels: np.ndarray, donors: Sequence[tuple[np.ndarray, np.ndarray]],
               rng: np.random.Generator, scale: float = 1.0, count: tuple[int, int] = (2, 9),
               fade_prob: float = 0.3, blur_prob: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Simple copy-paste (Ghiasi et al., CVPR 2021) for nuclei: real labelled nuclei from ``donors``
    pasted at random places of a patch, over its own objects where they land (new touching and
    overlapping configurations with real texture and real outlines). Each pasted nucleus is rescaled
    by ``scale`` (the patch's own rescaling) times 0.8–1.25, and may be faded towards the patch's
    background colour (pale nuclei) or blurred (out of focus). Returns the new ``(rgb, labels)``;
    instances the pastes cover down to under 12 pixels are dropped."""
    if not donors:
        return rgb, labels
    rgb, labels = rgb.copy(), labels.copy()
    h, w = labels.shape
    bg = labels == 0
    bg_colour = rgb[bg].mean(axis=0) if bg.any() else rgb.reshape(-1, 3).mean(axis=0)
    next_id = int(labels.max()) + 1
    for _ in range(int(rng.integers(*count))):
        src, mask = donors[rng.integers(len(donors))]
        k = int(rng.integers(8))
        src, mask = dihedral(src, k), dihedral(mask, k)
        f = scale * float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        size = (max(3, round(src.shape[1] * f)), max(3, round(src.shape[0] * f)))
        src = cv2.resize(np.ascontiguousarray(src), size, interpolation=cv2.INTER_LINEAR)
        alpha = cv2.resize(np.ascontiguousarray(mask, dtype=np.float32), size, interpolation=cv2.INTER_LINEAR)
        if rng.random() < blur_prob:  # out of focus: the nucleus and its outline soften together
            sigma = rng.uniform(0.6, 1.6)
            src = cv2.GaussianBlur(src, (0, 0), sigma)
            alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
        if rng.random() < fade_prob:
            src = src + rng.uniform(0.2, 0.7) * (bg_colour - src)
        hard = alpha >= 0.5
        if hard.sum() < 8:
            continue
        oy, ox = int(rng.integers(-size[1] // 2, h - size[1] // 2)), int(rng.integers(-size[0] // 2, w - size[0] // 2))
        sy, sx = slice(max(0, -oy), min(size[1], h - oy)), slice(max(0, -ox), min(size[0], w - ox))
        dy, dx = slice(max(0, oy), min(h, oy + size[1])), slice(max(0, ox), min(w, ox + size[0]))
        a = np.clip(alpha[sy, sx], 0, 1)[..., None]
        rgb[dy, dx] = (1 - a) * rgb[dy, dx] + a * src[sy, sx]
        labels[dy, dx][hard[sy, sx]] = next_id
        next_id += 1
    return rgb.astype(np.float32), drop_slivers(labels)


def synthetic_scene(size: int, textures: list[np.ndarray], rng: np.random.Generator,
                    vesicular: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Touching and overlapping textured blobs on a textured background: ``(rgb, labels)``.

    With probability ``vesicular`` the scene has vesicular nuclei among its solid ones (a random
    share of them): a pale interior close to the background colour, a dark rim (the nuclear
    membrane), dark chromatin clumps and sometimes a nucleolus, so that the network learns to take
    such a nucleus as one object, neither missing it nor splitting it at its clumps.
    """
    def texture() -> np.ndarray:
        t = textures[rng.integers(len(textures))]
        y, x = rng.integers(0, t.shape[0] - size + 1), rng.integers(0, t.shape[1] - size + 1)
        return t[y:y + size, x:x + size].mean(axis=2)

    background = np.array([0.88, 0.62, 0.78]) + rng.uniform(-0.08, 0.08, 3)
    nucleus = np.array([0.38, 0.25, 0.55]) + rng.uniform(-0.1, 0.1, 3)
    t_bg, t_fg = texture(), texture()
    img = background * (0.75 + 0.5 * t_bg[..., None])
    labels = np.zeros((size, size), np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    n = int(rng.integers(6, 45))
    base_r = rng.uniform(4, 14)
    # (no draw at all without vesicular nuclei: the scenes of the earlier recipe stay the same)
    ves_share = rng.uniform(0.3, 1.0) if vesicular > 0 and rng.random() < vesicular else 0.0
    clumps = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.0) if ves_share else None
    for i in range(1, n + 1):
        r = base_r * rng.uniform(0.6, 1.5)
        a, b = r * rng.uniform(1.0, 1.8), r
        theta = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(-r, size + r, 2)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        angle = np.arctan2(v, u)
        wobble = 1 + 0.12 * np.sin(3 * angle + rng.uniform(0, 6.3)) + 0.08 * np.sin(5 * angle + rng.uniform(0, 6.3))
        mask = u * u + v * v <= wobble ** 2
        labels[mask] = i  # later blobs cover earlier ones: overlaps and touching boundaries
        shade = rng.uniform(0.7, 1.15)
        if clumps is not None and rng.random() < ves_share:
            img[mask] = _vesicular(np.sqrt(u[mask] ** 2 + v[mask] ** 2) / wobble[mask], background, nucleus * shade,
                                   t_fg[mask], clumps[mask], (dy[mask], dx[mask]), r, rng)
        else:
            img[mask] = (nucleus * shade * (0.7 + 0.6 * t_fg[..., None]))[mask]
    # drop slivers left by occlusion, renumber
    _, labels = np.unique(drop_slivers(labels), return_inverse=True)
    labels = labels.reshape(size, size)
    sigma = rng.uniform(0, 1.2)
    if sigma > 0.2:
        img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)
    img = img + rng.standard_normal(img.shape) * rng.uniform(0, 0.03)
    return np.clip(img, 0, 1).astype(np.float32), labels


def _vesicular(rho: np.ndarray, background: np.ndarray, dark: np.ndarray, t_fg: np.ndarray, clumps: np.ndarray,
               offset: tuple[np.ndarray, np.ndarray], radius: float, rng: np.random.Generator) -> np.ndarray:
    """The colours ``(N, 3)`` of a vesicular nucleus's ``N`` pixels, given per pixel: ``rho``, the
    normalised radius (1 on the outline), the textures and the ``offset`` (dy, dx) from the centre;
    ``dark`` is the solid nuclear colour."""
    pale = rng.uniform(0.15, 0.5)  # how far the interior is from the background towards ``dark``
    out = (background * (1 - pale) + dark * pale) * (0.85 + 0.3 * t_fg[..., None])
    rim = rho > 1 - rng.uniform(1.0, 2.5) / radius  # membrane 1–2.5 px thick
    spots = clumps > rng.uniform(0.25, 0.45)  # chromatin clumps, ~1 px blobs
    ink = dark * (0.8 + 0.4 * t_fg[..., None])
    ink = out + rng.uniform(0.5, 1.0) * (ink - out)  # faint to sharp membrane and clumps
    out = np.where((rim | spots)[..., None], ink, out)
    if rng.random() < 0.6:  # a nucleolus off centre
        dy, dx = offset
        oy, ox = rng.uniform(-0.4, 0.4, 2) * radius
        out = np.where(((dy - oy) ** 2 + (dx - ox) ** 2 <= rng.uniform(1.0, 2.2) ** 2)[..., None], dark * 0.8, out)
    return out


class SegmentTask:
    def __init__(self, cfg: SegmentTrainConfig) -> None:
        self.cfg = cfg
        self.tiles = load_tiles(cfg.data, exclude=[cfg.holdout, *cfg.val_tile_names])
        self.val_tiles = load_tiles(cfg.data, only=cfg.val_tile_names) if cfg.val_tile_names else []
        self.donors = donor_objects(self.tiles) if cfg.copy_paste_prob > 0 else []
        self.textures = []
        if cfg.synthetic_prob > 0:  # without synthetic scenes (a user's own tiles only) no textures are needed
            self.textures = [im for im in load_images(image_files(cfg.textures)[:60])
                             if min(im.shape[:2]) >= max(cfg.patch, VAL_SCENE)]
            if not self.textures:
                raise InputError("no texture images for the synthetic scenes (give --textures DIR, "
                                 "or --synthetic-prob 0 to train on the labelled images alone)")
        rng = np.random.default_rng(777)
        self.val_scenes = [synthetic_scene(VAL_SCENE, self.textures, rng, cfg.vesicular_prob)
                           for _ in range(8)] if self.textures else []
        self.model = self._network()
        self.teacher = self._teacher() if cfg.distill else None

    def _teacher(self) -> tuple[DWTNet, torch.device, str]:
        """The frozen ``--init`` network (fp32 weights; for an int8 run, the float weights it starts
        from), on the training device, whose self-ensemble :meth:`batch` adds to the targets."""
        from safetensors.torch import load_file

        device = select_device(self.cfg.device)
        net = DWTNet(widths=tuple(self.cfg.arch_widths))
        try:
            net.load_state_dict(load_file(str(self.cfg.init)))
        except (RuntimeError, OSError) as exc:
            raise InputError(f"--distill needs float DWT weights of widths {self.cfg.widths} in --init "
                             f"{self.cfg.init}: {exc}") from exc
        net = net.to(device).eval().requires_grad_(False)
        if device.type == "cpu":
            net = net.to(memory_format=torch.channels_last)
        return net, device, train_precision(self.cfg.precision, device)

    def _network(self) -> DWTNet | DWTNetInt8:
        widths = tuple(self.cfg.arch_widths)
        return DWTNetInt8(widths=widths) if self.cfg.int8 else DWTNet(widths=widths)

    def init_state(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``--init`` weights: for the int8 network, int8 weights as they are and fp32 ones (batch norms
        folded) with fresh quantiser ranges, which the first training batches set."""
        if not self.cfg.int8 or any(k.startswith("qat.") for k in state):
            return state
        net = self._network()
        net.load_float_state({k: v.cpu() for k, v in state.items()})
        return net.state_dict()

    def _real_patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        img, lab = self.tiles[rng.integers(len(self.tiles))]
        scale = float(np.exp(rng.uniform(np.log(self.cfg.scale_min), np.log(self.cfg.scale_max))))
        p = self.cfg.patch
        src = int(np.ceil(p / scale)) + 2
        y = rng.integers(0, max(1, img.shape[0] - src))
        x = rng.integers(0, max(1, img.shape[1] - src))
        crop_i, crop_l = img[y:y + src, x:x + src], lab[y:y + src, x:x + src]
        crop_i = cv2.resize(crop_i, (p, p), interpolation=cv2.INTER_LINEAR)
        crop_l = cv2.resize(crop_l.astype(np.int32), (p, p), interpolation=cv2.INTER_NEAREST).astype(np.int64)
        if self.donors and rng.random() < self.cfg.copy_paste_prob:
            crop_i, crop_l = copy_paste(crop_i, crop_l, self.donors, rng, scale=p / src)
        return crop_i, crop_l

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        for _ in range(size):
            if rng.random() < self.cfg.synthetic_prob:
                img, lab = synthetic_scene(self.cfg.patch, self.textures, rng, self.cfg.vesicular_prob)
            else:
                img, lab = self._real_patch(rng)
            k = int(rng.integers(8))
            img, lab = np.ascontiguousarray(dihedral(img, k)), np.ascontiguousarray(dihedral(lab, k))
            if rng.random() < self.cfg.fade_prob:
                img = fade_foreground(img, lab, rng)
            img = stain_jitter(img, rng)
            t = dwt_targets(lab, self.cfg.bin_scale)  # after the transform: directions match the image
            xs.append(img.transpose(2, 0, 1))
            ys.append(np.concatenate([t["fg"][None], t["direction"], t["energy"][None].astype(np.float32),
                                      t["weight"][None]], axis=0))
        x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
        if self.teacher is not None:
            y = torch.cat([y, distill_targets(*self.teacher, x)], dim=1)
        return x, y

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The labels' loss (``target``'s first 5 channels), plus ``distill_weight`` times
        :func:`distill_loss` where :meth:`batch` added the teacher's maps."""
        loss = dwt_loss(pred, target[:, :5])
        if target.shape[1] > 5:
            loss = loss + self.cfg.distill_weight * distill_loss(pred, target[:, 5:])
        return loss

    def _predict_maps(self, model: torch.nn.Module, img: np.ndarray, device: torch.device) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(device)
        with torch.inference_mode():
            return model(x)[0].float().cpu().numpy()

    def validate(self, model: torch.nn.Module, device: torch.device, precision: str) -> dict[str, float]:
        """AP50 and mAP for each cut level on synthetic scenes and the training tiles' corners (never
        the held-out tile) or, where given, on the whole ``val_tiles`` alone (tiles the network never
        saw: the synthetic scenes would outnumber them); the best cut level is kept for the export."""
        sets = self.val_tiles or [(img, lab) for img, lab in self.val_scenes] + [
            (img[:256, :256], lab[:256, :256]) for img, lab in self.tiles]
        maps = [self._predict_maps(model, img, device) for img, _ in sets]
        scores = {}
        for cut in (2, 3, 4):
            res = [instance_scores(lab, instances_from_maps(m, cut)) for m, (_, lab) in zip(maps, sets, strict=True)]
            scores[f"ap50_cut{cut}"] = float(np.mean([r["ap50"] for r in res]))
            scores[f"map_cut{cut}"] = float(np.mean([r["map"] for r in res]))
        best = self.cfg.cut_level or max((2, 3, 4), key=lambda c: scores[f"ap50_cut{c}"] + scores[f"map_cut{c}"])
        scores["cut_level"] = float(best)
        scores["score"] = scores[f"ap50_cut{best}"] + scores[f"map_cut{best}"]
        return scores

    def export(self, run: Path, dest: Path) -> Path:
        """A leave-one-out run becomes ``dest``'s fold for its held-out tile; a run on every tile
        becomes the model folder ``dest``; either with the cut level its best validation chose, or the
        one ``cut_level`` fixes."""
        if self.cfg.holdout:
            return export_fold(run, dest, self.cfg.holdout, val_tiles=",".join(self.cfg.val_tile_names),
                               cut_level=self.cfg.cut_level)
        cut = self.cfg.cut_level or int(best_validation(run)["val"]["cut_level"])
        return export_model(run / "best.safetensors", dest, {**manifest_fields(self.cfg, cut), "id": dest.name})


def dwt_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bai and Urtasun's losses on ``(B, 19, H, W)`` maps against ``(B, 5, H, W)`` targets (foreground,
    direction (2), energy level, 1/√area weight): see the module's docstring."""
    pred = pred.float()
    fg, direction, energy, weight = target[:, 0], target[:, 1:3], target[:, 3].long(), target[:, 4]
    fg_loss = F.binary_cross_entropy_with_logits(pred[:, 0], fg)
    w = weight * fg
    dir_loss = ((pred[:, 1:3] - direction) ** 2).sum(dim=1).mul(w).sum() / w.sum().clamp_min(1e-6)
    level_w = torch.as_tensor(LEVEL_WEIGHTS, device=pred.device)[energy] * weight
    ce = F.cross_entropy(pred[:, 3:], energy, reduction="none")
    energy_loss = (ce * level_w).sum() / level_w.sum()
    return fg_loss + dir_loss + energy_loss


def distill_targets(teacher: DWTNet, device: torch.device, precision: str, x: torch.Tensor) -> torch.Tensor:
    """``teacher``'s maps of the batch ``x`` averaged over the 8 symmetries of the square (its full
    self-ensemble, each result mapped back), on the CPU in fp32: the targets :func:`distill_loss`
    takes, so that one network learns what the slower ensemble knows."""
    from restore_app.core.pipeline import ensemble_transforms, with_ensemble

    run = with_ensemble(teacher, ensemble_transforms(ENSEMBLE_TRANSFORMS), maps=teacher)
    x = x.to(device)
    if device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, precision):
        maps = run(x)
    return maps.float().cpu().contiguous()


def distill_loss(pred: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """How far ``pred`` is from the teacher's averaged ``(B, 19, H, W)`` maps: binary cross-entropy to
    its foreground probability, squared error to its mean direction (normalised) weighted by that
    probability, and the KL divergence from its energy-level distribution (every pixel alike)."""
    pred = pred.float()
    p_fg = torch.sigmoid(teacher[:, 0])
    fg_loss = F.binary_cross_entropy_with_logits(pred[:, 0], p_fg)
    direction = F.normalize(teacher[:, 1:3], dim=1, eps=1e-6)
    dir_loss = ((pred[:, 1:3] - direction) ** 2).sum(dim=1).mul(p_fg).sum() / p_fg.sum().clamp_min(1e-6)
    energy_loss = F.kl_div(F.log_softmax(pred[:, 3:], dim=1), F.log_softmax(teacher[:, 3:], dim=1),
                           reduction="none", log_target=True).sum(dim=1).mean()
    return fg_loss + dir_loss + energy_loss


def export_fold(run: Path, model_dir: Path, tile: str, val_tiles: str = "", cut_level: int = 0) -> Path:
    """Write a leave-one-out run's best weights as ``model_dir/folds/<tile>.safetensors``.

    The cut level chosen on that run's validation (never the held-out tile) is stored in the
    file's metadata, so ``restore bench segment`` scores each fold with its own choice, with the
    tiles it was validated on when they were kept out of its training (``val_tiles``); a nonzero
    ``cut_level`` is stored instead.
    """
    from safetensors.torch import load_file, save_file

    from restore_app.core.io.atomic import atomic_output

    record = best_validation(run)
    target = model_dir / "folds" / f"{Path(tile).stem}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run / "best.safetensors"))
    metadata = {"holdout": Path(tile).name, "cut_level": str(cut_level or int(record["val"]["cut_level"])),
                "step": str(record["step"])}
    if val_tiles:
        metadata["val_tiles"] = val_tiles
    with atomic_output(target) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)
    return target
