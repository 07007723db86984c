"""The decoded image and the pixel checks that both decoders (raster and DICOM) share.

Kept apart from `decode` and `dicom` so that each decoder imports this module and neither
imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Refuse huge images from their header, before any pixel is decoded (decompression bombs).
MAX_PIXELS = 60_000_000
MIN_SIDE = 16
MAX_ASPECT_RATIO = 20.0


class InputError(ValueError):
    """An input the app cannot use; str(error) is a one-line message for the user."""


@dataclass
class DecodedImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1]
    source_format: str
    warnings: list[str] = field(default_factory=list)
    colour_fraction: float = 0.0  # share of clearly coloured pixels before the grey conversion
    incomplete: str | None = None  # why part of the image is missing (the decoder filled it in)
    # From a DICOM header only (JPEG and PNG carry neither): compared with the intended use,
    # never shown or logged.
    age_years: float | None = None
    body_part: str | None = None


# A pixel counts as coloured when it strays from the image's single tint (see colour_fraction)
# by more than this share of its brightness, and is not near black.
TINT_DEVIATION_THRESHOLD = 0.12
COLOUR_MIN_VALUE = 0.15
COLOUR_SAMPLE_SIDE = 256


def colour_fraction(rgb: np.ndarray) -> float:
    """Share of pixels of an (H, W, 3) image (any numeric range) that are clearly coloured.

    A radiograph is grey, or grey under one tint (web figures often carry a blue or green
    cast): every pixel is then brightness x the same RGB direction. That direction is the
    first singular vector of the pixels; a pixel is coloured when its distance from that
    line exceeds TINT_DEVIATION_THRESHOLD of its own length. Annotation arrows stay a small
    share; photos and colour graphics do not. Measured on at most COLOUR_SAMPLE_SIDE^2
    pixels (a screening figure, not a measurement).
    """
    step = max(1, int(np.ceil(max(rgb.shape[:2]) / COLOUR_SAMPLE_SIDE)))
    pixels = np.asarray(rgb[::step, ::step, :3], dtype=np.float64).reshape(-1, 3)
    peak = float(pixels.max(initial=0.0))
    if peak <= 0:
        return 0.0
    pixels /= peak
    tint = np.linalg.svd(pixels, full_matrices=False)[2][0]
    length = np.linalg.norm(pixels, axis=1)
    off_tint = np.linalg.norm(pixels - np.outer(pixels @ tint, tint), axis=1)
    coloured = (off_tint > TINT_DEVIATION_THRESHOLD * np.maximum(length, 1e-9)) & (
        pixels.max(axis=1) > COLOUR_MIN_VALUE
    )
    return float(coloured.mean())


def check_dimensions(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(
            f"The image is {width} x {height} pixels, more than the "
            f"{MAX_PIXELS // 1_000_000} megapixels this app accepts; downscale it first."
        )
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"The image is only {width} x {height} pixels; upload a radiograph at least {MIN_SIDE} pixels on each side."
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InputError(
            f"The image is {width} x {height} pixels, too elongated to be a "
            "radiograph of one bone; crop it to the region of interest."
        )


def replace_non_finite(array: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Float pixel data (32-bit TIFF, float DICOM) can hold NaN or infinity, which would turn
    the whole preprocessed image into NaN; such pixels take the lowest finite value."""
    if array.dtype.kind != "f":
        return array
    finite = np.isfinite(array)
    if finite.all():
        return array
    if not finite.any():
        raise InputError("The image has no usable pixel values (all are NaN or infinite). Re-export it.")
    warnings.append(
        f"{int((~finite).sum()):,} pixels had no value (NaN or infinite); "
        "they were set to the darkest value in the image."
    )
    return np.where(finite, array, array[finite].min())


def scale_to_unit(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """(values - low) / (high - low) clipped to [0, 1] as float32, in one new buffer (a
    2,500 x 2,000 image is 20 MB per float32 and 40 MB per float64 temporary); the caller's
    array is never changed. float32 holds any 16-bit value exactly."""
    out = np.asarray(values, dtype=np.float32)
    out = out.copy() if out is values or not out.flags.writeable else out
    if low:
        np.subtract(out, np.float32(low), out=out)
    np.divide(out, np.float32(high - low), out=out)
    return np.clip(out, 0.0, 1.0, out=out)
