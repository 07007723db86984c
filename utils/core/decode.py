"""Decode uploaded bytes (JPEG, PNG, other Pillow formats, DICOM) into a grayscale float image.

Every decoder returns a `DecodedImage`: a 2-D float32 array in [0, 1] where bright means
dense (bone), plus human-readable warnings. Anything that cannot be read raises `InputError`
with a one-line message that says what is wrong and what to do.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from typing import Any

import numpy as np
import pyarrow
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from utils.core.dicom import decode_dicom
from utils.core.pixels import (
    MAX_PIXELS,
    MIN_SIDE,
    DecodedImage,
    InputError,
    check_dimensions,
    colour_fraction,
    replace_non_finite,
    scale_to_unit,
)

DICOM_MAGIC_OFFSET = 128
# Pillow warns of a "decompression bomb" above 89 megapixels; check_dimensions refuses anything
# above MAX_PIXELS (60) with a sentence of its own, so the raw warning would only be noise in
# the server log and on the CLI's stderr.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# A film with missing data gets no confident verdict: the part that is missing may hold the fracture.
INCOMPLETE_MESSAGE = (
    "The {what} file is truncated: its image data stops early, so part of the film is missing "
    "(cropped off). No confident verdict is given; send the complete file."
)
INCOMPLETE_MARK = "its image data stops early"


def is_incomplete_warning(text: str) -> bool:
    """True for the warning INCOMPLETE_MESSAGE writes (records keep warnings, not the flag)."""
    return INCOMPLETE_MARK in str(text)


# Pillow fills the rows a truncated JPEG lacks with this grey level.
TRUNCATED_FILL_VALUE = 128

# LOAD_TRUNCATED_IMAGES is a module-wide Pillow switch; the lock keeps it on only while one
# decode holds it, so no other decode is silently made permissive.
_pillow_lock = threading.Lock()


# Pillow modes with no colour to measure.
GREY_MODES = ("1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N")


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their name."""
    return len(data) >= DICOM_MAGIC_OFFSET + 4 and data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM"


def decode_image_bytes(data: bytes, working_side: int | None = None) -> DecodedImage:
    """Decode any supported upload (detected by content, not by file name).

    working_side: the longer side the caller shrinks the image to anyway. A decoder that can
    decode at a reduced size (JPEG's DCT scaling) then returns an image whose longer side is
    still at least working_side, which skips most of the decoding work; None (what serving
    uses: see utils.core.preprocess.decode_for_model) decodes at full size.
    """
    if not data:
        raise InputError("The file is empty. Give a JPEG, PNG or DICOM radiograph.")
    if is_dicom(data):
        return decode_dicom(data)
    return decode_raster(data, working_side)


def draft_size(width: int, height: int, working_side: int) -> tuple[int, int]:
    """The size to ask Image.draft for: the image scaled so that its longer side is
    working_side, rounded up. draft picks the smallest DCT scale (1/2, 1/4, 1/8) whose result
    is at least this size, so the longer side never drops below working_side."""
    scale = working_side / max(width, height)
    return math.ceil(width * scale), math.ceil(height * scale)


def reduce_while_decoding(image: Image.Image, working_side: int | None) -> None:
    """Let a JPEG decode at a reduced DCT scale (libjpeg's scaled IDCT), keeping its mode;
    other formats decode at full size."""
    if working_side is None or image.format != "JPEG" or max(image.size) < 2 * working_side:
        return
    image.draft(image.mode, draft_size(*image.size, working_side))


