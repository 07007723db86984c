"""The not-an-X-ray guard: cheap checks, the feature distance, and its measured behaviour."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SHARED_DATA, png_bytes, synthetic_radiograph
from training.guard_fit import fit_feature_guard
from utils.core.decode import decode_image_bytes
from utils.core.guard import FLAT_MESSAGE, MAX_COLOUR_FRACTION, FeatureGuard, mahalanobis_distance, screen_decoded


def rgb_png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def colourful_photo(height=300, width=400, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    rgb = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 17.0)], axis=-1)
    return np.uint8(np.clip(rgb * 255 + rng.normal(0, 5, rgb.shape), 0, 255))


def test_grey_radiograph_passes_the_cheap_checks(radiograph_png):
    decoded = decode_image_bytes(radiograph_png)
    assert decoded.colour_fraction == 0.0
    assert screen_decoded(decoded.pixels, decoded.colour_fraction) is None


def test_tinted_radiograph_is_not_taken_for_a_colour_photo():
    # Web figures often come with a uniform blue or green cast.
    gray = synthetic_radiograph()
    tinted = np.uint8(np.clip(np.stack([gray * 0.8, gray * 0.95, gray], axis=-1) * 255, 0, 255))
    decoded = decode_image_bytes(rgb_png(tinted))
    assert decoded.colour_fraction < MAX_COLOUR_FRACTION
    assert screen_decoded(decoded.pixels, decoded.colour_fraction) is None


def test_radiograph_with_a_red_arrow_is_not_flagged():
    rgb = np.repeat(np.uint8(synthetic_radiograph() * 255)[..., None], 3, axis=-1)
    rgb[100:115, 50:150] = (230, 20, 20)  # an annotation arrow's shaft
    decoded = decode_image_bytes(rgb_png(rgb))
    assert 0 < decoded.colour_fraction < MAX_COLOUR_FRACTION


def test_colour_photo_is_flagged_with_a_message():
    decoded = decode_image_bytes(rgb_png(colourful_photo()))
    message = screen_decoded(decoded.pixels, decoded.colour_fraction)
    assert decoded.colour_fraction > 0.5
    assert message is not None and "colour photo" in message


@pytest.mark.parametrize("level", [0, 128, 255])
def test_blank_images_are_flagged(level):
    flat = np.full((200, 300), level, dtype=np.uint8)
    decoded = decode_image_bytes(png_bytes(flat))
    assert screen_decoded(decoded.pixels, decoded.colour_fraction) == FLAT_MESSAGE


def test_mahalanobis_threshold_and_outliers(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.normal(size=(600, 8))
    labels = np.repeat([0, 1, 2], 200)
    train[labels == 1] += 3.0
    val = rng.normal(size=(400, 8))
    guard = fit_feature_guard(train, labels, val, val_quantile=0.95)
    assert 0.03 <= guard.is_outlier(rng.normal(size=(2000, 8))).mean() <= 0.08
    assert guard.is_outlier(rng.normal(size=(50, 8)) + 12.0).all()
    # Nearest class mean: a point at class 1's centre is as typical as one at class 0's.
    assert mahalanobis_distance(np.full((1, 8), 3.0), guard.class_means, guard.precision)[0] < 1.0
    guard.save(tmp_path / "g.npz")
    loaded = FeatureGuard.load(tmp_path / "g.npz")
    assert loaded.threshold == pytest.approx(guard.threshold)
    np.testing.assert_allclose(loaded.distance(val[:5]), guard.distance(val[:5]), rtol=1e-5)


def test_classifier_flags_a_colour_photo_as_uncertain(classifier):
    prediction = classifier.predict_bytes("holiday.png", rgb_png(colourful_photo()))
    assert prediction.error is None and prediction.not_xray is not None
    assert prediction.uncertain and prediction.not_xray in prediction.warnings
    record = prediction.as_record()
    assert record["not_xray"] is True and record["uncertain"] is True
    # Whatever preset the user switches to afterwards, the verdict stays uncertain.
    for name in classifier.bundle.metadata["presets"]:
        verdict = prediction.decide(classifier.bundle.preset(name))
        assert verdict.kind == "not_a_radiograph" and verdict.reasons[0] == "not_a_radiograph"


def test_bundled_guard_flags_generated_non_radiographs(classifier):
    """A fresh seed, not the one the model card's figure used: at least 95 % flagged."""
    from training.non_radiographs import make_non_radiographs

    images = make_non_radiographs(48, seed=7)
    predictions = classifier.predict_many([(name, data) for name, _, data in images], batch_size=16)
    flagged = [p.not_xray is not None for p in predictions]
    assert all(p.error is None for p in predictions)
    assert np.mean(flagged) >= 0.95, [p.name for p, f in zip(predictions, flagged) if not f]


def test_bundled_guard_passes_real_test_radiographs(classifier):
    """Test-split radiographs from ../shared/data: few flagged (the card reports all 782)."""
    import csv

    if not (SHARED_DATA / "manifest.csv").exists():
        pytest.skip(f"{SHARED_DATA} is absent: the dataset is needed for this check")
    with open(REPO / "training" / "split.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
    picked = [rows[i] for i in np.random.default_rng(0).choice(len(rows), 80, replace=False)]
    predictions = classifier.predict_many([(r["path"], (SHARED_DATA / r["path"]).read_bytes()) for r in picked],
                                          batch_size=16)
    assert np.mean([p.not_xray is not None for p in predictions]) <= 0.10


def test_guard_is_in_the_bundle_metadata(bundle_dir):
    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    guard = metadata["guard"]
    assert (bundle_dir / guard["file"]).exists() and guard["threshold"] > 0
    measured = metadata["metrics"]["trust"]["guard"]
    assert measured["test_radiographs"]["n"] >= 700 and measured["non_radiographs"]["n"] >= 200
