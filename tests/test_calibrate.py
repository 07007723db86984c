"""Calibration and decision thresholds fitted on validation logits."""

from __future__ import annotations

import numpy as np

from training.calibrate import any_fracture_threshold, expected_calibration_error, fit_class_weights, fit_temperature
from utils.core.inference import calibrated_probabilities


def overconfident_logits(n=3000, seed=0):
    """Labels drawn from softmax(z), logits reported as 3 z: a temperature of 3 undoes it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    p = calibrated_probabilities(z, 1.0)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return 3 * z, labels


def test_temperature_recovers_overconfidence_and_lowers_ece():
    logits, labels = overconfident_logits()
    temperature = fit_temperature(logits, labels)
    assert 2.5 < temperature < 3.5
    before = expected_calibration_error(calibrated_probabilities(logits, 1.0), labels)
    after = expected_calibration_error(calibrated_probabilities(logits, temperature), labels)
    assert after < before / 2 and after < 0.05


def test_any_fracture_threshold_reaches_the_recall():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 1000)
    p_any = np.clip(0.3 * (labels > 0) + rng.uniform(0, 0.7, 1000), 0, 1)
    probs = np.stack([1 - p_any, p_any / 2, p_any / 2], axis=1)
    threshold = any_fracture_threshold(probs, labels, target_recall=0.95)
    recall = ((p_any >= threshold) & (labels > 0)).sum() / (labels > 0).sum()
    assert recall >= 0.95


def test_class_weights_help_a_rare_class():
    rng = np.random.default_rng(2)
    labels = np.array([0] * 900 + [2] * 100)
    probs = np.zeros((1000, 3))
    probs[:, 2] = np.where(labels == 2, rng.uniform(0.2, 0.45, 1000), rng.uniform(0.0, 0.25, 1000))
    probs[:, 1] = 0.05
    probs[:, 0] = 1 - probs[:, 1] - probs[:, 2]
    weights = fit_class_weights(probs, labels)
    assert weights[0] == 1.0 and weights[2] > 1.0
    recall_rare = (np.argmax(probs * weights, axis=1)[labels == 2] == 2).mean()
    assert recall_rare > 0.8


def test_uncertainty_thresholds_reach_the_covered_accuracy():
    from training.calibrate import fit_uncertainty_thresholds
    from utils.core.inference import decide

    logits, labels = overconfident_logits(n=2000, seed=3)
    probs = calibrated_probabilities(logits, fit_temperature(logits, labels))
    preset = {"class_weights": None, "any_fracture_threshold": None}
    thresholds = fit_uncertainty_thresholds(probs, labels, preset, target_accuracy=0.85)
    decisions = [decide(p, dict(preset, **thresholds)) for p in probs]
    kept = ~np.array([u for _, u in decisions])
    predicted = np.array([["healthy", "fractured", "beyond_repair"].index(label) for label, _ in decisions])
    assert (predicted[kept] == labels[kept]).mean() >= 0.85
    assert (predicted == labels).mean() < 0.85  # the flag had work to do
    assert thresholds["val_coverage"] == kept.mean() and 0.05 < kept.mean() < 1.0