def decode_raster(data: bytes, working_side: int | None = None) -> DecodedImage:
    """Decode a Pillow-readable image: EXIF orientation, bit depth, alpha, palette, CMYK."""
    warnings: list[str] = []
    with _pillow_lock:
        try:
            image: Image.Image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise InputError(
                f"The image has more than {MAX_PIXELS // 1_000_000} megapixels, more than "
                "this app accepts; downscale it first."
            ) from None
        except UnidentifiedImageError:
            raise InputError(
                "This file is not an image this app can read. Give a JPEG, PNG or DICOM radiograph."
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"The image header is damaged ({exc}). Re-export the image.") from None
        check_dimensions(*image.size)
        fmt = image.format or "image"
        frames = int(getattr(image, "n_frames", 1))
        if frames > 1:
            warnings.append(f"The {fmt} has {frames} frames; only the first was used.")
        reduce_while_decoding(image, working_side)
        truncated = False
        try:
            image.load()
        except OSError as exc:
            if "truncated" not in str(exc):
                raise InputError(f"The {fmt} file is damaged and cannot be decoded ({exc}).") from None
            truncated = True
            image = _load_truncated(data, working_side)
        except (ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise InputError(f"The {fmt} file cannot be decoded ({exc}).") from None
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy when there is nothing to turn
    except Exception:  # a broken EXIF block must not cost the image
        warnings.append("The EXIF orientation tag could not be read; the image is shown as stored.")
    rgb_share = (
        0.0
        if image.mode in GREY_MODES
        else colour_fraction(np.asarray(image if image.mode == "RGB" else image.convert("RGB")))
    )
    pixels = pil_to_gray(image, warnings)
    incomplete = None
    if truncated:
        pixels = crop_truncated_rows(pixels)
        incomplete = INCOMPLETE_MESSAGE.format(what=fmt)
        warnings.append(incomplete)
        if pixels.shape[0] < MIN_SIDE:
            raise InputError("The file is truncated so early that almost no image is left.")
    return DecodedImage(
        pixels=pixels, source_format=fmt, warnings=warnings, colour_fraction=rgb_share, incomplete=incomplete
    )


def _load_truncated(data: bytes, working_side: int | None) -> Image.Image:
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image = Image.open(io.BytesIO(data))
        reduce_while_decoding(image, working_side)
        image.load()
        return image
    except Exception as exc:
        raise InputError(f"The file is truncated and cannot be decoded ({exc}).") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


# Single-channel modes whose pixel buffer numpy can read as is, with its byte order.
ARROW_DTYPES: dict[str, np.dtype[Any]] = {
    "L": np.dtype("u1"),
    "I;16": np.dtype("<u2"),
    "I;16L": np.dtype("<u2"),
    "I;16B": np.dtype(">u2"),
}


def pixel_array(image: Image.Image) -> np.ndarray:
    """np.asarray(image), read-only, without Pillow's tobytes() copy where possible.

    np.asarray goes through tobytes(): 13 ms for a 2,000 x 2,500 16-bit image. Pillow exports
    its buffer through the Arrow C interface, which pyarrow (installed with Streamlit) hands to
    numpy without copying; any other case takes the plain path.
    """
    dtype = ARROW_DTYPES.get(image.mode)
    if dtype is not None:
        try:
            flat: np.ndarray = pyarrow.array(image).to_numpy(zero_copy_only=True)
            if flat.size == image.width * image.height and flat.dtype.itemsize == dtype.itemsize:
                return flat.view(dtype).reshape(image.height, image.width)
        except Exception:  # a Pillow that cannot export this image: copy
            pass
    return np.asarray(image)


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


def crop_truncated_rows(pixels: np.ndarray, min_run: int = 8) -> np.ndarray:
    """Drop the bottom rows that a truncated JPEG filled with flat grey.

    Truncation stops mid-row of 8/16-px blocks, so the lowest decoded band is grey from some
    column to the right edge; cut at the first row from which every row ends in such a run.
    """
    fill = np.isclose(pixels, TRUNCATED_FILL_VALUE / 255.0, atol=0.5 / 255.0)
    # Length of the run of fill pixels at the right end of each row.
    not_fill_from_right = ~fill[:, ::-1]
    run = np.where(not_fill_from_right.any(axis=1), not_fill_from_right.argmax(axis=1), pixels.shape[1])
    cut = pixels.shape[0]
    while cut > 0 and run[cut - 1] >= min_run:
        cut -= 1
    return pixels[:cut]
