"""DICOM decoding: LUT order, photometric interpretation, bit depths, compression, privacy."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import JPEGLSLossless, RLELossless

from tests.dicom_fixtures import (
    SECRET_PATIENT_ID,
    SECRET_PATIENT_NAME,
    dicom_bytes,
    encapsulated_garbage,
    make_dicom,
    ramp,
)
from utils.core.decode import InputError, decode_image_bytes
from utils.core.preprocess import preprocess


def decode(ds):
    return decode_image_bytes(dicom_bytes(ds))


def assert_rises_left_to_right(pixels):
    row = pixels[pixels.shape[0] // 2]
    assert row[0] < 0.05 and row[-1] > 0.95
    assert np.all(np.diff(row) >= -1e-6)


def test_monochrome2_12bit_ramp():
    decoded = decode(make_dicom(ramp(high=4095), bits_stored=12))
    assert decoded.source_format == "DICOM"
    assert decoded.pixels.shape == (64, 48)
    assert_rises_left_to_right(decoded.pixels)


def test_12bit_data_using_part_of_its_range_is_stretched():
    decoded = decode(make_dicom(ramp(high=900), bits_stored=12))
    assert_rises_left_to_right(decoded.pixels)


def test_16bit_full_range():
    decoded = decode(make_dicom(ramp(high=65535), bits_stored=16))
    assert_rises_left_to_right(decoded.pixels)


def test_monochrome1_is_inverted():
    mono2 = decode(make_dicom(ramp(), photometric="MONOCHROME2")).pixels
    mono1 = decode(make_dicom(ramp(), photometric="MONOCHROME1")).pixels
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


def test_modality_lut_applies_before_the_window():
    # Stored s -> value 2 s - 1000; window centre 0, width 200 covers stored 450..550.
    stored = np.tile(np.array([400, 500, 600], np.uint16), (32, 11))[:, :32]
    decoded = decode(make_dicom(stored, slope=2.0, intercept=-1000.0, window=(0.0, 200.0)))
    row = decoded.pixels[0]
    assert row[0] == pytest.approx(0.0, abs=0.02)     # 400 -> -200: below the window
    assert row[1] == pytest.approx(0.5, abs=0.02)     # 500 -> 0: window centre
    assert row[2] == pytest.approx(1.0, abs=0.02)     # 600 -> 200: above the window


def test_voi_lut_sequence_is_used():
    lut = np.where(np.arange(4096) >= 2048, 65535, 0)  # a hard step at the middle
    decoded = decode(make_dicom(ramp(), voi_lut=lut))
    values = np.unique(np.round(decoded.pixels, 3))
    assert set(values.tolist()) <= {0.0, 1.0}


def test_missing_pixel_data():
    with pytest.raises(InputError, match="no pixel data"):
        decode(make_dicom(None))


def test_rgb_dicom_is_converted_with_a_warning():
    rgb = np.repeat(ramp(high=255).astype(np.uint8)[..., None], 3, axis=-1)
    decoded = decode(make_dicom(rgb, bits_stored=8, photometric="RGB"))
    assert decoded.pixels.shape == (64, 48)
    assert any("colour" in w for w in decoded.warnings)


def test_multiframe_uses_first_frame():
    frames = np.stack([ramp(), ramp()[:, ::-1]])
    decoded = decode(make_dicom(frames, frames=2))
    assert_rises_left_to_right(decoded.pixels)
    assert any("2 frames" in w for w in decoded.warnings)


def test_rle_compressed_dicom_decodes():
    ds = make_dicom(ramp())
    ds.compress(RLELossless)
    decoded = decode(ds)
    assert_rises_left_to_right(decoded.pixels)


def test_compressed_dicom_without_decoder_names_the_syntax():
    ds = make_dicom(ramp(), transfer_syntax=JPEGLSLossless, encapsulated=encapsulated_garbage())
    with pytest.raises(InputError, match="JPEG-LS"):
        decode(ds)


def test_damaged_dicom():
    data = dicom_bytes(make_dicom(ramp()))
    with pytest.raises(InputError):
        decode_image_bytes(data[:400])


def test_patient_tags_never_reach_messages(caplog):
    cases = [make_dicom(ramp()), make_dicom(None), make_dicom(ramp(), photometric="MONOCHROME1"),
             make_dicom(ramp(), transfer_syntax=JPEGLSLossless, encapsulated=encapsulated_garbage())]
    texts = []
    with caplog.at_level("DEBUG"):
        for ds in cases:
            try:
                texts += decode(ds).warnings
            except InputError as exc:
                texts.append(str(exc))
    blob = " ".join(texts) + caplog.text
    assert SECRET_PATIENT_NAME.split("^")[0] not in blob
    assert SECRET_PATIENT_ID not in blob


def test_float_pixel_data_with_nan_and_infinity_decodes_with_a_warning():
    """Float DICOM data may hold NaN/inf; left in, they turn the model input into garbage."""
    pixels = ramp().astype(np.float32)
    pixels[5:10, 5:10] = np.nan
    pixels[0, 0] = np.inf
    ds = make_dicom(ramp())
    del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
    ds.BitsAllocated = 32
    ds.FloatPixelData = pixels.tobytes()
    decoded = decode_image_bytes(dicom_bytes(ds))
    assert np.isfinite(decoded.pixels).all() and decoded.pixels.max() == 1.0
    assert decoded.pixels[7, 7] == 0.0
    assert any("26 pixels had no value" in w for w in decoded.warnings)
    assert preprocess(decoded.pixels).max() > 200  # the ramp survives
