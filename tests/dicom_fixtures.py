"""Synthetic DICOM files built with pydicom (no real patient data anywhere)."""

from __future__ import annotations

import io

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

SECRET_PATIENT_NAME = "Secretpatient^Zelda"
SECRET_PATIENT_ID = "PID-9931-SECRET"


def ramp(rows: int = 64, cols: int = 48, high: int = 4095) -> np.ndarray:
    """Values rising left to right, 0 .. high."""
    line = np.linspace(0, high, cols)
    return np.tile(line, (rows, 1)).round().astype(np.uint16)


def make_dicom(pixels: np.ndarray | None, *, bits_stored: int = 12, photometric: str = "MONOCHROME2",
               slope: float | None = None, intercept: float | None = None,
               window: tuple[float, float] | None = None, voi_lut: np.ndarray | None = None,
               frames: int = 1, transfer_syntax=ExplicitVRLittleEndian,
               encapsulated: bytes | None = None) -> Dataset:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
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


def encapsulated_garbage(frames: int = 1) -> bytes:
    return encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64 for _ in range(frames)])
