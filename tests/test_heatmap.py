"""Grad-CAM: the GradientTape reference, the closed form, and what serving returns agree."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import png_bytes, synthetic_radiograph
from training.gradcam import build_gradcam_model, make_gradcam_heatmap
from utils.core.heatmap import class_activation_maps, overlay_heatmap
from utils.core.inference import to_model_input
from utils.core.preprocess import preprocess


def test_served_heatmap_is_the_models_own_map_and_grad_cam_stays_the_reference(classifier):
    """A two-stage bundle serves its fracture map (the probability per cell, straight from the
    forward pass); a pooling + dense bundle serves the closed-form class maps. Either way
    Grad-CAM by GradientTape is computed for every class as the reference."""
    import keras

    from utils.core.engines import has_localisation

    model = classifier.bundle.model
    served = classifier.predict_bytes("x.png", png_bytes((synthetic_radiograph(seed=4) * 255).astype(np.uint8)))
    x = to_model_input(served.model_input[None, ..., None])
    grad_model = build_gradcam_model(model, "mixed7")
    activations = np.asarray(keras.Model(model.input, model.get_layer("mixed7").output)(x, training=False))[0]
    if has_localisation(model):
        cell_logits = np.asarray(keras.Model(model.input, model.get_layer("localisation_logit").output)(
            x, training=False))[0, ..., 0]
        own_map = 1.0 / (1.0 + np.exp(-cell_logits))
        for name in classifier.bundle.classes:  # one map, whatever the class
            np.testing.assert_allclose(served.heatmap(name), own_map, atol=2e-3)  # LiteRT or Keras
    else:
        closed_form = class_activation_maps(activations, model.get_layer("logits").get_weights()[0])
    for c, name in enumerate(classifier.bundle.classes):
        reference = make_gradcam_heatmap(x, grad_model, c)
        assert reference.shape == activations.shape[:2]
        # Scaled to a maximum of 1, or all zero when nothing in the image raises that class.
        assert reference.max() == pytest.approx(1.0) or reference.max() == 0.0
        if not has_localisation(model):
            np.testing.assert_allclose(closed_form[c], reference, atol=1e-4)
            np.testing.assert_allclose(served.heatmap(name), reference, atol=2e-3)


def test_heatmap_follows_the_structure(classifier):
    left = np.zeros((400, 400), np.float32) + 0.05
    right = left.copy()
    left[:, 60:120] = 0.8
    right[:, 280:340] = 0.8
    maps = [classifier.heatmap(preprocess(img)[..., 0], "fractured") for img in (left, right)]
    grid = tuple(classifier.bundle.model.get_layer("mixed7").output.shape[1:3])  # 17 x 17 at 299 px
    assert maps[0].shape == grid and not np.allclose(maps[0], maps[1])
    assert maps[0].min() >= 0 and maps[0].max() <= 1


def test_overlay_shape_and_opacity():
    gray = np.full((299, 299), 100, np.uint8)
    heat = np.zeros((17, 17), np.float32)
    assert overlay_heatmap(gray, heat, 0.0).tolist() == np.repeat(gray[..., None], 3, -1).tolist()
    assert overlay_heatmap(gray, heat, 0.5).shape == (299, 299, 3)
