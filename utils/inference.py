"""Model input, calibrated probabilities and the decision rule shared by app, CLI and evaluation."""

from __future__ import annotations

import numpy as np

CLASSES = ("healthy", "fractured", "beyond_repair")


def to_model_input(batch_uint8: np.ndarray) -> np.ndarray:
    """(N, S, S, 1) uint8 from `preprocess` -> (N, S, S, 3) float32 in [0, 1] (the net saw x/255)."""
    x = np.asarray(batch_uint8, dtype=np.float32) / 255.0
    return np.repeat(x, 3, axis=-1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def calibrated_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / float(temperature))


def decide(probs: np.ndarray, preset: dict) -> tuple[str, bool]:
    """(label, uncertain) for one image's calibrated probabilities under a decision preset.

    preset["class_weights"]: each probability is multiplied by its weight before comparing
    (1 / training prior gives the balanced-error rule, so rare classes are not drowned out);
    absent means plain argmax. preset["any_fracture_threshold"]: when set, P(fractured) +
    P(beyond_repair) at or above it means a fracture (the higher-weighted fracture class),
    below it means healthy. preset["min_confidence"] / preset["min_margin"]: a verdict whose
    own calibrated probability, or whose lead over the next most probable class, is below
    the threshold is flagged uncertain (thresholds chosen on validation).
    """
    probs = np.asarray(probs, dtype=np.float64)
    scores = probs * np.asarray(preset.get("class_weights") or np.ones(len(probs)), dtype=np.float64)
    threshold = preset.get("any_fracture_threshold")
    if threshold is None:
        index = int(np.argmax(scores))
    elif probs[1] + probs[2] >= threshold:
        index = 1 + int(np.argmax(scores[1:]))
    else:
        index = 0
    return CLASSES[index], is_uncertain(probs, index, preset)


def verdict_margin(probs: np.ndarray, index: int) -> float:
    """The verdict's probability minus the largest other one (negative when a weighted
    rule picked a class that is not the most probable)."""
    return float(probs[index] - np.max(np.delete(probs, index)))


def is_uncertain(probs: np.ndarray, index: int, preset: dict) -> bool:
    return bool(probs[index] < preset.get("min_confidence", 0.0)
                or verdict_margin(probs, index) < preset.get("min_margin", float("-inf")))
