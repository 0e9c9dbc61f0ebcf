"""Deep Watershed Transform pieces: targets, instances from maps, the network, outputs, training data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from restore_app.core.archs.dwt_net import DWTNet, DWTNetInt8
from restore_app.core.errors import InputError
from restore_app.core.io import read_image
from restore_app.core.metrics import instance_scores
from restore_app.core.registry import ENSEMBLE_TRANSFORMS, default_registry
from restore_app.core.segment import dwt_targets, instance_table, instances_from_maps, overlay, write_segmentation


def _touching_discs():
    yy, xx = np.mgrid[0:80, 0:120]
    labels = np.zeros((80, 120), np.int64)
    for i, (cy, cx, r) in enumerate(((40, 30, 16), (40, 60, 15), (20, 95, 9)), start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i  # discs 1 and 2 touch
    return labels


def _oracle_maps(labels):
    t = dwt_targets(labels)
    maps = np.zeros((19, *labels.shape), np.float32)
    maps[0] = np.where(t["fg"] > 0, 5, -5)
    maps[1:3] = t["direction"]
    maps[3:] = -10
    np.put_along_axis(maps[3:], t["energy"][None], 10, axis=0)
    return maps, t


def test_targets():
    labels = _touching_discs()
    t = dwt_targets(labels)
    assert t["energy"][labels == 0].max() == 0 and t["energy"][40, 30] >= 8  # deep inside the big disc
    assert t["energy"][40, 14] == 1  # its boundary
    norm = np.hypot(*t["direction"][:, labels > 0])
    assert np.allclose(norm[norm > 0], 1, atol=1e-4)
    assert t["direction"][0, 40, 20] > 0.9  # left of the centre: points right, away from the boundary
    areas = np.bincount(labels.ravel())
    assert t["weight"][40, 30] == pytest.approx(1 / np.sqrt(areas[1]))


def test_instances_from_oracle_maps_split_touching_objects():
    labels = _touching_discs()
    maps, _ = _oracle_maps(labels)
    pred = instances_from_maps(maps, cut_level=2)
    assert pred.max() == 3
    assert instance_scores(labels, pred)["ap50"] == 1.0


@pytest.mark.data
def test_oracle_maps_on_real_labels(datasets):
    labels = read_image(datasets / "nuclei_he" / "labels" / "image06.png").astype(np.int64)
    maps, _ = _oracle_maps(labels)
    assert instance_scores(labels, instances_from_maps(maps, cut_level=2))["ap50"] > 0.9


def test_network_and_postprocess():
    torch.manual_seed(0)
    net = DWTNet(widths=(8, 8, 16, 16), cut_level=2).eval()
    with torch.no_grad():
        maps = net(torch.rand(2, 3, 37, 50))
    assert maps.shape == (2, 19, 37, 50)
    assert torch.allclose(maps[:, 1:3].norm(dim=1), torch.ones(1), atol=1e-3)
    labels = net.postprocess(torch.from_numpy(np.stack([_oracle_maps(_touching_discs())[0]] * 2)))
    assert labels.shape == (2, 1, 80, 120) and labels.dtype == torch.int64 and int(labels.max()) == 3


def test_outputs(tmp_path):
    labels = _touching_discs()
    image = np.full((80, 120, 3), 0.8, np.float32)
    image[labels == 1] = 0.2
    rows = instance_table(labels, image)
    assert [r["id"] for r in rows] == [1, 2, 3]
    assert rows[0]["area"] == int((labels == 1).sum()) and rows[0]["mean_intensity"] == pytest.approx(0.2)
    assert rows[2]["bbox_width"] == 19 and abs(rows[0]["centroid_x"] - 30) < 0.5
    ov = overlay(image, labels)
    assert ov.shape == (80, 120, 3) and ov.dtype == np.uint8 and not np.array_equal(ov[40, 30], ov[5, 5])
    path = write_segmentation(tmp_path / "cells.png", labels, image)
    back = read_image(path)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
    with open(tmp_path / "cells.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3
    assert (tmp_path / "cells.overlay.png").is_file()


def _tiles_and_textures(tmp_path, coffee):
    """Two labelled tiles (``a.png``, ``b.png``) and a texture folder, as real files."""
    from restore_app.core.io import write_image

    data = tmp_path / "tiles"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    labels = np.zeros((160, 200), np.uint16)
    labels[:80, :120] = _touching_discs()
    image = np.ascontiguousarray(coffee[:160, :200])
    for name in ("a.png", "b.png"):
        write_image(data / "images" / name, image)
        write_image(data / "labels" / name, labels)
    textures = tmp_path / "tex"
    textures.mkdir()
    write_image(textures / "t.png", coffee)
    return data, textures


def test_training_batches(tmp_path, coffee):
    from restore_app.core.train.segment import SegmentTask, SegmentTrainConfig

    data, textures = _tiles_and_textures(tmp_path, coffee)
    cfg = SegmentTrainConfig(data=data, textures=(textures,), holdout="b.png", patch=64, widths="8,8,8,8")
    task = SegmentTask(cfg)
    assert len(task.tiles) == 1  # the held-out tile is never loaded
    assert len(SegmentTask(SegmentTrainConfig(data=data, textures=(textures,), holdout="b", patch=64,
                                              widths="8,8,8,8")).tiles) == 1  # by stem too
    own = SegmentTask(SegmentTrainConfig(data=data, textures=(tmp_path / "nowhere",), synthetic_prob=0.0,
                                         patch=64, widths="8,8,8,8"))  # a user's own tiles alone
    assert own.batch(np.random.default_rng(1), 2)[0].shape == (2, 3, 64, 64)
    assert own.validate(own.model, torch.device("cpu"), "fp32")["score"] >= 0
    with pytest.raises(InputError, match="no image 'c.png' to leave out"):
        SegmentTask(SegmentTrainConfig(data=data, textures=(textures,), holdout="c.png", patch=64))
    x, y = task.batch(np.random.default_rng(0), 6)
    assert x.shape == (6, 3, 64, 64) and y.shape == (6, 5, 64, 64)
    loss = task.loss(task.model(x), y)
    assert torch.isfinite(loss) and loss > 0
    scores = task.validate(task.model, torch.device("cpu"), "fp32")
    assert scores["cut_level"] in (2.0, 3.0, 4.0) and "score" in scores
    assert not task.donors  # copy-paste is off by default
    pasted = SegmentTask(SegmentTrainConfig(data=data, textures=(textures,), holdout="b.png", patch=64,
                                            widths="8,8,8,8", copy_paste_prob=1.0, synthetic_prob=0.0))
    assert len(pasted.donors) == 3  # the training tile's three objects, never the held-out tile's
    x, y = pasted.batch(np.random.default_rng(0), 4)
    assert torch.isfinite(pasted.loss(pasted.model(x), y))
    with pytest.raises(InputError, match="copy_paste_prob"):
        SegmentTrainConfig(data=data, textures=(textures,), copy_paste_prob=1.5)


def test_leave_one_out_fold_is_exported_with_its_own_cut_level(tmp_path, coffee):
    from restore_app.cli.main import main
    from restore_app.core.bench import fold_metadata, fold_weights
    from restore_app.core.registry import build_module, load_weights, read_manifest
    from restore_app.core.train.segment import SegmentTrainConfig

    data, textures = _tiles_and_textures(tmp_path, coffee)
    model = tmp_path / "models" / "tiny-dwt"
    run = tmp_path / "run"
    assert main(["train", "segment", "--data", str(data), "--textures", str(textures), "--holdout", "b.png",
                 "--patch", "64", "--batch", "2", "--widths", "8,8,8,8", "--iterations", "2",
                 "--val-every", "2", "--out", str(run), "--export", str(model), "--threads", "1"]) == 0
    fold = model / "folds" / "b.safetensors"
    meta = fold_metadata(fold)
    best = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if '"best": true' in line]
    assert meta["holdout"] == "b.png" and int(meta["cut_level"]) == int(best[-1]["val"]["cut_level"])
    assert not (model / "weights.safetensors").exists()  # a fold is not the full model
    # the full model's folder (trained on every tile) finds the fold beside it
    assert main(["train", "segment", "--data", str(data), "--textures", str(textures), "--patch", "64",
                 "--batch", "2", "--widths", "8,8,8,8", "--iterations", "1", "--val-every", "1",
                 "--out", str(tmp_path / "full"), "--export", str(model), "--threads", "1"]) == 0
    manifest = read_manifest(model)
    assert fold_weights(manifest, "b.png") == fold
    load_weights(build_module(manifest), fold)  # same architecture, strict keys
    # --cut-level fixes the cut instead of validation's choice: exporting the finished runs again with it
    # (the run resumes at its last step and trains no further) rewrites the fold and the manifest
    before = (run / "last.safetensors").read_bytes()
    for cut in (3, 4):
        assert main(["train", "segment", "--data", str(data), "--textures", str(textures), "--holdout", "b.png",
                     "--patch", "64", "--batch", "2", "--widths", "8,8,8,8", "--iterations", "2", "--val-every", "2",
                     "--out", str(run), "--export", str(model), "--threads", "1", "--cut-level", str(cut)]) == 0
        assert int(fold_metadata(fold)["cut_level"]) == cut
    assert (run / "last.safetensors").read_bytes() == before
    assert main(["train", "segment", "--data", str(data), "--textures", str(textures), "--patch", "64",
                 "--batch", "2", "--widths", "8,8,8,8", "--iterations", "1", "--val-every", "1",
                 "--out", str(tmp_path / "full"), "--export", str(model), "--threads", "1", "--cut-level", "4"]) == 0
    assert read_manifest(model).params["cut_level"] == 4
    with pytest.raises(InputError, match="cut_level 5"):
        SegmentTrainConfig(data=data, textures=(textures,), cut_level=5)


def test_val_tiles_are_kept_out_of_training_and_validated_on_whole(tmp_path, coffee):
    """Nested leave-one-out: ``--val-tiles`` takes tiles out of training and validates on them alone,
    whole, instead of the synthetic scenes and the training tiles' corners; the exported fold records
    them."""
    import shutil

    from restore_app.cli.main import main
    from restore_app.core.bench import fold_metadata
    from restore_app.core.io import write_image
    from restore_app.core.train.segment import SegmentTask, SegmentTrainConfig

    data, textures = _tiles_and_textures(tmp_path, coffee)
    for sub in ("images", "labels"):
        shutil.copy(data / sub / "a.png", data / sub / "c.png")
    b_labels = read_image(data / "labels" / "b.png")[:96, :136]
    write_image(data / "images" / "b.png", np.ascontiguousarray(coffee[:96, :136]))
    write_image(data / "labels" / "b.png", b_labels)
    cfg = SegmentTrainConfig(data=data, textures=(textures,), holdout="a.png", val_tiles="b", patch=64,
                             widths="8,8,8,8")
    task = SegmentTask(cfg)
    assert [lab.shape for _, lab in task.tiles] == [(160, 200)]  # c alone: a is held out, b validates
    assert len(task.val_tiles) == 1 and np.array_equal(task.val_tiles[0][1], b_labels)

    class Recording(SegmentTask):
        """Records the sizes of the images it validates on."""

        def _predict_maps(self, model, img, device):
            self.seen = [*getattr(self, "seen", []), img.shape[:2]]
            return super()._predict_maps(model, img, device)

    nested = Recording(cfg)
    assert nested.validate(nested.model, torch.device("cpu"), "fp32")["cut_level"] in (2.0, 3.0, 4.0)
    assert nested.seen == [(96, 136)]  # the whole val tile alone: no synthetic scene, not c's corner
    plain = Recording(SegmentTrainConfig(data=data, textures=(textures,), holdout="a.png", patch=64, widths="8,8,8,8"))
    plain.validate(plain.model, torch.device("cpu"), "fp32")
    assert (96, 136) in plain.seen and (160, 200) in plain.seen  # without val tiles: the training tiles b, c

    with pytest.raises(InputError, match="held-out tile"):
        SegmentTrainConfig(data=data, holdout="b.png", val_tiles="b")
    with pytest.raises(InputError, match="no image 'd' to leave out"):
        SegmentTask(SegmentTrainConfig(data=data, textures=(textures,), holdout="a", val_tiles="d", patch=64))
    model = tmp_path / "models" / "nested-dwt"
    assert main(["train", "segment", "--data", str(data), "--textures", str(textures), "--holdout", "a.png",
                 "--val-tiles", "b.png", "--patch", "64", "--batch", "2", "--widths", "8,8,8,8", "--iterations", "1",
                 "--val-every", "1", "--out", str(tmp_path / "run"), "--export", str(model), "--threads", "1"]) == 0
    assert fold_metadata(model / "folds" / "a.safetensors")["val_tiles"] == "b.png"


def test_fade_foreground_makes_objects_pale_and_leaves_the_background(coffee):
    from restore_app.core.io import to_float
    from restore_app.core.train.segment import fade_foreground

    labels = np.zeros((160, 200), np.int64)
    labels[40:120, 40:160] = np.where(_touching_discs() > 0, _touching_discs(), 0)
    img = to_float(coffee[:160, :200]).astype(np.float32)
    img[labels > 0] *= 0.3  # dark objects
    out = fade_foreground(img, labels, np.random.default_rng(0), 0.5, 0.5)
    bg, fg = labels == 0, labels > 0
    assert np.array_equal(out[bg], img[bg])
    contrast = lambda im: abs(im[bg].mean() - im[fg].mean())  # noqa: E731
    assert contrast(out) < 0.7 * contrast(img)
    assert np.corrcoef(out[fg][:, 1], img[fg][:, 1])[0, 1] > 0.5  # texture kept (under a varying background)


def test_copy_paste_adds_real_objects_with_their_own_labels_and_keeps_the_rest(coffee):
    from restore_app.core.io import to_float
    from restore_app.core.train.segment import copy_paste, donor_objects

    labels = np.zeros((160, 200), np.int64)
    labels[40:120, 40:160] = _touching_discs()
    labels[0:10, 0:10] = 4  # cut by the tile's border: not a donor
    img = to_float(coffee[:160, :200]).astype(np.float32)
    img[labels > 0] *= 0.3
    donors = donor_objects([(img, labels)])
    assert len(donors) == 3 and all(m.dtype == bool and m.any() for _, m in donors)
    assert {int(m.sum()) for _, m in donors} == {int((labels == i).sum()) for i in (1, 2, 3)}

    patch, patch_labels = img[:96, 100:196].copy(), labels[:96, 100:196].copy()
    out, out_labels = copy_paste(patch, patch_labels, donors, np.random.default_rng(2), count=(6, 7),
                                 fade_prob=0.0, blur_prob=0.0)
    assert out.shape == patch.shape and out.dtype == np.float32 and out_labels.shape == patch_labels.shape
    assert np.array_equal(patch, img[:96, 100:196])  # the inputs are not modified
    new = out_labels > patch_labels.max()
    assert 1 <= len(np.unique(out_labels[new])) <= 6 and new.sum() >= 100
    assert out[new].mean() < 0.6 * out[out_labels == 0].mean()  # dark pasted objects on their pixels
    untouched = ~new & (out_labels == 0)
    assert np.abs(out[untouched] - patch[untouched]).max() < 0.5  # only a feathered rim changes elsewhere
    ids, counts = np.unique(out_labels[out_labels > 0], return_counts=True)
    assert counts.min() >= 12  # covered slivers dropped
    faded, faded_labels = copy_paste(patch, patch_labels, donors, np.random.default_rng(2), count=(6, 7),
                                     fade_prob=1.0, blur_prob=0.0)
    assert faded[faded_labels > patch_labels.max()].mean() > out[new].mean() + 0.05  # fading makes them paler
    assert copy_paste(patch, patch_labels, [], np.random.default_rng(0))[0] is patch  # no donors: as it was


def test_vesicular_scenes_have_pale_interiors_with_dark_rims(coffee):
    from scipy import ndimage as ndi

    from restore_app.core.io import to_float
    from restore_app.core.train.segment import synthetic_scene

    textures = [to_float(coffee).astype(np.float32)]
    plain = synthetic_scene(128, textures, np.random.default_rng(5))  # the default: the earlier recipe
    assert all(np.array_equal(a, b) for a, b in
               zip(plain, synthetic_scene(128, textures, np.random.default_rng(5)), strict=True))  # seeded
    assert not np.array_equal(plain[0], synthetic_scene(128, textures, np.random.default_rng(5), vesicular=1.0)[0])

    def rim_minus_interior(img, labels):
        """Mean darkness of the objects' outer pixel ring minus that of their interiors."""
        grey, fg = img.mean(axis=2), labels > 0
        inner = ndi.binary_erosion(fg, iterations=3)
        ring = fg & ~ndi.binary_erosion(fg, iterations=1)
        return grey[inner].mean() - grey[ring].mean()  # > 0: the interior is lighter than the rim

    diffs = {v: np.mean([rim_minus_interior(*synthetic_scene(128, textures, np.random.default_rng(s), v))
                         for s in range(12)]) for v in (0.0, 1.0)}
    assert diffs[1.0] > diffs[0.0] + 0.03, diffs
    img, labels = synthetic_scene(128, textures, np.random.default_rng(0), 1.0)
    assert img.shape == (128, 128, 3) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert labels.max() >= 1 and set(np.unique(labels)) == set(range(labels.max() + 1))


