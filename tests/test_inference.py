"""The decision rule shared by app, CLI and evaluation."""

from __future__ import annotations

import numpy as np

from utils.core.inference import calibrated_probabilities, decide


def test_plain_argmax_without_weights():
    assert decide(np.array([0.6, 0.3, 0.1]), {}) == ("healthy", False)


def test_class_weights_lift_a_rare_class():
    preset = {"class_weights": [0.05, 0.1, 0.85], "min_confidence": 0.5}
    assert decide(np.array([0.6, 0.25, 0.15]), preset) == ("beyond_repair", True)


def test_fracture_threshold_overrides_healthy_majority():
    preset = {"any_fracture_threshold": 0.2, "min_confidence": 0.0}
    assert decide(np.array([0.7, 0.25, 0.05]), preset)[0] == "fractured"
    assert decide(np.array([0.85, 0.1, 0.05]), preset)[0] == "healthy"


def test_temperature_softens_without_changing_the_order():
    logits = np.array([[2.0, 1.0, -1.0]])
    sharp, soft = calibrated_probabilities(logits, 0.5), calibrated_probabilities(logits, 2.0)
    assert sharp.argmax() == soft.argmax() == 0
    assert soft.max() < sharp.max() and np.allclose(soft.sum(), 1.0)


def test_small_lead_over_the_next_class_is_uncertain():
    preset = {"min_confidence": 0.4, "min_margin": 0.2}
    assert decide(np.array([0.52, 0.40, 0.08]), preset) == ("healthy", True)  # lead 0.12
    assert decide(np.array([0.70, 0.20, 0.10]), preset) == ("healthy", False)  # lead 0.50
    assert decide(np.array([0.38, 0.31, 0.31]), {"min_confidence": 0.4})[1] is True
