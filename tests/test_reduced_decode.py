"""Decoding at reduced size (the decoder's working_side option, measured by the decoding
equivalence check and not shipped): JPEGs decode at a DCT scale that still covers the working
size and the model input barely moves; serving decodes at full size; grey PNGs keep Pillow's
pixels and their orientation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fixtures.films import jpeg_bytes, png_bytes, textured_radiograph
from utils.core.decode import decode_image_bytes, draft_size, pil_to_gray
from utils.core.preprocess import MAX_WORKING_SIDE, decode_for_model, preprocess


def reduced(data: bytes):
    return decode_image_bytes(data, working_side=MAX_WORKING_SIDE)


@pytest.fixture(scope="module")
def big_film() -> np.ndarray:
    return textured_radiograph(2500, 2000, seed=1)


def test_a_large_jpeg_decodes_at_half_scale_and_keeps_the_working_size(big_film):
    decoded = reduced(jpeg_bytes(big_film))
    assert decoded.pixels.shape == (1250, 1000)
    assert max(decoded.pixels.shape) >= MAX_WORKING_SIDE


@pytest.mark.parametrize("size", [(2047, 3001), (4100, 900), (7000, 7000), (9000, 3000), (1500, 1200)])
def test_the_decoded_longer_side_never_drops_below_the_working_side(size):
    width, height = size
    image = Image.new("L", size, 90)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    pixels = decode_image_bytes(buffer.getvalue(), working_side=MAX_WORKING_SIDE).pixels
    assert max(pixels.shape) >= min(MAX_WORKING_SIDE, max(size))
    assert pixels.shape[0] * width == pytest.approx(pixels.shape[1] * height, rel=0.01)


def test_draft_size_rounds_up():
    assert draft_size(2000, 2500, 1024) == (820, 1024)
    assert draft_size(1025, 3, 1024) == (1024, 3)


def test_the_model_input_barely_changes_with_reduced_decoding(big_film):
    data = jpeg_bytes(big_film)
    full = preprocess(decode_image_bytes(data).pixels).astype(int)
    small = preprocess(reduced(data).pixels).astype(int)
    difference = np.abs(full - small)
    assert difference.mean() < 0.5  # grey levels of 255
    assert np.percentile(difference, 99) <= 3


def test_small_jpegs_and_other_formats_decode_at_full_size(big_film):
    small = jpeg_bytes(big_film[:1500, :1200])  # under twice the working side: no DCT scale fits
    assert reduced(small).pixels.shape == (1500, 1200)
    png = png_bytes(np.round(big_film * 255).astype(np.uint8))
    assert reduced(png).pixels.shape == (2500, 2000)


def test_serving_decodes_at_full_size(big_film):
    """Reduced decoding failed the equivalence check, so the shipped path does not use it."""
    assert decode_for_model(jpeg_bytes(big_film)).pixels.shape == (2500, 2000)


def test_a_truncated_large_jpeg_is_still_flagged_at_reduced_size(big_film):
    data = jpeg_bytes(big_film)
    decoded = reduced(data[: int(len(data) * 0.6)])
    assert decoded.incomplete is not None
    assert 16 <= decoded.pixels.shape[0] < 1250
    assert not np.allclose(decoded.pixels[-1, -16:], 128 / 255, atol=0.5 / 255)


def test_a_grey_png_gives_pillows_pixels(big_film):
    grey = np.round(big_film * 255).astype(np.uint8)
    data = png_bytes(grey)
    pillow = pil_to_gray(Image.open(io.BytesIO(data)), [])
    assert np.array_equal(decode_image_bytes(data).pixels, pillow)


def test_a_grey_png_with_an_orientation_tag_is_still_turned():
    grey = np.zeros((40, 60), np.uint8)
    grey[:, :10] = 255  # a bright band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: turn 90 degrees clockwise to show
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG", exif=exif.tobytes())
    pixels = decode_image_bytes(buffer.getvalue()).pixels
    assert pixels.shape == (60, 40)
    assert pixels[:10].mean() == 1.0  # the band is now on top


def test_the_decoding_table_goes_into_the_model_card_once_before_the_int8_section(tmp_path):
    from training.release.decode_equivalence import CARD_MARKER, CARD_NEXT, write_card_section

    sets = {"test": {"images": 3, "identical_inputs": 1.0, "mean_abs_input_difference": 0.0,
                     "verdict_agreement": {"balanced": 1.0}, "flag_agreement": 1.0,
                     "max_crop_share_move": 0.0, "max_percentile_move": 0.0}}
    summary = {"candidate": "reduced", "precision": "float32", "passed": False,
               "forms": {"as stored": {"sets": sets, "auroc": {"test": {"reference": 0.9, "candidate": 0.9}},
                                       "auroc_delta": {"test": 0.0},
                                       "passes": {"auroc_delta": True, "verdict_agreement": False,
                                                  "flag_agreement": True}}}}
    card = tmp_path / "MODEL_CARD.md"
    card.write_text(f"# Model card\n\n## Data\n\ntext\n\n{CARD_NEXT}\n\nint8 table\n")
    write_card_section(card, summary)
    write_card_section(card, summary)  # a rerun replaces the section, it does not add a second
    text = card.read_text()
    assert "Outcome: failed on the same verdict under each preset for >= 99% (as stored)." in text
    assert "False" not in text and "True" not in text
    assert text.count(CARD_MARKER) == 1 and text.index("## Data") < text.index(CARD_MARKER) < text.index(CARD_NEXT)
    assert "failed, so serving does not use it" in text and text.endswith("int8 table\n")
