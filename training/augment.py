"""Live augmentation for films from other hospitals and scanners, drawn fresh at every step.

One view of a cached (S, S) uint8 model input and its (S, S) fracture-box mask:
- geometry: rotation, flips, scale jitter, crops that show only part of the film (close-ups)
  and zoom-outs; the box mask is warped with the same matrix, so the boxes stay on the bone;
- resolution: downscale (to 224 px or less) and back up;
- tone: gamma, contrast, brightness, blur or sharpening, noise, JPEG re-compression;
- burned-in annotations: text, L/R side markers and rulers, as on clinical exports;
- framings seen on films from other hospitals: an aspect-ratio stretch (exports that squash a
  film to a square), a tight crop upsampled from 224 px (joint crops), collimation borders;
- random shallow-network intensity remapping, mixed in through a smooth location-dependent
  mask (GIN + IPA, Ouyang et al., IEEE TMI 2023): other exposures and detector curves.

Every class gets the same distribution of views, so no augmentation marks a class. All draws
come from the rng passed in: the same seed gives the same view.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

LIVE_AUGMENTATION: dict[str, Any] = {
    "rotation_deg": 30.0,
    "hflip": 0.5,
    "vflip": 0.2,
    "zoom_log_range": (np.log(0.7), np.log(2.5)),  # < 1 zooms out, > 1 crops a part of the film
    "shift_frac": 0.15,
    "downscale": {"p": 0.5, "min_side": 112, "max_side": 224},
    "gamma": (0.6, 1.6),
    "contrast": (0.7, 1.3),
    "brightness": 0.12,
    "blur": {"p": 0.25, "sigma": (0.5, 1.6)},
    "sharpen": {"p": 0.2, "amount": (0.3, 1.0)},
    "noise": {"p": 0.4, "sigma": (2.0, 10.0)},
    "jpeg": {"p": 0.5, "quality": (30, 90)},
    "annotations": {"p": 0.5, "max_items": 3},
    "stretch": {"p": 0.4, "log_range": (np.log(0.7), np.log(1.43))},
    "tight_crop": {"p": 0.2, "zoom": (1.6, 3.0), "side": 224},
    "collimation": {"p": 0.3, "width_frac": (0.03, 0.2)},
    "intensity_network": {"p": 0.3, "hidden": 4},
}


# The ablation of the domain-generalisation transforms: the same views without the framings the
# unseen-source checks revealed (aspect stretch, tight crop from 224 px, collimation) and without
# the random intensity network. The tight-crop geometry stays (probability 0), because the
# box-free close-ups are drawn with it.
CLASSIC_AUGMENTATION: dict[str, Any] = {
    **LIVE_AUGMENTATION,
    "stretch": None,
    "tight_crop": {**LIVE_AUGMENTATION["tight_crop"], "p": 0.0},
    "collimation": None,
    "intensity_network": None,
}
AUGMENTATIONS = {"live": LIVE_AUGMENTATION, "classic": CLASSIC_AUGMENTATION}


def affine_matrix(size: int, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """A 2x3 matrix: rotation and zoom about a point near the centre, with flips."""
    angle = rng.uniform(-params["rotation_deg"], params["rotation_deg"])
    zoom = float(np.exp(rng.uniform(*params["zoom_log_range"])))
    # A close-up may centre anywhere on the film; a zoom-out stays near the middle.
    reach = params["shift_frac"] + max(0.0, 1.0 - 1.0 / zoom) * 0.5
    centre = size / 2 + rng.uniform(-1, 1, size=2) * reach * size
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, zoom)
    matrix[:, 2] += size / 2 - centre  # the chosen point lands in the middle of the view
    matrix = (stretch_matrix(size, rng, params) @ np.vstack([matrix, [0, 0, 1]]))[:2]
    flip = np.eye(3)
    if rng.random() < params["hflip"]:
        flip = np.array([[-1, 0, size - 1], [0, 1, 0], [0, 0, 1]], dtype=np.float64) @ flip
    if rng.random() < params["vflip"]:
        flip = np.array([[1, 0, 0], [0, -1, size - 1], [0, 0, 1]], dtype=np.float64) @ flip
    return (flip @ np.vstack([matrix, [0, 0, 1]]))[:2]


def stretch_matrix(size: int, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """3x3: one axis scaled about the centre (identity when not drawn), as when an export
    squashes a film to a square."""
    spec = params.get("stretch")
    if not spec or rng.random() >= spec["p"]:
        return np.eye(3)
    factor = float(np.exp(rng.uniform(*spec["log_range"])))
    sx, sy = (factor, 1.0) if rng.random() < 0.5 else (1.0, factor)
    c = size / 2
    return np.array([[sx, 0, c - sx * c], [0, sy, c - sy * c], [0, 0, 1]], dtype=np.float64)


def tight_crop_matrix(size: int, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """2x3: a close-up of a random part of the film (the view is later shrunk to 224 px and back)."""
    spec = params["tight_crop"]
    zoom = rng.uniform(*spec["zoom"])
    reach = (1.0 - 1.0 / zoom) * 0.5
    centre = size / 2 + rng.uniform(-1, 1, size=2) * reach * size
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), rng.uniform(-10, 10), zoom)
    matrix[:, 2] += size / 2 - centre
    return matrix


def warp(image: np.ndarray, matrix: np.ndarray, nearest: bool = False) -> np.ndarray:
    size = image.shape[0]
    return cv2.warpAffine(
        image,
        matrix,
        (size, size),
        flags=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def degrade_resolution(view: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    spec = params["downscale"]
    if rng.random() >= spec["p"]:
        return view
    size = view.shape[0]
    side = int(rng.integers(spec["min_side"], spec["max_side"] + 1))
    small = cv2.resize(view, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def shrink_and_restore(view: np.ndarray, side: int) -> np.ndarray:
    size = view.shape[0]
    small = cv2.resize(view, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def add_collimation(view: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """Flat dark or bright bands along one to four edges, as collimator shutters leave them."""
    spec = params.get("collimation")
    if not spec or rng.random() >= spec["p"]:
        return view
    view = view.copy()
    size = view.shape[0]
    value = int(rng.integers(0, 40)) if rng.random() < 0.6 else int(rng.integers(200, 256))
    for side in rng.permutation(4)[: int(rng.integers(1, 5))]:
        width = int(size * rng.uniform(*spec["width_frac"]))
        if side == 0:
            view[:width] = value
        elif side == 1:
            view[size - width :] = value
        elif side == 2:
            view[:, :width] = value
        else:
            view[:, size - width :] = value
    return view


def remap_intensity(view: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """A random two-layer convolutional network (3x3 kernels, leaky ReLU) remaps the grey levels;
    its output, matched to the view's mean and spread, is blended in through a smooth random
    mask, so the remapping differs from place to place (GIN with IPA-style mixing)."""
    spec = params.get("intensity_network")
    if not spec or rng.random() >= spec["p"]:
        return view
    x = view.astype(np.float32) / 255.0
    out = np.zeros_like(x)
    identity = np.zeros((3, 3), np.float32)
    identity[1, 1] = 1.0
    for _ in range(spec["hidden"]):  # random kernels around identity: new grey curves and texture
        first = identity * rng.uniform(-1.5, 1.5) + rng.normal(0, 0.3, (3, 3)).astype(np.float32)
        hidden = cv2.filter2D(x, -1, first) + rng.uniform(-0.5, 0.5)
        hidden = np.where(hidden > 0, hidden, 0.2 * hidden)
        second = identity * rng.uniform(-1.0, 1.0) + rng.normal(0, 0.2, (3, 3)).astype(np.float32)
        out += cv2.filter2D(hidden, -1, second)
    out = (out - out.mean()) / (out.std() + 1e-6) * x.std() + x.mean()
    coarse = rng.uniform(0, 1, (4, 4)).astype(np.float32)
    mask = cv2.resize(coarse, x.shape[::-1], interpolation=cv2.INTER_CUBIC).clip(0, 1)
    blended = x * (1 - mask) + out * mask
    return np.clip(np.round(blended * 255.0), 0, 255).astype(np.uint8)


def adjust_tone(view: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """Gamma, contrast, brightness, blur or sharpening and noise on a float image in 0..255."""
    x = np.clip(view.astype(np.float32) / 255.0, 0, 1) ** rng.uniform(*params["gamma"])
    mean = float(x.mean())
    x = (x - mean) * rng.uniform(*params["contrast"]) + mean + rng.uniform(-1, 1) * params["brightness"]
    if rng.random() < params["blur"]["p"]:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(*params["blur"]["sigma"]))
    elif rng.random() < params["sharpen"]["p"]:
        soft = cv2.GaussianBlur(x, (0, 0), 1.5)
        x = x + rng.uniform(*params["sharpen"]["amount"]) * (x - soft)
    x = x * 255.0
    if rng.random() < params["noise"]["p"]:
        x = x + rng.normal(0.0, rng.uniform(*params["noise"]["sigma"]), size=x.shape).astype(np.float32)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def burn_in_annotations(view: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    """Side markers (L/R), text lines and rulers, bright or dark, where clinical exports put them."""
    spec = params["annotations"]
    if rng.random() >= spec["p"]:
        return view
    view = view.copy()
    size = view.shape[0]
    for _ in range(int(rng.integers(1, spec["max_items"] + 1))):
        colour = int(rng.choice([255, 230, 20]))
        x, y = int(rng.integers(0, size * 0.8)), int(rng.integers(size * 0.1, size))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.putText(
                view,
                str(rng.choice(["L", "R", "LT", "RT", "PA", "AP"])),
                (x, y),
                cv2.FONT_HERSHEY_SIMPLEX,
                rng.uniform(0.6, 1.6),
                colour,
                int(rng.integers(1, 4)),
            )
        elif kind == 1:
            text = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :/."), size=int(rng.integers(4, 14))))
            cv2.putText(view, text, (x, y), cv2.FONT_HERSHEY_PLAIN, rng.uniform(0.7, 1.4), colour, 1)
        else:
            length, vertical = int(rng.integers(size // 6, size // 2)), rng.random() < 0.5
            x1, y1 = (x, min(size - 1, y + length)) if vertical else (min(size - 1, x + length), y)
            cv2.line(view, (x, y), (x1, y1), colour, 1)
            for t in np.linspace(0, 1, int(rng.integers(5, 12))):
                tx, ty = int(x + (x1 - x) * t), int(y + (y1 - y) * t)
                tick_end = (tx + 5, ty) if vertical else (tx, ty - 5)  # ticks across the ruler
                cv2.line(view, (tx, ty), tick_end, colour, 1)
    return view


def recompress_jpeg(view: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION) -> np.ndarray:
    spec = params["jpeg"]
    if rng.random() >= spec["p"]:
        return view
    ok, encoded = cv2.imencode(".jpg", view, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*spec["quality"]))])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE) if ok else None
    return view if decoded is None else decoded


def random_view(
    image: np.ndarray,
    mask: np.ndarray | None,
    rng: np.random.Generator,
    params: dict = LIVE_AUGMENTATION,
    tries: int = 8,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(S, S) uint8 image and optional (S, S) bool box mask -> one augmented view of both.

    With a mask, the geometry is redrawn (up to `tries` times) until at least half of the
    boxes stays in view: a close-up that crops the fracture out would teach "fractured" on a
    film that shows none.
    """
    tight = params.get("tight_crop") is not None and rng.random() < params["tight_crop"]["p"]
    for _ in range(tries):
        matrix = (tight_crop_matrix if tight else affine_matrix)(image.shape[0], rng, params)
        view_mask = None if mask is None else warp(mask.astype(np.uint8), matrix, nearest=True).astype(bool)
        if mask is None or view_mask is None or view_mask.sum() >= 0.5 * mask.sum():
            break
    view = warp(image, matrix)
    view = shrink_and_restore(view, params["tight_crop"]["side"]) if tight else degrade_resolution(view, rng, params)
    view = add_collimation(view, rng, params)
    view = remap_intensity(view, rng, params)
    view = adjust_tone(view, rng, params)
    view = burn_in_annotations(view, rng, params)
    view = recompress_jpeg(view, rng, params)
    return view, view_mask


