"""OpenCV's classical demosaicing (VNG or edge-aware) as a module, for baselines."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from restore_app.core.checks import check_choice, check_tensor

# OpenCV names Bayer patterns by the second row's first two pixels: RGGB is "BG".
_CODES = {"vng": cv2.COLOR_BayerBG2RGB_VNG, "ea": cv2.COLOR_BayerBG2RGB_EA,
          "bilinear": cv2.COLOR_BayerBG2RGB}


class OpenCVDemosaic(nn.Module):
    """``(B, 1, H, W)`` RGGB mosaic in [0, 1] → ``(B, 3, H, W)`` RGB with OpenCV's ``method``.

    VNG works on 8-bit data only, so the mosaic is rounded to 8 bits (exact for 8-bit sources);
    ``ea`` and ``bilinear`` use 16 bits. Runs on the CPU through numpy.
    """

    def __init__(self, method: str = "vng") -> None:
        super().__init__()
        self.method = check_choice(method, tuple(_CODES), "method")

    def forward(self, mosaic: torch.Tensor) -> torch.Tensor:
        check_tensor(mosaic, "mosaic", ndim=4, channels=1)
        peak = 255 if self.method == "vng" else 65535
        dtype = np.uint8 if self.method == "vng" else np.uint16
        arr = mosaic.detach().float().cpu().numpy()
        outs = []
        for m in arr[:, 0]:
            q = np.rint(np.clip(m, 0.0, 1.0) * peak).astype(dtype)
            outs.append(cv2.cvtColor(q, _CODES[self.method]).astype(np.float32) / peak)
        out = torch.from_numpy(np.stack(outs)).permute(0, 3, 1, 2)
        return out.to(device=mosaic.device, dtype=mosaic.dtype)
