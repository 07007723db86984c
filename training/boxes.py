"""FracAtlas fracture boxes as supervision: YOLO files -> masks in the model input -> cell targets.

The boxes are drawn on the original film; `utils.core.preprocess.preprocess_with_geometry` says
where each original pixel lands in the (S, S) model input, so a box becomes a boolean mask
there. Augmentation warps that mask with the image (training.augment), and the localisation
head is trained against the share of each cell of the last convolutional map that the mask
covers (`cell_targets`).
"""

from __future__ import annotations

import hashlib
from multiprocessing import Pool
from pathlib import Path

import cv2
import numpy as np

from utils.core.preprocess import decode_for_model, preprocess_with_geometry

# A cell is a positive target when a box covers at least this share of it.
MIN_CELL_COVERAGE = 0.05


def box_file(data_dir: Path, row: dict) -> Path:
    return data_dir / "fracatlas" / "boxes" / (Path(row["path"]).stem + ".txt")


def read_boxes(path: Path) -> np.ndarray:
    """YOLO lines 'class cx cy w h' (normalised) -> (K, 4) array of cx, cy, w, h."""
    values = [list(map(float, line.split()[1:5])) for line in path.read_text().splitlines() if line.strip()]
    return np.array(values, dtype=np.float64).reshape(-1, 4)


def box_mask(boxes: np.ndarray, shape: tuple[int, int], geometry, size: int) -> np.ndarray:
    """Boolean (size, size) mask of the boxes mapped into the model input."""
    height, width = shape
    mask = np.zeros((size, size), dtype=bool)
    for cx, cy, w, h in boxes:
        x0, y0 = geometry.to_model(np.array([(cx - w / 2) * width]), np.array([(cy - h / 2) * height]))
        x1, y1 = geometry.to_model(np.array([(cx + w / 2) * width]), np.array([(cy + h / 2) * height]))
        c0, r0 = int(np.floor(x0[0])), int(np.floor(y0[0]))
        c1, r1 = int(np.ceil(x1[0])), int(np.ceil(y1[0]))
        mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


def cell_coverage(mask: np.ndarray, grid: int) -> np.ndarray:
    """(S, S) bool mask -> (grid, grid) share of each cell that the mask covers."""
    return cv2.resize(mask.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)


def cell_targets(mask: np.ndarray, grid: int, min_coverage: float = MIN_CELL_COVERAGE) -> np.ndarray:
    """(grid, grid) float32 0/1 localisation targets: cells the boxes cover enough of."""
    return (cell_coverage(mask, grid) >= min_coverage).astype(np.float32)


def _mask_of(job: tuple[str, str, int]) -> np.ndarray:
    image_path, boxes_path, size = job
    decoded = decode_for_model(Path(image_path).read_bytes())
    _, geometry = preprocess_with_geometry(decoded.pixels, size)
    return box_mask(read_boxes(Path(boxes_path)), decoded.pixels.shape, geometry, size)


def box_masks(rows: list[dict], data_dir: Path, cache_dir: Path, size: int, workers: int = 2) -> dict[int, np.ndarray]:
    """{row index: (size, size) bool mask} for the FracAtlas rows that have boxes; cached."""
    picked = [
        i
        for i, r in enumerate(rows)
        if r["source"] == "fracatlas" and box_file(data_dir, r).exists() and box_file(data_dir, r).read_text().strip()
    ]
    key = hashlib.sha256(("boxes", size, *[rows[i]["sha256"] for i in picked]).__repr__().encode()).hexdigest()[:12]
    path = cache_dir / f"box_masks_{size}_{key}.npz"
    if path.exists():
        packed = np.load(path)["masks"]
    else:
        jobs = [(str(data_dir / rows[i]["path"]), str(box_file(data_dir, rows[i])), size) for i in picked]
        with Pool(workers) as pool:
            masks = pool.map(_mask_of, jobs, chunksize=8)
        packed = np.packbits(np.stack(masks) if masks else np.zeros((0, size, size), bool), axis=-1)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, masks=packed)
    return {i: np.unpackbits(m, axis=-1, count=size).astype(bool) for i, m in zip(picked, packed)}
