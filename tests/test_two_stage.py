"""The two-stage recipe's training parts on synthetic data: box geometry under preprocessing and
augmentation, the two-stage composition, the fracture map in the serving path, and the resume
of an interrupted fine-tuning run."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import png_bytes, synthetic_radiograph
from training.augment import LIVE_AUGMENTATION, random_view
from training.boxes import box_mask, cell_targets
from training.model import two_stage_probabilities
from utils.core.preprocess import preprocess_with_geometry

GEOMETRY_ONLY = {**LIVE_AUGMENTATION, "downscale": {**LIVE_AUGMENTATION["downscale"], "p": 0.0},
                 "gamma": (1.0, 1.0), "contrast": (1.0, 1.0), "brightness": 0.0,
                 "blur": {**LIVE_AUGMENTATION["blur"], "p": 0.0}, "sharpen": {**LIVE_AUGMENTATION["sharpen"], "p": 0.0},
                 "noise": {**LIVE_AUGMENTATION["noise"], "p": 0.0}, "jpeg": {**LIVE_AUGMENTATION["jpeg"], "p": 0.0},
                 "annotations": {**LIVE_AUGMENTATION["annotations"], "p": 0.0},
                 "stretch": {**LIVE_AUGMENTATION["stretch"], "p": 0.0},
                 "tight_crop": {**LIVE_AUGMENTATION["tight_crop"], "p": 0.0},
                 "collimation": {**LIVE_AUGMENTATION["collimation"], "p": 0.0},
                 "intensity_network": {**LIVE_AUGMENTATION["intensity_network"], "p": 0.0}}
SMALL = 75  # InceptionV3's smallest input: keeps the model tests quick


def film_with_bright_box(height=300, width=220, box=(0.6, 0.3, 0.2, 0.15)):
    """A dark film with a grey margin (cropped by preprocessing) and one bright box in YOLO
    coordinates (cx, cy, w, h) of the whole decoded image."""
    pixels = np.full((height, width), 0.5, np.float32)
    pixels[20:-10, 15:-25] = 0.1 + 0.02 * np.random.default_rng(0).standard_normal((height - 30, width - 40))
    cx, cy, w, h = box
    pixels[int((cy - h / 2) * height):int((cy + h / 2) * height), int((cx - w / 2) * width):int((cx + w / 2) * width)] = 1.0
    return pixels, np.array([box])


def test_box_mask_lands_on_the_box_after_preprocessing():
    pixels, boxes = film_with_bright_box()
    image, geometry = preprocess_with_geometry(pixels, 128)
    mask = box_mask(boxes, pixels.shape, geometry, 128)
    bright = image[..., 0] > 128
    assert mask.any() and bright.any()
    assert bright[mask].mean() > 0.85  # the mask sits on the bright box ...
    assert mask[bright].mean() > 0.85  # ... and covers it


@pytest.mark.parametrize("seed", range(12))
def test_box_mask_follows_every_augmented_view(seed):
    pixels, boxes = film_with_bright_box()
    image, geometry = preprocess_with_geometry(pixels, 128)
    mask = box_mask(boxes, pixels.shape, geometry, 128)
    view, view_mask = random_view(image[..., 0], mask, np.random.default_rng(seed), GEOMETRY_ONLY)
    bright = view > 128
    assert view_mask.sum() >= 0.5 * mask.sum()  # the box stays in view (the geometry is redrawn otherwise)
    assert bright[view_mask].mean() > 0.8
    assert view_mask[bright].mean() > 0.8


def test_full_augmentation_keeps_shape_type_and_is_reproducible():
    image = (synthetic_radiograph(128, 128, seed=3) * 255).astype(np.uint8)
    a, _ = random_view(image, None, np.random.default_rng([1, 2]))
    b, _ = random_view(image, None, np.random.default_rng([1, 2]))
    c, _ = random_view(image, None, np.random.default_rng([1, 3]))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cell_targets_mark_the_cells_a_box_covers():
    mask = np.zeros((120, 120), bool)
    mask[30:60, 90:120] = True  # rows 3..5, columns 9..11 of a 12 x 12 grid (10 px cells)
    targets = cell_targets(mask, 12)
    assert targets.shape == (12, 12) and targets.dtype == np.float32
    assert set(zip(*np.nonzero(targets))) == {(r, c) for r in range(3, 6) for c in range(9, 12)}
    assert cell_targets(np.zeros((120, 120), bool), 12).sum() == 0


def test_two_stage_probabilities_sum_to_one_and_follow_the_stages():
    rng = np.random.default_rng(0)
    pf, ps = rng.random(100), rng.random(100)
    probs = two_stage_probabilities(pf, ps)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(probs[:, 1] + probs[:, 2], pf)  # P(any fracture)
    np.testing.assert_allclose(probs[:, 2] / (probs[:, 1] + probs[:, 2]), ps)  # P(beyond repair | fracture)


@pytest.fixture(scope="module")
def small_two_stage():
    from training.model import build_two_stage_classifier

    return build_two_stage_classifier(None, size=SMALL, seed=0)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def test_the_fracture_stage_learns_from_fracatlas_unless_web_fractures_are_weighted_in():
    from training.finetune import stage_targets

    labels = np.array([0, 1, 1, 2, 0])  # healthy, fractured, fractured, beyond_repair, healthy
    from_fracatlas = np.array([True, True, False, False, True])
    default = stage_targets(labels, from_fracatlas, severe_weight=3.0)
    np.testing.assert_array_equal(default["fracture"], [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(default["fracture_w"], [1, 1, 0, 0, 1])
    # Severity: fractures only, beyond repair at its weight.
    np.testing.assert_array_equal(default["severity"], [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(default["severity_w"], [0, 1, 1, 3, 0])
    weighted = stage_targets(labels, from_fracatlas, severe_weight=3.0, web_fracture_weight=0.25)
    np.testing.assert_array_equal(weighted["fracture_w"], [1, 1, 0.25, 0.25, 1])


def test_the_model_composes_its_stages(small_two_stage):
    from training.model import training_view
    from utils.core.inference import softmax, to_model_input

    x = to_model_input((np.random.default_rng(1).random((4, SMALL, SMALL, 1)) * 255).astype(np.uint8))
    trunk, tail = training_view(small_two_stage)
    out = tail(trunk(x))
    probs = softmax(np.asarray(small_two_stage(x), np.float64))
    expected = two_stage_probabilities(sigmoid(out["fracture_logit"][:, 0]), sigmoid(out["severity_logit"][:, 0]))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)


def test_serving_shows_the_fracture_map(small_two_stage, tmp_path):
    """Keras and LiteRT engines serve the model's own fracture map as the heatmap."""
    import keras

    from training.litert import convert
    from training.model import training_view
    from utils.core.bundle import Bundle
    from utils.core.classifier import Classifier
    from utils.core.engines import KerasEngine, LiteRTEngine, build_serving_model
    from utils.core.inference import to_model_input

    path = tmp_path / "small.keras"
    small_two_stage.save(path, include_optimizer=False)
    keras.utils.clear_session()  # as in a fresh process: layer names from the file, counters reset
    build_serving_model(keras.saving.load_model(path, compile=False))  # no clash with the file's names
    litert_path = convert(path, tmp_path / "small.tflite")
    metadata = {"classes": ["healthy", "fractured", "beyond_repair"], "temperature": 1.0,
                "input": {"shape": [None, SMALL, SMALL, 3]},
                "presets": {"balanced": {"class_weights": None, "any_fracture_threshold": None}}}
    data = png_bytes((synthetic_radiograph(seed=5) * 255).astype(np.uint8))
    for engine in (KerasEngine(small_two_stage), LiteRTEngine(litert_path)):
        classifier = Classifier(Bundle(model=small_two_stage, metadata=metadata), engine=engine)
        assert classifier.heatmap_kind == "fracture map"
        prediction = classifier.predict_bytes("film.png", data, preset="balanced")
        assert prediction.error is None
        assert abs(sum(prediction.probabilities.values()) - 1.0) < 1e-5
        trunk, tail = training_view(small_two_stage)
        cells = np.asarray(tail(trunk(to_model_input(prediction.model_input[None, ..., None])))["localisation_logit"])
        for name in ("healthy", "fractured", "beyond_repair"):  # one map, the fracture probability per cell
            np.testing.assert_allclose(prediction.heatmap(name), sigmoid(cells[0, ..., 0]), atol=1e-4)


