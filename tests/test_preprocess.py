"""The shared preprocessing function and its parity between training and serving."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import png_bytes, synthetic_radiograph
from utils.core.preprocess import (
    INPUT_SIZE,
    crop_uniform_border,
    letterbox_resize,
    load_and_preprocess,
    percentile_range,
    preprocess,
    stretch_contrast,
)


def test_output_shape_dtype_and_full_range(radiograph):
    out = preprocess(radiograph)
    assert out.shape == (INPUT_SIZE, INPUT_SIZE, 1) and out.dtype == np.uint8
    assert out.min() == 0 and out.max() >= 245


def test_border_bars_are_cropped():
    inner = synthetic_radiograph(200, 150)
    padded = np.pad(inner, ((30, 50), (10, 0)), constant_values=0.5)
    assert crop_uniform_border(padded).shape == inner.shape


def test_blank_image_does_not_crash():
    out = preprocess(np.zeros((100, 100), np.float32))
    assert out.shape == (INPUT_SIZE, INPUT_SIZE, 1) and out.max() == 0


def test_contrast_stretch_is_invariant_to_exposure(radiograph):
    a = stretch_contrast(radiograph)
    b = stretch_contrast(radiograph * 0.5 + 0.2)
    assert np.abs(a - b).max() < 1e-4


@pytest.mark.parametrize("kind", ["uniform", "12-bit levels", "black third", "sorted", "constant", "small"])
@pytest.mark.parametrize("percentiles", [(0.5, 99.5), (1, 99), (0, 100)])
def test_percentile_range_equals_numpy_bit_for_bit(kind, percentiles):
    """The fast tail search must give np.percentile's exact values: the training cache was
    made with np.percentile, and one ulp can flip a rounded uint8 pixel."""
    rng = np.random.default_rng(len(kind))
    n = 301 if kind == "small" else 700_007  # odd sizes: the linear method interpolates
    pixels = {"uniform": lambda: rng.random(n), "small": lambda: rng.random(n),
              "12-bit levels": lambda: rng.integers(0, 4096, n) / 4095,
              "black third": lambda: np.where(np.arange(n) < n // 3, 0.0, rng.normal(0.5, 0.2, n)),
              "sorted": lambda: np.sort(rng.random(n)),
              "constant": lambda: np.full(n, 0.25)}[kind]().astype(np.float32).reshape(-1, 7)
    np.testing.assert_array_equal(percentile_range(pixels, percentiles), np.percentile(pixels, percentiles))


def test_letterbox_keeps_aspect_ratio_with_black_padding():
    tall = np.ones((200, 100), np.float32)
    out = letterbox_resize(tall, 100)
    assert out[:, :20].max() == 0 and out[:, -20:].max() == 0
    assert out[:, 30:70].min() > 0.99


def test_same_picture_same_input_whatever_the_encoding(radiograph):
    eight = (radiograph * 255).astype(np.uint8)
    sixteen = eight.astype(np.uint16) * 257
    a, _ = load_and_preprocess(png_bytes(eight))
    b, _ = load_and_preprocess(png_bytes(sixteen))
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def test_training_cache_equals_serving_input(tmp_path):
    """The training image cache and the app's model input come out byte-identical."""
    import hashlib

    from training.features import build_image_cache

    rows = []
    for i in range(3):
        data = png_bytes((synthetic_radiograph(300 + 20 * i, 250, seed=i) * 255).astype(np.uint8))
        (tmp_path / f"{i}.png").write_bytes(data)
        rows.append({"path": f"{i}.png", "sha256": hashlib.sha256(data).hexdigest()})
    cached = build_image_cache(rows, tmp_path, tmp_path / "cache", workers=1)
    for i, row in enumerate(rows):
        served, _ = load_and_preprocess((tmp_path / row["path"]).read_bytes())
        np.testing.assert_array_equal(cached[i], served[..., 0])


def test_large_images_are_brought_to_training_scale(radiograph):
    from utils.core.preprocess import MAX_WORKING_SIDE, limit_size

    big = np.kron(radiograph, np.ones((6, 6), np.float32))  # 2880 x 2400
    assert max(limit_size(big).shape) == MAX_WORKING_SIDE
    assert limit_size(radiograph) is radiograph  # training-sized images pass untouched
    a, b = preprocess(big), preprocess(radiograph)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_geometry_maps_image_points_into_the_model_input():
    """A bright dot lands where Geometry.to_model says, through downscale, crop and letterbox."""
    from utils.core.preprocess import preprocess_with_geometry

    rng = np.random.default_rng(0)
    image = np.zeros((1500, 2400), dtype=np.float32)  # larger than the working size
    image[200:1300, 300:2100] = 0.2 + 0.05 * rng.random((1100, 1800))  # content inside flat borders
    y, x = 900, 700
    image[y - 12:y + 12, x - 12:x + 12] = 1.0
    model_input, geometry = preprocess_with_geometry(image)
    mx, my = geometry.to_model(np.array([x]), np.array([y]))
    rows, cols = np.nonzero(model_input[..., 0] == model_input.max())  # the dot: centre of its plateau
    assert abs(cols.mean() + 0.5 - mx[0]) <= 1.5 and abs(rows.mean() + 0.5 - my[0]) <= 1.5
    x0, y0, x1, y1 = geometry.content_box()
    assert x0 == 0 and x1 == pytest.approx(INPUT_SIZE) and 0 < y0 < y1 < INPUT_SIZE
    assert model_input[: int(y0) - 1].max() == 0  # the letterbox padding is black
