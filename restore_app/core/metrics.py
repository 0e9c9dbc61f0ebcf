"""Image quality metrics: PSNR, SSIM and MS-SSIM (Wang et al.), error maps, and instance AP.

Functions take two images of the same shape: numpy arrays ``(H, W)`` / ``(H, W, C)`` (the result is
a Python float, computed in float64) or tensors ``(B, C, H, W)`` (the result is a ``(B,)`` tensor in
the input's dtype, differentiable, so MS-SSIM serves as a training loss too).

Options shared by all: ``data_range`` (1.0 for [0, 1] floats, 255 for 8-bit values), ``crop`` (pixels
removed from every border first) and ``y`` (score BT.601 luma of RGB input, MATLAB ``rgb2ycbcr``).

Conventions, pinned by the tests against ``skimage.metrics`` and ``pytorch_msssim``:

* SSIM: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, population covariances, mean over
  the valid region (no padding), then over channels.
* MS-SSIM (Wang, Simoncelli & Bovik 2003): five scales with exponents 0.0448, 0.2856, 0.3001,
  0.2363, 0.1333; 2×2 average pooling between scales; images need a side of at least 161 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from restore_app.core.checks import check_range, check_same_shape
from restore_app.core.color import rgb_to_y
from restore_app.core.errors import InputError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5


def _prepare(a, b, data_range: float, crop: int, y: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both inputs as ``(B, C, H, W)`` tensors (float64 for numpy), cropped, optionally as luma."""
    check_same_shape(a, b)
    check_range(data_range, 1e-12, None, "data_range")
    check_range(crop, 0, None, "crop")
    from_numpy = isinstance(a, np.ndarray)
    if from_numpy != isinstance(b, np.ndarray):
        raise TypeError("compare two numpy arrays or two tensors, not one of each")
    if from_numpy:
        def to_t(x: np.ndarray) -> torch.Tensor:
            t = torch.from_numpy(np.asarray(x, dtype=np.float64))
            return t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
        ta, tb = to_t(a), to_t(b)
    else:
        if a.ndim != 4:
            raise InputError(f"tensors must be (B, C, H, W); got shape {tuple(a.shape)}")
        ta, tb = a, b
        if not ta.is_floating_point():
            ta, tb = ta.double(), tb.double()
    if y:
        if ta.shape[1] != 3:
            raise InputError(f"y=True needs 3-channel RGB images; got {ta.shape[1]} channels")
        ta, tb = rgb_to_y(ta, data_range), rgb_to_y(tb, data_range)
    if crop:
        h, w = ta.shape[-2:]
        if 2 * crop >= min(h, w):
            raise InputError(f"crop of {crop} pixels leaves nothing of a {h}×{w} image")
        ta, tb = ta[..., crop:h - crop, crop:w - crop], tb[..., crop:h - crop, crop:w - crop]
    return ta, tb, from_numpy


def _finish(values: torch.Tensor, from_numpy: bool):
    return float(values.mean()) if from_numpy else values


