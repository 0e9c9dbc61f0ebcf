"""Metrics pinned to skimage.metrics and pytorch_msssim on real image pairs, plus the edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as ref_ms_ssim
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restore_app.core import metrics as M
from restore_app.core.color import rgb_to_y
from restore_app.core.degrade import add_gaussian_noise, jpeg_compress
from restore_app.core.errors import InputError
from restore_app.core.io import read_image


def _sk_ssim(a, b, data_range):
    return structural_similarity(a, b, data_range=data_range, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, channel_axis=2 if a.ndim == 3 else None)


def _ref_ms(a, b, data_range):
    t = lambda x: torch.from_numpy(np.asarray(x, np.float64).copy()).reshape(  # noqa: E731
        x.shape[0], x.shape[1], -1).permute(2, 0, 1)[None]
    return float(ref_ms_ssim(t(a), t(b), data_range=data_range))


def _pairs(coffee, astronaut):
    noisy = np.clip(np.rint(add_gaussian_noise(coffee / 255.0, 0.05, seed=1) * 255), 0, 255).astype(np.uint8)
    return [("coffee-jpeg10", coffee, jpeg_compress(coffee, 10)),
            ("coffee-noisy", coffee, noisy),
            ("astronaut-jpeg40", astronaut, jpeg_compress(astronaut, 40)),
            ("astronaut-odd-crop", astronaut[:333, :251], jpeg_compress(astronaut[:333, :251], 20)),
            ("astronaut-grey", astronaut[..., 1].copy(), jpeg_compress(astronaut[..., 1].copy(), 15))]


def test_psnr_ssim_msssim_pinned_to_references(coffee, astronaut):
    for name, a, b in _pairs(coffee, astronaut):
        assert M.psnr(a, b, 255) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255), abs=1e-4), name
        assert M.ssim(a, b, 255) == pytest.approx(_sk_ssim(a, b, 255), abs=1e-4), name
        assert M.ms_ssim(a, b, 255) == pytest.approx(_ref_ms(a, b, 255), abs=1e-4), name
        # the same in [0, 1] units
        assert M.ssim(a / 255.0, b / 255.0) == pytest.approx(_sk_ssim(a / 255.0, b / 255.0, 1.0), abs=1e-4)


@pytest.mark.data
def test_pinned_on_dataset_images(datasets):
    for path in sorted((datasets / "classic5").glob("*.bmp"))[:2] + sorted((datasets / "mcmaster").glob("*.tif"))[:2]:
        a = read_image(path)
        b = jpeg_compress(a, 25)
        assert M.ssim(a, b, 255) == pytest.approx(_sk_ssim(a, b, 255), abs=1e-4)
        assert M.ms_ssim(a, b, 255) == pytest.approx(_ref_ms(a, b, 255), abs=1e-4)


def test_y_and_crop_conventions(coffee):
    b = jpeg_compress(coffee, 20)
    ya, yb = rgb_to_y(coffee, 255.0), rgb_to_y(b, 255.0)
    # MATLAB rgb2ycbcr: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for 8-bit values
    r, g, bl = (coffee[..., i].astype(np.float64) for i in range(3))
    np.testing.assert_allclose(ya, 16 + (65.481 * r + 128.553 * g + 24.966 * bl) / 255)
    assert M.psnr(coffee, b, 255, y=True) == pytest.approx(peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-6)
    assert M.ssim(coffee, b, 255, y=True, crop=8) == pytest.approx(
        _sk_ssim(ya[8:-8, 8:-8], yb[8:-8, 8:-8], 255), abs=1e-4)
    with pytest.raises(InputError, match="y=True needs 3-channel"):
        M.psnr(coffee[..., 0], b[..., 0], y=True)


def test_identical_and_constant_images(coffee):
    assert M.psnr(coffee, coffee, 255) == np.inf
    assert M.ssim(coffee, coffee, 255) == pytest.approx(1.0)
    assert M.ms_ssim(coffee, coffee, 255) == pytest.approx(1.0)
    a, b = np.full((200, 200), 0.3), np.full((200, 200), 0.5)
    assert M.ssim(a, a) == pytest.approx(1.0)
    c1 = 0.01 ** 2
    assert M.ssim(a, b) == pytest.approx((2 * 0.3 * 0.5 + c1) / (0.3 ** 2 + 0.5 ** 2 + c1))
    assert M.psnr(a, b) == pytest.approx(20 * np.log10(1 / 0.2))
    assert 0 < M.ms_ssim(a, b) <= 1


def test_too_small_images_are_clear_errors():
    small = np.zeros((100, 300))
    with pytest.raises(InputError, match=r"MS-SSIM with 5 scales needs images of at least 161×161 pixels; got 100×300"):
        M.ms_ssim(small, small)
    with pytest.raises(InputError, match="SSIM needs images of at least 11"):
        M.ssim(np.zeros((8, 8)), np.zeros((8, 8)))
    assert M.compare(small, small + 0.1).ms_ssim is None  # compare reports it as not applicable
    with pytest.raises(InputError, match="crop of 60 pixels"):
        M.psnr(small, small, crop=60)
    with pytest.raises(InputError, match="same shape"):
        M.psnr(np.zeros((10, 10)), np.zeros((10, 11)))


def test_torch_batches_are_differentiable_and_modules_match(coffee, astronaut):
    a = torch.from_numpy(coffee[:192, :256] / 255.0).permute(2, 0, 1).float()
    b = torch.from_numpy(astronaut[:192, :256] / 255.0).permute(2, 0, 1).float()
    x = torch.stack([a, b])
    y = torch.stack([b, a]).requires_grad_(True)
    for fn, mod in ((M.psnr, M.PSNR()), (M.ssim, M.SSIM()), (M.ms_ssim, M.MSSSIM())):
        out = fn(x, y)
        assert out.shape == (2,)
        torch.testing.assert_close(mod(x, y), out)
    M.ms_ssim(x, y).sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0
    numpy_value = M.ssim(coffee[:192, :256] / 255.0, astronaut[:192, :256] / 255.0)
    assert float(M.ssim(x, y.detach())[0]) == pytest.approx(numpy_value, abs=1e-5)


def test_error_map(coffee):
    b = coffee.astype(np.float64).copy()
    b[10, 20] += 30
    emap = M.error_map(coffee / 255.0, np.clip(b, 0, 255) / 255.0)
    assert emap.shape == coffee.shape[:2]
    assert emap.argmax() == 10 * coffee.shape[1] + 20
    assert emap.sum() == pytest.approx((np.clip(b, 0, 255) - coffee)[10, 20].mean() / 255, rel=1e-5)


def _labels(shape, boxes):
    lab = np.zeros(shape, np.int32)
    for i, (y0, y1, x0, x1) in enumerate(boxes, start=1):
        lab[y0:y1, x0:x1] = i
    return lab


def test_instance_scores():
    gt = _labels((40, 40), [(0, 10, 0, 10), (20, 30, 20, 30), (0, 10, 25, 35)])
    assert M.instance_scores(gt, gt * 7) == {"ap50": 1.0, "map": 1.0, "f1": 1.0}  # ids need not match
    # one object missed, one false positive, one object covered at IoU 0.6
    pred = _labels((40, 40), [(0, 10, 0, 6), (20, 30, 20, 30), (32, 38, 0, 6)])
    s = M.instance_scores(gt, pred)
    assert s["ap50"] == pytest.approx(2 / (2 + 1 + 1))  # TP 2, FP 1, FN 1
    assert s["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert s["map"] < s["ap50"]
    assert M.instance_scores(gt, np.zeros_like(gt))["ap50"] == 0.0
    # a split object: two halves of IoU 0.5 each cannot both match
    split = _labels((40, 40), [(0, 10, 0, 5), (0, 10, 5, 10)])
    iou = M.iou_matrix(_labels((40, 40), [(0, 10, 0, 10)]), split)
    np.testing.assert_allclose(iou, [[0.5, 0.5]])
    assert M.match_counts(iou, 0.5) == (1, 1, 0)
