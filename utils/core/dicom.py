"""DICOM decoding with pydicom: modality LUT, then VOI LUT / window, then MONOCHROME1 inversion.

Patient tags are never put into messages or logs. Besides the pixel-module attributes, only
the patient's age (PatientAge, or PatientBirthDate with the study date) and BodyPartExamined
are read, to check the film against the model's intended use (utils.core.intended_use).
Compressed transfer syntaxes decode through pylibjpeg (openjpeg, rle plugins: permissive
licences) or are refused with a message naming the transfer syntax.
"""

from __future__ import annotations

import io
import warnings as pywarnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from utils.core.intended_use import age_in_years, body_part
from utils.core.pixels import (
    DecodedImage,
    InputError,
    check_dimensions,
    colour_fraction,
    replace_non_finite,
    scale_to_unit,
)


def decode_dicom(data: bytes) -> DecodedImage:
    """DICOM Part 10 bytes -> the decoded film."""
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        KeyError,
        OSError,
        TypeError,
        AttributeError,
        NotImplementedError,
        OverflowError,
        IndexError,
    ) as exc:
        raise InputError(f"The DICOM file is damaged and cannot be read ({type(exc).__name__}).") from None
    return decode_dataset(ds)


def decode_dataset(ds: Dataset) -> DecodedImage:
    """A parsed DICOM dataset (a file read, or an instance a PACS sent) -> the decoded film,
    with the age and body part its header gives."""
    decoded = decode_pixels(ds)
    decoded.age_years = age_in_years(ds)
    decoded.body_part = body_part(ds)
    return decoded


def decode_pixels(ds: Dataset) -> DecodedImage:
    """The film of a parsed DICOM dataset: first frame, grey, bone bright, in [0, 1]."""
    warnings: list[str] = []
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError("The DICOM file has no image (no pixel data); upload the image series file.")
    check_dimensions(int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0))
    array = read_pixel_array(ds)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        array = array[0]
        warnings.append(f"The DICOM has {frames} frames; only the first was used.")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples > 1 or array.ndim == 3:
        pixels = rgb_dicom_to_gray(ds, array)
        warnings.append(f"The DICOM is colour ({photometric}); it was converted to grayscale.")
        return DecodedImage(
            pixels=pixels, source_format="DICOM", warnings=warnings, colour_fraction=colour_fraction(array)
        )
    pixels = monochrome_to_unit(ds, array, warnings)
    if photometric == "MONOCHROME1":
        np.subtract(1.0, pixels, out=pixels)  # MONOCHROME1 shows low values bright; flip to bone = bright
    elif photometric != "MONOCHROME2":
        warnings.append(f"Unusual photometric interpretation {photometric}; read as MONOCHROME2.")
    return DecodedImage(pixels=pixels, source_format="DICOM", warnings=warnings)


def read_pixel_array(ds: Dataset) -> np.ndarray:
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            return np.asarray(ds.pixel_array)
    except (NotImplementedError, RuntimeError) as exc:
        if "decod" in str(exc).lower() or "plugin" in str(exc).lower() or "handler" in str(exc).lower():
            raise InputError(
                f"This DICOM is compressed as '{syntax_name}', which this app cannot "
                "decode; export it uncompressed or as JPEG 2000 / RLE."
            ) from None
        raise InputError(f"The DICOM pixel data cannot be decoded ({syntax_name}).") from None
    except (ValueError, AttributeError, KeyError, TypeError, EOFError, OSError, IndexError) as exc:
        raise InputError(f"The DICOM pixel data is damaged or incomplete ({type(exc).__name__}).") from None


def monochrome_to_unit(ds: Dataset, array: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Modality LUT (rescale slope/intercept) first, then VOI LUT or window, then [0, 1]."""
    # Stays integer without a rescale; float pixel data may hold NaN or infinity.
    values = replace_non_finite(np.asarray(apply_modality_lut(array, ds)), warnings)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        try:
            windowed = np.asarray(apply_voi_lut(values, ds, index=0))
            low, high = voi_output_range(ds, values)
            return scale_to_unit(windowed, low, high)
        except Exception:
            warnings.append("The DICOM window (VOI LUT) is invalid; the full value range was used.")
    return stretch_data_range(values, warnings)


def voi_output_range(ds: Dataset, values: np.ndarray) -> tuple[float, float]:
    """The range the VOI transform can output: a LUT's declared bit depth, or for a window
    the transform applied to values far below and above it."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    probe = np.array([float(values.min()) - 1e9, float(values.max()) + 1e9])
    ends = np.asarray(apply_voi_lut(probe, ds, index=0), dtype=np.float64)
    if ends.max() <= ends.min():
        raise ValueError("degenerate window")
    return float(ends.min()), float(ends.max())


def stretch_data_range(values: np.ndarray, warnings: list[str]) -> np.ndarray:
    """Without a window: stretch the data's own range onto [0, 1].

    Full-range scaling by 2**BitsStored would leave 12-bit data that uses a few hundred
    values nearly black; the data's range is the window a viewer would pick by default.
    """
    low, high = float(values.min()), float(values.max())
    if high <= low:
        warnings.append("The DICOM image is blank (every pixel has the same value).")
        return np.zeros(values.shape, dtype=np.float32)
    return scale_to_unit(values, low, high)


def rgb_dicom_to_gray(ds: Dataset, array: np.ndarray) -> np.ndarray:
    """pydicom already returns YBR data as RGB; take luminance and scale by BitsStored."""
    rgb = array.astype(np.float64)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    bits = int(ds.get("BitsStored", 8) or 8)
    return np.clip(gray / float(2**bits - 1), 0.0, 1.0).astype(np.float32)