def test_transposed_maps_come_back_with_their_directions_swapped():
    """The self-ensemble's inverse transform: the training targets of a transposed label map, mapped
    back by ``transpose_maps``, are the targets of the label map itself (directions included, which
    plain transposition would get wrong)."""
    labels = np.zeros((40, 56), np.int64)
    yy, xx = np.mgrid[:40, :56]
    labels[((yy - 18) / 12) ** 2 + ((xx - 20) / 7) ** 2 < 1] = 1  # an upright ellipse
    labels[((yy - 22) / 6) ** 2 + ((xx - 41) / 11) ** 2 < 1] = 2  # a lying one

    def as_maps(lab):
        t = dwt_targets(lab)
        maps = np.concatenate([t["fg"][None], t["direction"], t["energy"][None]]).astype(np.float32)
        return torch.from_numpy(maps)[None]

    straight, transposed = as_maps(labels), as_maps(np.ascontiguousarray(labels.T))
    assert torch.allclose(DWTNet.transpose_maps(transposed), straight, atol=1e-5)
    assert not torch.allclose(transposed.transpose(-2, -1), straight, atol=1e-2)  # the swap matters


@pytest.mark.parametrize("name", ENSEMBLE_TRANSFORMS)
def test_every_symmetry_of_the_maps_comes_back_through_the_ensemble(name):
    """Each pass of the self-ensemble, composed of a mirror and a transposition (the rotations by 90°
    among them), maps the DWT's maps back exactly: the targets of the transformed label map come back
    as the label map's own targets, directions included."""
    from restore_app.core.pipeline import ensemble_transforms, with_ensemble

    labels = np.zeros((40, 56), np.int64)
    yy, xx = np.mgrid[:40, :56]
    labels[((yy - 18) / 12) ** 2 + ((xx - 20) / 7) ** 2 < 1] = 1
    labels[((yy - 22) / 6) ** 2 + ((xx - 41) / 11) ** 2 < 1] = 2

    def as_maps(lab: torch.Tensor) -> torch.Tensor:  # the "network": targets of the label map it is given
        t = dwt_targets(np.ascontiguousarray(lab[0, 0].round().long().numpy()))
        maps = np.concatenate([t["fg"][None], t["direction"], t["energy"][None]]).astype(np.float32)
        return torch.from_numpy(maps)[None].contiguous(memory_format=torch.channels_last)

    x = torch.from_numpy(labels).float()[None, None]
    straight = as_maps(x)
    back = with_ensemble(as_maps, ensemble_transforms([name]), maps=DWTNet)(x)
    assert torch.allclose(back, straight, atol=1e-5)
    plain = with_ensemble(as_maps, ensemble_transforms([name]))(x)  # images' mapping: directions go wrong
    assert not torch.allclose(plain, straight, atol=1e-2)