def psnr(a, b, data_range: float = 1.0, crop: int = 0, y: bool = False):
    """Peak signal-to-noise ratio in dB (``inf`` for identical images).

    >>> round(psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)), 6)
    20.0
    """
    ta, tb, from_numpy = _prepare(a, b, data_range, crop, y)
    mse = (ta - tb).pow(2).flatten(1).mean(dim=1)
    return _finish(10 * torch.log10(data_range ** 2 / mse), from_numpy)


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    half = SSIM_WINDOW // 2
    x = torch.arange(-half, half + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter_valid(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    x = F.conv2d(x, win.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, win.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def _ssim_components(x: torch.Tensor, y: torch.Tensor, data_range: float,
                     win: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean SSIM and contrast-structure terms, each ``(B, C)``."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _filter_valid(x, win), _filter_valid(y, win)
    var_x = _filter_valid(x * x, win) - mu_x ** 2
    var_y = _filter_valid(y * y, win) - mu_y ** 2
    cov = _filter_valid(x * y, win) - mu_x * mu_y
    cs_map = (2 * cov + c2) / (var_x + var_y + c2)
    ssim_map = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1) * cs_map
    return ssim_map.flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ssim(a, b, data_range: float = 1.0, crop: int = 0, y: bool = False):
    """Structural similarity (Wang et al. 2004), mean over the valid region and the channels."""
    ta, tb, from_numpy = _prepare(a, b, data_range, crop, y)
    if min(ta.shape[-2:]) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels; "
                         f"got {ta.shape[-2]}×{ta.shape[-1]}")
    s, _ = _ssim_components(ta, tb, data_range, _gaussian_window(ta.dtype, ta.device))
    return _finish(s.mean(dim=1), from_numpy)


def ms_ssim_min_size(levels: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest side MS-SSIM accepts: the window must fit at the coarsest scale."""
    return (SSIM_WINDOW - 1) * 2 ** (levels - 1) + 1


def ms_ssim(a, b, data_range: float = 1.0, crop: int = 0, y: bool = False,
            weights: tuple[float, ...] = MS_SSIM_WEIGHTS):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003).

    Raises :class:`InputError` if the smaller side (after ``crop``) is below
    :func:`ms_ssim_min_size` (161 pixels for five scales).
    """
    ta, tb, from_numpy = _prepare(a, b, data_range, crop, y)
    need = ms_ssim_min_size(len(weights))
    if min(ta.shape[-2:]) < need:
        raise InputError(f"MS-SSIM with {len(weights)} scales needs images of at least {need}×{need} "
                         f"pixels; got {ta.shape[-2]}×{ta.shape[-1]}")
    win = _gaussian_window(ta.dtype, ta.device)
    w = torch.tensor(weights, dtype=ta.dtype, device=ta.device)
    terms = []
    for level in range(len(weights)):
        s, cs = _ssim_components(ta, tb, data_range, win)
        if level < len(weights) - 1:
            terms.append(torch.relu(cs))
            pad = [ta.shape[-2] % 2, ta.shape[-1] % 2]
            ta = F.avg_pool2d(ta, kernel_size=2, padding=pad)
            tb = F.avg_pool2d(tb, kernel_size=2, padding=pad)
    terms.append(torch.relu(s))
    stacked = torch.stack(terms, dim=0)  # (levels, B, C)
    values = torch.prod(stacked ** w.view(-1, 1, 1), dim=0).mean(dim=1)
    return _finish(values, from_numpy)


def error_map(a: np.ndarray, b: np.ndarray, crop: int = 0, y: bool = False) -> np.ndarray:
    """Per-pixel absolute error ``(H, W)`` (mean over channels), ``float32``."""
    ta, tb, _ = _prepare(np.asarray(a), np.asarray(b), 1.0, crop, y)
    return (ta - tb).abs().mean(dim=1)[0].numpy().astype(np.float32)


@dataclass(frozen=True)
class Scores:
    """PSNR, SSIM and MS-SSIM of one comparison, with the convention used."""

    psnr: float
    ssim: float
    ms_ssim: float | None
    y: bool
    crop: int
    data_range: float

    def as_dict(self) -> dict:
        return {"psnr": self.psnr, "ssim": self.ssim, "ms_ssim": self.ms_ssim}

    @property
    def convention(self) -> str:
        space = "Y (BT.601)" if self.y else "RGB"
        return f"{space}, crop {self.crop} px, data range {self.data_range:g}"


def compare(reference: np.ndarray, test: np.ndarray, data_range: float = 1.0, crop: int = 0,
            y: bool = False) -> Scores:
    """All three metrics of ``test`` against ``reference``; MS-SSIM is ``None`` if too small."""
    p = psnr(reference, test, data_range, crop, y)
    s = ssim(reference, test, data_range, crop, y)
    h, w = reference.shape[:2]
    ms = ms_ssim(reference, test, data_range, crop, y) \
        if min(h, w) - 2 * crop >= ms_ssim_min_size() else None
    return Scores(psnr=p, ssim=s, ms_ssim=ms, y=y, crop=crop, data_range=data_range)


class PSNR(nn.Module):
    """Module wrapper of :func:`psnr` for ``(B, C, H, W)`` tensors."""

    def __init__(self, data_range: float = 1.0, crop: int = 0, y: bool = False) -> None:
        super().__init__()
        self.data_range, self.crop, self.y = data_range, crop, y

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return psnr(a, b, self.data_range, self.crop, self.y)


class SSIM(PSNR):
    """Module wrapper of :func:`ssim`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ssim(a, b, self.data_range, self.crop, self.y)


class MSSSIM(PSNR):
    """Module wrapper of :func:`ms_ssim`."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ms_ssim(a, b, self.data_range, self.crop, self.y)


# ---------------------------------------------------------------------------------------------
# Instance segmentation: average precision at IoU thresholds, AP_t = TP / (TP + FP + FN).

AP_THRESHOLDS = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2))


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth instance (rows) with every predicted one (columns).

    Both are integer label maps ``(H, W)``, 0 for background, instances numbered from 1 (gaps
    allowed: labels are compacted first).
    """
    check_same_shape(gt, pred, ("ground truth", "prediction"))
    gt_ids, g = np.unique(gt, return_inverse=True)
    pred_ids, p = np.unique(pred, return_inverse=True)
    ng, npred = gt_ids.size, pred_ids.size
    inter = np.bincount(g.ravel() * npred + p.ravel(), minlength=ng * npred).reshape(ng, npred)
    union = inter.sum(axis=1)[:, None] + inter.sum(axis=0)[None, :] - inter
    iou = inter / np.maximum(union, 1)
    return iou[gt_ids != 0][:, pred_ids != 0]


def match_counts(iou: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """``(TP, FP, FN)`` under a one-to-one matching maximising total IoU among pairs ≥ threshold."""
    from scipy.optimize import linear_sum_assignment

    n_gt, n_pred = iou.shape
    if n_gt == 0 or n_pred == 0:
        return 0, n_pred, n_gt
    ok = iou >= threshold
    cost = np.where(ok, -iou, 0.0)
    rows, cols = linear_sum_assignment(cost)
    tp = int(ok[rows, cols].sum())
    return tp, n_pred - tp, n_gt - tp


def instance_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``ap50``, ``map`` (mean AP over IoU 0.50:0.05:0.95) and ``f1`` at IoU 0.5 of one image."""
    iou = iou_matrix(np.asarray(gt), np.asarray(pred))
    aps = []
    f1 = 0.0
    for t in AP_THRESHOLDS:
        tp, fp, fn = match_counts(iou, t)
        denom = tp + fp + fn
        aps.append(tp / denom if denom else 1.0)
        if t == 0.5:
            f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"ap50": float(aps[0]), "map": float(np.mean(aps)), "f1": float(f1)}