def tiny_data(n=24, size=SMALL, seed=0):
    rng = np.random.default_rng(seed)
    images = (rng.random((n, size, size)) * 255).astype(np.uint8)
    labels = np.array([0, 1, 2, 1] * (n // 4))
    sources = np.array(["fracatlas", "fracatlas", "bone_break", "bone_break"] * (n // 4))
    masks = {i: np.pad(np.ones((20, 20), bool), ((20, size - 40), (30, size - 50)))
             for i in range(n) if labels[i] == 1 and sources[i] == "fracatlas"}
    return {"images": images, "labels": labels, "sources": sources, "masks": masks}


def run_args(out: Path, stop_after: int | None = None) -> argparse.Namespace:
    return argparse.Namespace(out=out, epochs=2, healthy_per_epoch=4, web_fractures_per_epoch=4,
                              batch_size=4, lr=1e-3, weight_decay=1e-4, localisation_weight=1.0,
                              frozen_until="mixed5", seed=0, stop_after=stop_after)


def test_an_interrupted_run_resumes_where_it_stopped(tmp_path):
    """Stop after epoch 1, rerun the same command: epoch 2 only, from epoch 1's weights and
    optimizer state, so it ends where an uninterrupted run ends."""
    import tensorflow as tf

    from training.finetune import fit
    from training.model import build_two_stage_classifier

    tf.config.experimental.enable_op_determinism()
    data = {"train": tiny_data(seed=0), "val": tiny_data(n=8, seed=1)}
    # No dropout: its random masks are the one stream a checkpoint does not hold.
    straight = build_two_stage_classifier(None, size=SMALL, seed=0, dropout=0.0)
    fit(straight, data, run_args(tmp_path / "straight"), log=lambda m: None)

    stopped = fit(build_two_stage_classifier(None, size=SMALL, seed=0, dropout=0.0), data,
                  run_args(tmp_path / "resumed", stop_after=1), log=lambda m: None)
    assert stopped.get("stopped") and not (tmp_path / "resumed" / "model.keras").exists()
    messages = []
    resumed = build_two_stage_classifier(None, size=SMALL, seed=0, dropout=0.0)
    result = fit(resumed, data, run_args(tmp_path / "resumed"), log=messages.append)

    assert any("resumed after epoch 1" in m for m in messages)
    assert [h["epoch"] for h in result["state"]["history"]] == [1, 2]
    assert sum(m.startswith("{") for m in messages) == 1  # only epoch 2 was trained again
    straight_state = (tmp_path / "straight" / "state.json").read_text()
    assert '"epoch": 2' in straight_state
    # The same optimizer state (step count, Adam moments) as the uninterrupted run.
    for a, b in zip(np.load(tmp_path / "straight" / "last_optimizer.npz").values(),
                    np.load(tmp_path / "resumed" / "last_optimizer.npz").values()):
        assert np.linalg.norm(a - b) <= 1e-3 * max(np.linalg.norm(a), 1e-12)
    x = np.random.default_rng(2).random((2, SMALL, SMALL, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(straight(x)), np.asarray(resumed(x)), rtol=1e-4, atol=1e-5)


def test_a_run_from_a_trained_model_scores_it_first_and_keeps_it_unless_an_epoch_beats_it(tmp_path):
    """--init-from: the starting model is epoch 0 of the history; with a learning rate of 0 no
    epoch can beat it, so the run ends with the very weights it started from."""
    from training.finetune import fit
    from training.model import build_two_stage_classifier

    data = {"train": tiny_data(seed=0), "val": tiny_data(n=8, seed=1)}
    model = build_two_stage_classifier(None, size=SMALL, seed=3, dropout=0.0)
    x = np.random.default_rng(2).random((2, SMALL, SMALL, 3)).astype(np.float32)
    before = np.asarray(model(x))
    args = run_args(tmp_path / "from_trained")
    args.lr, args.init_from = 0.0, tmp_path / "trained.keras"
    result = fit(model, data, args, log=lambda m: None)

    history = result["state"]["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[1]["score"] == pytest.approx(history[0]["score"])
    assert result["state"]["best_epoch"] == 0
    np.testing.assert_allclose(np.asarray(model(x)), before, rtol=1e-5, atol=1e-6)
