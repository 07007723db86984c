"""Heatmaps as pure functions: class activation maps from the forward pass, and the drawing
helpers shared by the app, the CLI and the reports. A two-stage model's own fracture map comes
straight from its forward pass (utils.core.engines); Grad-CAM by gradients, the reference, is
training.gradcam."""

from __future__ import annotations

import cv2
import numpy as np


def class_activation_maps(activations: np.ndarray, dense_kernel: np.ndarray) -> np.ndarray:
    """Grad-CAM of every class at once for a GlobalAveragePooling -> Dense head, from the
    forward pass alone: (h, w, K) activations, (K, C) kernel -> (C, h, w) maps in [0, 1].

    For logits = W^T mean_ij(A) + b, the gradient of class c's logit with respect to A[i, j, k]
    is W[k, c] / (h w) everywhere, so Grad-CAM's channel weights are W[:, c] / (h w) and the map
    is ReLU(A . W[:, c]) up to a positive factor that the max-normalisation removes. Equal to
    `make_gradcam_heatmap` for this model (tests/test_heatmap.py), without a backward pass.
    """
    return normalise_class_maps(np.asarray(activations, np.float32) @ np.asarray(dense_kernel, np.float32))


def normalise_class_maps(class_maps: np.ndarray) -> np.ndarray:
    """(h, w, C) class-weighted activations -> (C, h, w) maps: ReLU, then each map's max is 1.
    utils.core.engines's serving model computes the class-weighted activations in its forward pass."""
    cams = np.maximum(np.moveaxis(np.asarray(class_maps, np.float32), -1, 0), 0.0)
    peaks = cams.reshape(len(cams), -1).max(axis=1)
    return (cams / np.where(peaks > 0, peaks, 1.0)[:, None, None]).astype(np.float32)


def upsample_heatmap(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a heatmap to (height, width) of the image it explains."""
    return cv2.resize(heatmap, (size[1], size[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def colorize_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """(h, w) in [0, 1] -> (h, w, 3) uint8 RGB with the 'jet' colour map."""
    bgr = cv2.applyColorMap(np.round(heatmap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def overlay_heatmap(gray_uint8: np.ndarray, heatmap: np.ndarray, opacity: float = 0.4) -> np.ndarray:
    """Blend a heatmap over the grayscale model input: (S, S) uint8 -> (S, S, 3) uint8 RGB."""
    base = np.repeat(gray_uint8[..., None], 3, axis=-1).astype(np.float32)
    colour = colorize_heatmap(upsample_heatmap(heatmap, gray_uint8.shape)).astype(np.float32)
    return np.clip((1 - opacity) * base + opacity * colour, 0, 255).astype(np.uint8)


HEATMAP_CAPTIONS = {
    "fracture map": "fracture map (the model's fracture probability in each region)",
    "Grad-CAM": "Grad-CAM heatmap (where the network looked)",
}


def heatmap_caption(kind: str) -> str:
    return HEATMAP_CAPTIONS.get(kind, kind)
