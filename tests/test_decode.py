"""Raster decoding: formats, bit depths, orientation, damaged and hostile files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import png_bytes, synthetic_radiograph
from utils.core.decode import InputError, crop_truncated_rows, decode_image_bytes, is_dicom, pixel_array


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gray8(seed=0, shape=(480, 400)) -> np.ndarray:
    return (synthetic_radiograph(*shape, seed=seed) * 255).astype(np.uint8)


def test_8bit_png_is_scaled_to_unit_range():
    array = gray8()
    decoded = decode_image_bytes(png_bytes(array))
    assert decoded.pixels.shape == array.shape
    assert decoded.pixels.dtype == np.float32
    np.testing.assert_allclose(decoded.pixels, array / 255.0, atol=1e-6)


def test_16bit_png_keeps_its_depth():
    array = (synthetic_radiograph() * 65535).astype(np.uint16)
    decoded = decode_image_bytes(png_bytes(array))
    np.testing.assert_allclose(decoded.pixels, array / 65535.0, atol=1e-6)
    # Values between two 8-bit steps survive: the decoder did not truncate to 8 bits.
    assert len(np.unique(decoded.pixels)) > 256


def test_rgb_and_gray_of_the_same_picture_decode_alike():
    array = gray8()
    rgb = np.repeat(array[..., None], 3, axis=-1)
    a = decode_image_bytes(png_bytes(array)).pixels
    b = decode_image_bytes(png_bytes(rgb)).pixels
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6


def test_rgba_alpha_is_flattened_onto_black():
    array = gray8()
    rgba = np.zeros(array.shape + (4,), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0
    rgba[100:200, 100:200, 3] = 255
    decoded = decode_image_bytes(png_bytes(rgba))
    assert decoded.pixels[0, 0] == 0.0
    assert decoded.pixels[150, 150] == pytest.approx(200 / 255, abs=1 / 255)
    assert any("Transparency" in w for w in decoded.warnings)


def test_palette_png_with_transparency():
    image = Image.fromarray(gray8()).convert("P")
    image.info["transparency"] = 0
    decoded = decode_image_bytes(encode(image, "PNG", transparency=0))
    assert decoded.pixels.ndim == 2


def test_cmyk_jpeg_decodes():
    image = Image.fromarray(np.repeat(gray8()[..., None], 3, -1)).convert("CMYK")
    decoded = decode_image_bytes(encode(image, "JPEG", quality=95))
    assert decoded.pixels.shape == (480, 400)
    assert 0.0 <= decoded.pixels.min() and decoded.pixels.max() <= 1.0


def test_exif_orientation_is_applied():
    array = gray8(shape=(300, 200))  # portrait
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    decoded = decode_image_bytes(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.pixels.shape == (200, 300)


@pytest.mark.parametrize("fmt", ["WEBP", "TIFF", "BMP", "GIF"])
def test_other_formats(fmt):
    decoded = decode_image_bytes(encode(Image.fromarray(gray8()), fmt))
    assert decoded.pixels.shape == (480, 400)


def test_animated_gif_uses_first_frame_with_warning():
    frames = [Image.fromarray(gray8(seed=s)) for s in range(3)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image_bytes(data)
    assert any("3 frames" in w for w in decoded.warnings)


def test_truncated_jpeg_is_cropped_not_grey_filled():
    data = encode(Image.fromarray(gray8(shape=(480, 400))), "JPEG", quality=90)
    decoded = decode_image_bytes(data[: int(len(data) * 0.6)])
    assert any("truncated" in w for w in decoded.warnings)
    assert 16 <= decoded.pixels.shape[0] < 480
    # No row of the kept part ends in a long run of Pillow's grey fill.
    tail = decoded.pixels[-1, -16:]
    assert not np.allclose(tail, 128 / 255, atol=0.5 / 255)


def test_crop_truncated_rows_cuts_partial_block_row():
    pixels = np.full((64, 64), 0.2, np.float32)
    pixels[48:, :] = 128 / 255
    pixels[40:48, 30:] = 128 / 255
    assert crop_truncated_rows(pixels).shape[0] == 40


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty"),
    (b"just some text, renamed to .png", "not an image"),
    (bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8)), "not an image"),
])
def test_unreadable_inputs_get_a_message(data, fragment):
    with pytest.raises(InputError, match=fragment):
        decode_image_bytes(data)


def test_truncated_png_is_flagged():
    data = png_bytes(gray8())
    decoded = decode_image_bytes(data[: len(data) // 2])
    assert any("truncated" in w for w in decoded.warnings)


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height, with a few bytes of data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + \
        chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    with pytest.raises(InputError, match="megapixels"):
        decode_image_bytes(huge_png(30_000, 30_000))


def test_a_large_image_gets_the_sentence_without_pillows_raw_warning(tmp_path):
    """144 megapixels: above Pillow's warning level (89) and this app's limit (60). The user
    reads one sentence; stderr carries no DecompressionBombWarning beside it."""
    import subprocess
    import sys

    from tests.conftest import REPO

    film = tmp_path / "big.png"
    film.write_bytes(huge_png(12_000, 12_000))
    result = subprocess.run([sys.executable, "-m", "utils.cli", "predict", str(film)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "megapixels" in result.stdout
    assert "DecompressionBomb" not in result.stderr and "exceeds limit" not in result.stderr, result.stderr


@pytest.mark.parametrize("size", [(8, 8), (1, 5000)])
def test_tiny_and_extreme_aspect_images_refused(size):
    with pytest.raises(InputError):
        decode_image_bytes(png_bytes(np.zeros(size[::-1], np.uint8)))


def test_dicom_detected_by_content_only():
    assert is_dicom(b"\0" * 128 + b"DICM" + b"\0" * 10)
    assert not is_dicom(png_bytes(gray8()))


@pytest.mark.parametrize("mode", ["L", "I;16", "I;16B", "RGB", "I", "F"])
def test_pixel_array_matches_numpy_for_every_mode(mode):
    """The zero-copy read must give np.asarray's values, byte order and shape (odd width:
    no row padding may leak in)."""
    rng = np.random.default_rng(3)
    values = rng.integers(0, 65535, (37, 53)).astype(np.uint16)
    image = Image.fromarray(values).convert("I") if mode in ("I", "F") else Image.fromarray(values)
    image = {"L": lambda: Image.fromarray((values >> 8).astype(np.uint8)),
             "I;16B": lambda: Image.fromarray(values).convert("I;16B"),
             "RGB": lambda: Image.fromarray((values >> 8).astype(np.uint8)).convert("RGB"),
             "F": lambda: image.convert("F")}.get(mode, lambda: image)()
    assert image.mode == mode
    expected = np.asarray(image)
    got = pixel_array(image)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got.astype(np.float64), expected.astype(np.float64))


def test_sixteen_bit_png_decodes_to_its_exact_values():
    values = np.random.default_rng(4).integers(0, 65535, (40, 61)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    decoded = decode_image_bytes(buffer.getvalue()).pixels
    np.testing.assert_array_equal(decoded, values.astype(np.float32) / np.float32(65535))


def test_float_tiff_with_nan_is_cleaned_and_an_all_nan_one_is_refused():
    values = np.linspace(0, 1000, 64 * 48, dtype=np.float32).reshape(64, 48)
    values[:4] = np.nan
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="TIFF")
    decoded = decode_image_bytes(buffer.getvalue())
    assert np.isfinite(decoded.pixels).all() and decoded.pixels[:4].max() == decoded.pixels[4:].min()
    assert any("had no value" in w for w in decoded.warnings)
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 48), np.nan, np.float32)).save(buffer, format="TIFF")
    with pytest.raises(InputError, match="no usable pixel values"):
        decode_image_bytes(buffer.getvalue())
