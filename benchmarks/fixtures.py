"""Synthetic inputs and helpers that the benchmarks and the tests share (no dataset image here).

The benchmarks import this module, never `tests/`; the tests import it too, so both make the
same films.
"""

from __future__ import annotations

import io
import shutil
import socket
import struct
import time
import urllib.request
import zlib

import cv2
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
SECRET_PATIENT_NAME = "Secretpatient^Zelda"
SECRET_PATIENT_ID = "PID-9931-SECRET"


def synthetic_radiograph(height: int = 480, width: int = 400, seed: int = 0) -> np.ndarray:
    """A dark field with a bright 'bone' and a darker gap across it: 2-D float in [0, 1]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = 0.08 + 0.03 * rng.standard_normal((height, width))
    shaft = np.abs(xx - width * (0.45 + 0.1 * rng.random())) < width * 0.08
    image[shaft] += 0.6
    gap = np.abs(yy - height * (0.3 + 0.4 * rng.random())) < 3
    image[shaft & gap] -= 0.4
    return np.clip(image, 0, 1).astype(np.float32)


def textured_radiograph(height: int = 2500, width: int = 2000, seed: int = 0, grain: float = 0.004) -> np.ndarray:
    """A film that compresses like a real one (JPEG quality 92 at 2,000 x 2,500: about 320 kB,
    against 140-450 kB for real films upscaled to that size): soft-tissue falloff, a bone
    with band-limited trabecular texture and a fracture line, and film grain. Smooth
    synthetic films decode faster than real ones; white noise decodes slower."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = 0.10 + 0.15 * np.exp(-(((xx - width / 2) / (0.45 * width)) ** 2))
    shaft = np.clip(1 - (np.abs(xx - width * (0.45 + 0.1 * rng.random())) / (width * 0.09)) ** 2, 0, None)
    image += 0.55 * np.sqrt(shaft)
    coarse = cv2.GaussianBlur(rng.standard_normal((height // 8, width // 8)).astype(np.float32), (0, 0), 1.0)
    image += 0.05 * cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC) * (shaft > 0)
    image += grain * rng.standard_normal((height, width)).astype(np.float32)
    gap = np.abs(yy - height * (0.3 + 0.4 * rng.random())) < height * 0.002
    image[gap & (shaft > 0)] -= 0.3
    return np.clip(image, 0, 1).astype(np.float32)


def jpeg_bytes(array: np.ndarray, quality: int = 92) -> bytes:
    """A [0, 1] grayscale array as an 8-bit JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(array * 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG") if mode else Image.fromarray(array).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def new_instance(sop_class: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An empty instance of sop_class with its file meta and a new SOP instance UID."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    return ds


def make_dicom(  # noqa: PLR0913  (a DICOM fixture: each pixel-module attribute by keyword)
    pixels: np.ndarray | None,
    *,
    bits_stored: int = 12,
    photometric: str = "MONOCHROME2",
    slope: float | None = None,
    intercept: float | None = None,
    window: tuple[float, float] | None = None,
    voi_lut: np.ndarray | None = None,
    frames: int = 1,
    transfer_syntax=ExplicitVRLittleEndian,
    encapsulated: bytes | None = None,
) -> Dataset:
    ds = new_instance(CTImageStorage, transfer_syntax)
    ds.PatientName = SECRET_PATIENT_NAME
    ds.PatientID = SECRET_PATIENT_ID
    ds.Modality = "CR"
    if pixels is None:
        ds.Rows, ds.Columns = 64, 48
        return ds
    samples = 3 if pixels.ndim == 3 + (frames > 1) else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples == 3 else pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if pixels.dtype == np.uint8 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept or 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", voi_lut.astype(np.uint16).tolist())  # LUTData as US
        ds.VOILUTSequence = [item]
    ds.PixelData = encapsulated if encapsulated is not None else pixels.tobytes()
    return ds


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"streamlit exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("streamlit did not become healthy")


def decompression_bomb() -> bytes:
    """A valid PNG header announcing 30,000 x 30,000 pixels (900 megapixels)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 30_000, 30_000, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body
