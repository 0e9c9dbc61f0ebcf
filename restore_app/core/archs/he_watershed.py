"""Classical nuclei segmentation: Otsu on the haematoxylin channel, distance transform, watershed.

The baseline the Deep Watershed Transform is measured against (see ``models/he-watershed``).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn

from restore_app.core.checks import check_range, check_tensor


def segment_he(rgb: np.ndarray, min_distance: int = 4, min_area: int = 10) -> np.ndarray:
    """Label nuclei in an ``(H, W, 3)`` H&E image in [0, 1]: ``(H, W)`` int32, 0 = background."""
    from skimage.color import rgb2hed
    from skimage.feature import peak_local_max
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    hema = rgb2hed(np.clip(rgb, 0, 1))[..., 0]
    if np.ptp(hema) == 0:
        return np.zeros(hema.shape, np.int32)
    fg = hema > threshold_otsu(hema)
    fg = ndi.binary_fill_holes(fg)
    components, _ = ndi.label(fg)
    keep = np.bincount(components.ravel()) > min_area
    keep[0] = False
    fg = keep[components]
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=min_distance, labels=ndi.label(fg)[0],
                           exclude_border=False)
    markers = np.zeros(dist.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


class HEWatershed(nn.Module):
    """``(B, 3, H, W)`` RGB in [0, 1] → ``(B, 1, H, W)`` instance labels (int64, 0 = background)."""

    def __init__(self, min_distance: int = 4, min_area: int = 10) -> None:
        super().__init__()
        self.min_distance = int(check_range(min_distance, 1, None, "min_distance"))
        self.min_area = int(check_range(min_area, 0, None, "min_area"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_tensor(x, "x", ndim=4, channels=3)
        arr = x.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        labels = [segment_he(im, self.min_distance, self.min_area) for im in arr]
        return torch.from_numpy(np.stack(labels)[:, None].astype(np.int64)).to(x.device)