@pytest.mark.parametrize("dims", [[-1], [-2], [-2, -1]])
def test_flipped_maps_come_back_with_their_directions_negated(dims):
    """The full self-ensemble's mirrored passes: targets of a mirrored label map, mapped back by
    ``flip_maps``, are the map's own targets (a left-right mirror negates the direction's x, an
    up-down one its y), and plain flipping would get the directions wrong."""
    labels = np.zeros((40, 56), np.int64)
    yy, xx = np.mgrid[:40, :56]
    labels[((yy - 18) / 12) ** 2 + ((xx - 20) / 7) ** 2 < 1] = 1
    labels[((yy - 22) / 6) ** 2 + ((xx - 41) / 11) ** 2 < 1] = 2

    def as_maps(lab):
        t = dwt_targets(np.ascontiguousarray(lab))
        maps = np.concatenate([t["fg"][None], t["direction"], t["energy"][None]]).astype(np.float32)
        return torch.from_numpy(maps)[None]

    straight = as_maps(labels)
    mirrored = as_maps(np.flip(labels, axis=tuple(d + 2 for d in dims)))
    assert torch.allclose(DWTNet.flip_maps(mirrored, dims), straight, atol=1e-5)
    assert not torch.allclose(mirrored.flip(dims), straight, atol=1e-2)


