"""Decode uploaded bytes (JPEG, PNG, other Pillow formats, DICOM) into a grayscale float image.

Every decoder returns a `DecodedImage`: a 2-D float32 array in [0, 1] where bright means
dense (bone), plus human-readable warnings. Anything that cannot be read raises `InputError`
with a one-line message that says what is wrong and what to do.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Refuse huge images from their header, before any pixel is decoded (decompression bombs).
MAX_PIXELS = 60_000_000
MIN_SIDE = 16
MAX_ASPECT_RATIO = 20.0
DICOM_MAGIC_OFFSET = 128
# A film with missing data gets no confident verdict: the part that is missing may hold the fracture.
INCOMPLETE_MESSAGE = ("The {what} file is truncated: its image data stops early, so part of the film is missing "
                      "(cropped off). No confident verdict is given; send the complete file.")
INCOMPLETE_MARK = "its image data stops early"


def is_incomplete_warning(text: str) -> bool:
    """True for the warning INCOMPLETE_MESSAGE writes (records keep warnings, not the flag)."""
    return INCOMPLETE_MARK in str(text)


# Pillow fills the rows a truncated JPEG lacks with this grey level.
TRUNCATED_FILL_VALUE = 128

# LOAD_TRUNCATED_IMAGES is a module-wide Pillow switch; the lock keeps it on only while one
# decode holds it, so no other decode is silently made permissive.
_pillow_lock = threading.Lock()


class InputError(ValueError):
    """An input the app cannot use; str(error) is a one-line message for the user."""


@dataclass
class DecodedImage:
    pixels: np.ndarray  # 2-D float32 in [0, 1]
    source_format: str
    warnings: list[str] = field(default_factory=list)
    colour_fraction: float = 0.0  # share of clearly coloured pixels before the grey conversion
    incomplete: str | None = None  # why part of the image is missing (the decoder filled it in)


# A pixel counts as coloured when it strays from the image's single tint (see colour_fraction)
# by more than this share of its brightness, and is not near black.
TINT_DEVIATION_THRESHOLD = 0.12
COLOUR_MIN_VALUE = 0.15
COLOUR_SAMPLE_SIDE = 256
# Pillow modes with no colour to measure.
GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


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
    coloured = (off_tint > TINT_DEVIATION_THRESHOLD * np.maximum(length, 1e-9)) & \
        (pixels.max(axis=1) > COLOUR_MIN_VALUE)
    return float(coloured.mean())


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their name."""
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and \
        data[DICOM_MAGIC_OFFSET:DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode_image_bytes(data: bytes) -> DecodedImage:
    """Decode any supported upload (detected by content, not by file name)."""
    if not data:
        raise InputError("The file is empty. Give a JPEG, PNG or DICOM radiograph.")
    if is_dicom(data):
        from utils.dicom import decode_dicom
        return decode_dicom(data)
    return decode_raster(data)


def check_dimensions(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise InputError(f"The image is {width} x {height} pixels, more than the "
                         f"{MAX_PIXELS // 1_000_000} megapixels this app accepts; downscale it first.")
    if min(width, height) < MIN_SIDE:
        raise InputError(f"The image is only {width} x {height} pixels; "
                         f"upload a radiograph at least {MIN_SIDE} pixels on each side.")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise InputError(f"The image is {width} x {height} pixels, too elongated to be a "
                         "radiograph of one bone; crop it to the region of interest.")


def decode_raster(data: bytes) -> DecodedImage:
    """Decode a Pillow-readable image: EXIF orientation, bit depth, alpha, palette, CMYK."""
    warnings: list[str] = []
    with _pillow_lock:
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise InputError(f"The image has more than {MAX_PIXELS // 1_000_000} megapixels, more than "
                             "this app accepts; downscale it first.") from None
        except UnidentifiedImageError:
            raise InputError("This file is not an image this app can read. "
                             "Give a JPEG, PNG or DICOM radiograph.") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"The image header is damaged ({exc}). Re-export the image.") from None
        check_dimensions(*image.size)
        fmt = image.format or "image"
        if getattr(image, "n_frames", 1) > 1:
            warnings.append(f"The {fmt} has {image.n_frames} frames; only the first was used.")
        truncated = False
        try:
            image.load()
        except OSError as exc:
            if "truncated" not in str(exc):
                raise InputError(f"The {fmt} file is damaged and cannot be decoded ({exc}).") from None
            truncated = True
            image = _load_truncated(data)
        except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"The {fmt} file cannot be decoded ({exc}).") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
    except Exception:  # a broken EXIF block must not cost the image
        warnings.append("The EXIF orientation tag could not be read; the image is shown as stored.")
    rgb_share = 0.0 if image.mode in GREY_MODES else colour_fraction(
        np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
    pixels = pil_to_gray(image, warnings)
    incomplete = None
    if truncated:
        pixels = crop_truncated_rows(pixels)
        incomplete = INCOMPLETE_MESSAGE.format(what=fmt)
        warnings.append(incomplete)
        if pixels.shape[0] < MIN_SIDE:
            raise InputError("The file is truncated so early that almost no image is left.")
    return DecodedImage(pixels=pixels, source_format=fmt, warnings=warnings, colour_fraction=rgb_share,
                        incomplete=incomplete)


def _load_truncated(data: bytes) -> Image.Image:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception as exc:
        raise InputError(f"The file is truncated and cannot be decoded ({exc}).") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


# Single-channel modes whose pixel buffer numpy can read as is, with its byte order.
ARROW_DTYPES = {"L": np.dtype("u1"), "I;16": np.dtype("<u2"), "I;16L": np.dtype("<u2"),
                "I;16B": np.dtype(">u2")}


def pixel_array(image: Image.Image) -> np.ndarray:
    """np.asarray(image), read-only, without Pillow's tobytes() copy where possible.

    np.asarray goes through tobytes(): 13 ms for a 2,000 x 2,500 16-bit image. Pillow exports
    its buffer through the Arrow C interface, which pyarrow (installed with Streamlit) hands to
    numpy without copying; any other case takes the plain path.
    """
    dtype = ARROW_DTYPES.get(image.mode)
    if dtype is not None:
        try:
            import pyarrow

            flat = pyarrow.array(image).to_numpy(zero_copy_only=True)
            if flat.size == image.width * image.height and flat.itemsize == dtype.itemsize:
                return flat.view(dtype).reshape(image.height, image.width)
        except Exception:  # no pyarrow, or a Pillow that cannot export this image: copy
            pass
    return np.asarray(image)


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
    warnings.append(f"{int((~finite).sum()):,} pixels had no value (NaN or infinite); "
                    "they were set to the darkest value in the image.")
    return np.where(finite, array, array[finite].min())


def pil_to_gray(image: Image.Image, warnings: list[str]) -> np.ndarray:
    """Convert any Pillow mode to 2-D float32 in [0, 1], keeping high bit depths."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return scale_to_unit(pixel_array(image), 0.0, 65535.0)
    if mode in ("I", "F"):
        array = replace_non_finite(np.asarray(image), warnings)
        return scale_to_unit(array, 0.0, 65535.0 if array.max(initial=0) > 255 else 255.0)
    if mode in ("1", "L"):
        return scale_to_unit(pixel_array(image.convert("L")), 0.0, 255.0)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("LA", "RGBA", "PA"):
        # Flatten transparency onto black, the background of a radiograph.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        warnings.append("Transparency was flattened onto black.")
    elif mode == "CMYK":
        image = image.convert("RGB")
    elif mode != "RGB":
        image = image.convert("RGB")
    return scale_to_unit(pixel_array(image.convert("L")), 0.0, 255.0)


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


def crop_truncated_rows(pixels: np.ndarray, min_run: int = 8) -> np.ndarray:
    """Drop the bottom rows that a truncated JPEG filled with flat grey.

    Truncation stops mid-row of 8/16-px blocks, so the lowest decoded band is grey from some
    column to the right edge; cut at the first row from which every row ends in such a run.
    """
    fill = np.isclose(pixels, TRUNCATED_FILL_VALUE / 255.0, atol=0.5 / 255.0)
    # Length of the run of fill pixels at the right end of each row.
    not_fill_from_right = ~fill[:, ::-1]
    run = np.where(not_fill_from_right.any(axis=1), not_fill_from_right.argmax(axis=1),
                   pixels.shape[1])
    cut = pixels.shape[0]
    while cut > 0 and run[cut - 1] >= min_run:
        cut -= 1
    return pixels[:cut]