def box_free_matrix(
    mask: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION, tries: int = 20, margin: int = 8
) -> np.ndarray | None:
    """A 2x3 close-up whose view shows no part of any box, the boxes grown by `margin` pixels
    first (so the edge of a fracture is not in view either); None when none was found."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * margin + 1, 2 * margin + 1), np.uint8))
    crop = {**params, "tight_crop": {**params["tight_crop"], "zoom": (1.8, 3.5)}}
    for _ in range(tries):
        matrix = tight_crop_matrix(mask.shape[0], rng, crop)
        if not warp(grown, matrix, nearest=True).any():
            return matrix
    return None


def box_free_view(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, params: dict = LIVE_AUGMENTATION
) -> np.ndarray | None:
    """A box-free close-up of a fractured film (box_free_matrix), augmented like any view: a
    "no fracture visible" example from the very films that carry fractures. None when the
    boxes leave no such close-up."""
    matrix = box_free_matrix(mask, rng, params)
    if matrix is None:
        return None
    view = warp(image, matrix)
    if rng.random() < 0.5:
        spec = params["downscale"]
        view = shrink_and_restore(view, int(rng.integers(spec["min_side"], spec["max_side"] + 1)))
    for step in (add_collimation, remap_intensity, adjust_tone, burn_in_annotations, recompress_jpeg):
        view = step(view, rng, params)
    return view
