"""Synthetic DICOM files built with pydicom (no real patient data anywhere)."""

from __future__ import annotations

import numpy as np
from pydicom.encaps import encapsulate

from fixtures.films import SECRET_PATIENT_ID, SECRET_PATIENT_NAME, dicom_bytes, make_dicom  # noqa: F401  (re-exported)


def ramp(rows: int = 64, cols: int = 48, high: int = 4095) -> np.ndarray:
    """Values rising left to right, 0 .. high."""
    line = np.linspace(0, high, cols)
    return np.tile(line, (rows, 1)).round().astype(np.uint16)


def encapsulated_garbage(frames: int = 1) -> bytes:
    return encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 64 for _ in range(frames)])
