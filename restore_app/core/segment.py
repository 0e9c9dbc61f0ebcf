"""Instance segmentation with the Deep Watershed Transform: training targets from label maps,
instances from predicted maps, and the outputs people use (label map, overlay, count, table).

Energy levels quantise each instance pixel's distance to the instance's boundary (0 on the boundary
pixels themselves) with the paper's bins (0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 37, 45, 54, ∞
pixels) multiplied by ``bin_scale`` to suit the objects' size (1 suits nuclei of 5–25 pixel radius,
whose centres then reach levels 6–11); level 0 is the background.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from restore_app.core.checks import check_image_array
from restore_app.core.errors import OutputError
from restore_app.core.io import write_image
from restore_app.core.io.atomic import atomic_output
from restore_app.core.visual import to_u8

PAPER_BINS = (0, 1, 2, 3, 4, 5, 7, 9, 12, 15, 19, 24, 30, 37, 45, 54)


def energy_bins(bin_scale: float = 1.0) -> np.ndarray:
    return np.asarray(PAPER_BINS[1:], dtype=np.float32) * bin_scale


def dwt_targets(labels: np.ndarray, bin_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Training targets of a label map ``(H, W)`` (0 = background).

    Returns ``fg`` (H, W) {0, 1}; ``direction`` (2, H, W), the unit vector (dx, dy) away from the
    nearest boundary (zero on the background); ``energy`` (H, W) int levels 0–15; ``weight`` (H, W),
    1/√area of the pixel's instance (1/√median area on the background).
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    dist = np.zeros((h, w), np.float32)
    direction = np.zeros((2, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    for obj, box in zip(range(1, int(labels.max()) + 1), ndi.find_objects(labels), strict=False):
        if box is None:
            continue
        y0, y1 = max(0, box[0].start - 1), min(h, box[0].stop + 1)
        x0, x1 = max(0, box[1].start - 1), min(w, box[1].stop + 1)
        mask = labels[y0:y1, x0:x1] == obj
        d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].astype(np.float32) - 1.0
        gy, gx = np.gradient(ndi.gaussian_filter(np.maximum(d + 1, 0), 0.7))
        norm = np.hypot(gx, gy) + 1e-6
        dist[y0:y1, x0:x1][mask] = d[mask]
        direction[0, y0:y1, x0:x1][mask] = (gx / norm)[mask]
        direction[1, y0:y1, x0:x1][mask] = (gy / norm)[mask]
    fg = (labels > 0).astype(np.float32)
    energy = np.where(labels > 0, np.minimum(1 + np.digitize(dist, energy_bins(bin_scale)), 15), 0).astype(np.int64)
    if ids.size:
        lookup = np.zeros(int(labels.max()) + 1, np.float32)
        lookup[ids] = 1.0 / np.sqrt(areas)
        weight = lookup[labels]
        weight[labels == 0] = 1.0 / np.sqrt(np.median(areas))
    else:
        weight[:] = 1.0 / np.sqrt(100.0)
    return {"fg": fg, "direction": direction, "energy": energy, "weight": weight}


def expected_level(logits: np.ndarray) -> np.ndarray:
    """The energy's expected level per pixel, ``Σ k·softmax(logits)_k``, for ``(K, H, W)`` logits.

    Computed with torch (threaded, in place): numpy's strided reductions over the level axis took
    about a third of the network's own time on a 2-core CPU.
    """
    t = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
    with torch.inference_mode():
        p = torch.softmax(t, dim=0)
        ks = torch.arange(t.shape[0], dtype=torch.float32)
        return torch.tensordot(ks, p, dims=1).numpy()


def instances_from_maps(maps: np.ndarray, cut_level: int = 3, min_area: int = 8) -> np.ndarray:
    """Instances from predicted maps ``(19, H, W)`` (foreground logit, direction, energy logits).

    The energy's expected level is cut at ``cut_level``; the connected components above the cut are
    the instance cores, which grow back over the foreground by a watershed on the energy (the paper's
    dilation, stopped where two instances meet). Components under ``min_area`` pixels are dropped.
    Returns ``(H, W)`` int32 labels.
    """
    fg = maps[0] > 0
    level = expected_level(maps[3:])
    cores, n = ndi.label((level >= cut_level) & fg)
    if n == 0:
        return np.zeros(fg.shape, np.int32)
    sizes = np.bincount(cores.ravel())
    keep = sizes >= max(1, min_area // 4)
    keep[0] = False
    cores = np.where(keep[cores], cores, 0)
    from skimage.segmentation import watershed

    grown = watershed(-level, markers=cores, mask=fg)
    # fragments under min_area dropped and the rest renumbered 1..N, in one lookup
    keep = np.bincount(grown.ravel()) >= min_area
    keep[0] = False
    return np.where(keep, np.cumsum(keep), 0).astype(np.int32)[grown]


def instance_table(labels: np.ndarray, image: np.ndarray | None = None) -> list[dict]:
    """One row per instance: id, area (px), centroid (x, y), bounding box and mean intensity (of
    the image's grey level in [0, 1], when an image is given)."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = ndi.sum_labels(np.ones_like(labels, np.float64), labels, index)
    centroids = ndi.center_of_mass(np.ones_like(labels, np.float64), labels, index)
    boxes = ndi.find_objects(labels)
    grey = None
    if image is not None:
        img = np.asarray(image, np.float64)
        grey = img.mean(axis=2) if img.ndim == 3 else img
        means = ndi.mean(grey, labels, index)
    rows = []
    for i in range(n):
        if areas[i] == 0 or boxes[i] is None:
            continue
        b = boxes[i]
        row = {"id": i + 1, "area": int(areas[i]), "centroid_x": round(float(centroids[i][1]), 2),
               "centroid_y": round(float(centroids[i][0]), 2), "bbox_x": b[1].start, "bbox_y": b[0].start,
               "bbox_width": b[1].stop - b[1].start, "bbox_height": b[0].stop - b[0].start}
        if grey is not None:
            row["mean_intensity"] = round(float(means[i]), 5)
        rows.append(row)
    return rows


def label_colours(n: int) -> np.ndarray:
    """``(n + 1, 3)`` uint8 distinct colours (golden-angle hues); index 0 is black."""
    import colorsys

    colours = [(0, 0, 0)] + [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((i * 0.618034) % 1, 0.75, 1.0))
                             for i in range(n)]
    return np.array(colours, np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The image with each instance tinted in its own colour and outlined (uint8 RGB)."""
    from skimage.segmentation import find_boundaries

    base = to_u8(check_image_array(image)).astype(np.float32)
    labels = np.asarray(labels)
    colours = label_colours(int(labels.max(initial=0))).astype(np.float32)
    tint = colours[labels]
    inside = labels > 0
    out = base.copy()
    out[inside] = (1 - alpha) * base[inside] + alpha * tint[inside]
    edges = find_boundaries(labels, mode="inner")
    out[edges] = tint[edges]
    return np.clip(out, 0, 255).astype(np.uint8)


def companion_paths(labels_path: Path) -> tuple[Path, Path]:
    """Where the overlay and the table of a label map go: ``NAME.overlay.png`` and ``NAME.csv``."""
    return labels_path.with_name(labels_path.stem + ".overlay.png"), labels_path.with_suffix(".csv")


def write_segmentation(path: Path, labels: np.ndarray, image: np.ndarray | None = None) -> Path:
    """Write the 16-bit label map to ``path`` and, beside it, the overlay and the instance table.

    Returns the label map's path; every file is written atomically.
    """
    if labels.max(initial=0) > 65535:
        raise OutputError(f"{path}: {labels.max()} instances do not fit in a 16-bit label map")
    if path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise OutputError(f"{path}: label maps are written as 16-bit .png or .tif")
    write_image(path, labels.astype(np.uint16), bit_depth=16)
    ov_path, csv_path = companion_paths(path)
    if image is not None:
        write_image(ov_path, overlay(image, labels))
    rows = instance_table(labels, image)
    with atomic_output(csv_path) as tmp, open(tmp, "w", newline="") as fh:
        fields = ["id", "area", "centroid_x", "centroid_y", "bbox_x", "bbox_y", "bbox_width", "bbox_height"]
        if image is not None:
            fields.append("mean_intensity")
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path
