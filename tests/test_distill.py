"""The quantization-aware fine-tune's pieces that decide what it learns: the batches (fixed per
step, so a resumed run sees what the killed one would have), the loss, and what stays frozen."""

import argparse

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from training.model import build_two_stage_classifier  # noqa: E402
from training.quantization.distill import batch_of, distillation_loss, freeze_batch_norm  # noqa: E402
from training.studies.float32_repeatability import jpeg_round_trip  # noqa: E402


def test_each_step_has_its_own_fixed_batch():
    images = np.random.default_rng(0).integers(0, 256, (20, 32, 32), dtype=np.uint8)
    args = argparse.Namespace(batch=4, seed=0, augmented_share=0.5)
    first = batch_of(images, 3, args)
    assert first.shape == (4, 32, 32, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(first, batch_of(images, 3, args))  # a resumed run sees the same
    assert not np.array_equal(first, batch_of(images, 4, args))
    assert not np.array_equal(batch_of(images, 0, args), batch_of(images, 5, args))  # epoch 2 reshuffles


def test_the_loss_is_zero_only_when_the_student_answers_as_the_teacher():
    teacher = {"fracture_logit": tf.constant([[1.0]]), "severity_logit": tf.constant([[-2.0]]), "pool": tf.ones((1, 4))}
    variance = tf.ones((4,))
    assert float(distillation_loss(teacher, teacher, variance)) == 0.0
    moved = {**teacher, "fracture_logit": tf.constant([[1.5]])}
    assert float(distillation_loss(moved, teacher, variance)) == pytest.approx(0.25)


def test_batch_norm_and_the_fixed_composition_stay_frozen():
    model = build_two_stage_classifier(None, backbone="small_cnn", size=64)
    freeze_batch_norm(model)
    frozen = {layer.name for layer in model.layers if layer.weights and not layer.trainable}
    assert "logits" in frozen and all(n in frozen for n in ("cnn0_bn", "cnn5_bn"))
    assert all(layer.trainable for layer in model.layers if isinstance(layer, keras.layers.Conv2D))


def test_a_quality_95_jpeg_copy_changes_a_film_by_under_a_grey_level():
    y, x = np.mgrid[0:96, 0:96]
    films = np.stack([(x * 2 + y).clip(0, 255), (255 - x * 2).clip(0, 255)]).astype(np.uint8)
    stored = jpeg_round_trip(films, 95)
    assert stored.shape == films.shape and stored.dtype == np.uint8
    assert 0 < np.abs(stored.astype(int) - films).mean() < 1.0