def test_expected_level_is_the_softmax_mean():
    """The energy's expected level (computed with torch) against the plain numpy formula, with
    logits large enough to overflow a naive exp."""
    from restore_app.core.segment import expected_level

    logits = (np.random.default_rng(3).standard_normal((16, 37, 45)) * 60).astype(np.float32)
    p = np.exp(logits.astype(np.float64) - logits.max(axis=0, keepdims=True))
    p /= p.sum(axis=0, keepdims=True)
    want = (p * np.arange(16)[:, None, None]).sum(axis=0)
    got = expected_level(logits)
    assert got.shape == (37, 45) and np.isfinite(got).all()
    assert np.abs(got - want).max() < 1e-4
    assert 0 <= got.min() and got.max() <= 15


int8 = pytest.importorskip("restore_app.core.int8")
needs_int8 = pytest.mark.skipif(not int8.available(), reason="this PyTorch has no oneDNN quantised engine")


def _photo(coffee):
    return torch.from_numpy(np.ascontiguousarray(coffee, dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _float_dwt_with_statistics(photo):
    """A float DWTNet whose batch norms hold the running statistics of ``photo`` (so folding them
    matters and the features stay normalised, as a trained network's do)."""
    torch.manual_seed(3)
    net = DWTNet(widths=(8, 8, 16, 16), cut_level=2).train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative averages: the statistics of the batches seen
    with torch.no_grad():
        net(torch.cat([photo[..., :64, :64], photo[..., 64:128, 100:164]]))
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        for head in (net.fg, net.energy[4]):  # logits that vary over the image
            head.weight.normal_(std=0.5)
    return net.eval()


@needs_int8
def test_int8_dwt_folds_batch_norms_simulates_its_int8_graph_and_runs_int8_kernels(coffee):
    from torch.ao.quantization import disable_fake_quant, enable_fake_quant

    photo = _photo(coffee)
    net = _float_dwt_with_statistics(photo)
    q = DWTNetInt8(widths=(8, 8, 16, 16), cut_level=2)
    q.load_float_state(net.state_dict())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in q.modules())
    q.train()
    with torch.no_grad():  # the quantisers' ranges from a batch in training mode
        q(torch.cat([photo[..., :64, :64], photo[..., 64:128, 100:164]]))
    q.eval()
    x = photo[..., 150:195, 200:270]  # not a multiple of 8
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")
    with torch.inference_mode():
        ref, out = net(x), q(x)
        sim = q.qat(padded)[..., :45, :70]
        q.qat.apply(disable_fake_quant)  # without its quantisers the graph is the float network,
        unquantised = q.qat(padded)[..., :45, :70]  # batch norms folded into the convolutions
        q.qat.apply(enable_fake_quant)
    assert torch.allclose(unquantised, ref, atol=1e-3, rtol=1e-4)
    assert out.shape == ref.shape == (1, 19, 45, 70) and not torch.allclose(out, ref, atol=1e-3)
    for part in (slice(0, 1), slice(3, 19)):  # the int8 graph computes what trains (fake quantisation)
        assert float(((sim[:, part] - out[:, part]) ** 2).mean()) < 0.02 * float(sim[:, part].var())
    assert torch.allclose(out[:, 1:3].norm(dim=1), torch.ones(1), atol=1e-3)  # unit directions, in fp32
    kinds = {type(m).__module__ for m in q.int8_graph().modules()}
    assert any(k.startswith("torch.ao.nn.intrinsic.quantized") for k in kinds)  # fused int8 conv + ReLU
    # the maps' helpers and post-processing are the float model's
    labels = q.postprocess(torch.from_numpy(_oracle_maps(_touching_discs())[0])[None])
    assert int(labels.max()) == 3


@needs_int8
def test_int8_dwt_trains_from_a_float_fold_and_exports_a_loadable_fold(tmp_path, coffee):
    """``restore train segment --int8 --init <fp32 fold> --holdout b.png``: quantisation-aware training
    from the float fold's weights, exported as the int8 model's fold, loadable by its manifest."""
    from safetensors.torch import load_file, save_file

    from restore_app.cli.main import main
    from restore_app.core.bench import fold_metadata, fold_weights
    from restore_app.core.registry import build_module, load_weights, parse_manifest
    from restore_app.core.train.segment import SegmentTask, SegmentTrainConfig, manifest_fields

    data, textures = _tiles_and_textures(tmp_path, coffee)
    net = _float_dwt_with_statistics(_photo(coffee))
    save_file(net.state_dict(), str(tmp_path / "float.safetensors"))
    with pytest.raises(InputError, match="fp32"):
        SegmentTrainConfig(int8=True, precision="bf16")
    args = ["--data", str(data), "--textures", str(textures), "--holdout", "b.png", "--patch", "64",
            "--batch", "2", "--widths", "8,8,16,16", "--int8", "--init", str(tmp_path / "float.safetensors")]
    cfg = SegmentTrainConfig(data=data, textures=(textures,), holdout="b.png", patch=64, widths="8,8,16,16",
                             int8=True, init=tmp_path / "float.safetensors")
    task = SegmentTask(cfg)
    start = task.init_state(load_file(str(cfg.init)))
    assert any(k.startswith("qat.") for k in start) and task.init_state(start) is start
    fields = manifest_fields(cfg)
    assert fields["id"] == "restore-dwt-int8" and fields["architecture"] == "dwt_net_int8"
    assert fields["precisions"] == ["int8"] and fields["int8_of"] == "restore-dwt"
    shipped = default_registry().get("restore-dwt-int8")  # the export writes the shipped manifest's choices
    assert (fields["description"], tuple(fields["ensemble"]), fields["int8_of"]) == \
        (shipped.description, shipped.ensemble, shipped.int8_of)
    model = tmp_path / "models" / "restore-dwt-int8"
    assert main(["train", "segment", *args, "--iterations", "2", "--val-every", "2", "--out", str(tmp_path / "run"),
                 "--export", str(model), "--threads", "1"]) == 0
    fold = model / "folds" / "b.safetensors"
    assert fold_metadata(fold)["holdout"] == "b.png"
    manifest = parse_manifest({**fields, "weights": "weights.safetensors"}, root=model)
    module = build_module(manifest)
    load_weights(module, fold)  # strict keys: the int8 graph's weights and quantiser ranges
    module.eval()
    trained = SegmentTask(cfg).model
    trained.load_state_dict(load_file(str(tmp_path / "run" / "best.safetensors")))
    x = torch.rand(1, 3, 40, 48)
    with torch.inference_mode():
        assert torch.equal(module(x), trained.eval()(x))
    assert fold_weights(manifest, "b.png") == fold


def test_distillation_learns_the_init_weights_self_ensemble(tmp_path, coffee):
    from safetensors.torch import save_file

    from restore_app.core.train.segment import SegmentTask, SegmentTrainConfig, distill_loss, distill_targets, dwt_loss

    data, textures = _tiles_and_textures(tmp_path, coffee)
    with pytest.raises(InputError, match="give --init"):
        SegmentTrainConfig(data=data, textures=(textures,), widths="8,8,8,8", distill=True)
    teacher = DWTNet(widths=(8, 8, 8, 8)).eval()
    torch.manual_seed(0)
    for p in teacher.parameters():
        p.data.normal_(0, 0.3)  # asymmetric filters: each symmetry sees the image differently
    init = tmp_path / "init.safetensors"
    save_file(teacher.state_dict(), str(init))
    with pytest.raises(InputError, match="--distill needs float DWT weights of widths 8,8,8,16"):
        SegmentTask(SegmentTrainConfig(data=data, textures=(textures,), widths="8,8,8,16", distill=True, init=init))
    cpu = torch.device("cpu")
    x = torch.rand(2, 3, 32, 32)
    maps = distill_targets(teacher, cpu, "fp32", x)
    # the average over all 8 symmetries is equivariant: the maps of a transformed image are the maps
    # transformed (directions included), which no single pass of these filters is
    assert torch.allclose(distill_targets(teacher, cpu, "fp32", x.transpose(-2, -1)), teacher.transpose_maps(maps),
                          atol=1e-5)
    assert torch.allclose(distill_targets(teacher, cpu, "fp32", x.flip(-1)), teacher.flip_maps(maps, [-1]), atol=1e-5)
    with torch.inference_mode():
        single = teacher(x)
    assert not torch.allclose(teacher(x.flip(-1)), teacher.flip_maps(single, [-1]), atol=1e-3)
    # the loss is least at the teacher's own maps
    assert distill_loss(maps, maps) < distill_loss(single, maps)
    task = SegmentTask(SegmentTrainConfig(data=data, textures=(textures,), holdout="b.png", patch=64,
                                          widths="8,8,8,8", distill=True, init=init, precision="fp32"))
    xb, yb = task.batch(np.random.default_rng(0), 2)
    assert yb.shape == (2, 5 + 19, 64, 64)  # the labels' targets, then the teacher's maps
    assert torch.allclose(yb[:, 5:], distill_targets(teacher, cpu, "fp32", xb), atol=1e-4)
    pred = task.model(xb)
    plain = dwt_loss(pred, yb[:, :5])
    assert torch.isclose(task.loss(pred, yb), plain + distill_loss(pred, yb[:, 5:]))  # both terms, weight 1
    assert distill_loss(pred, yb[:, 5:]) > 0.1
