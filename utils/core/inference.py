"""Model input, calibrated probabilities and the decision rule shared by app, CLI and evaluation."""

from __future__ import annotations

from typing import Any

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


def decide(probs: np.ndarray, preset: dict[str, Any]) -> tuple[str, bool]:
    """(label, uncertain) for one image's calibrated probabilities under a decision preset
    (decide_with_reasons, with its reasons reduced to "any")."""
    label, reasons = decide_with_reasons(probs, preset)
    return label, bool(reasons)


def decide_with_reasons(probs: np.ndarray, preset: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """(label, review reasons) for one image's calibrated probabilities under a decision preset.

    A preset with rule "two_stage" follows the model's two stages (decide_two_stage). Older
    presets weigh the classes: preset["class_weights"] multiplies each probability before
    comparing (absent: plain argmax); preset["any_fracture_threshold"], when set, calls a
    fracture at P(fractured) + P(beyond_repair) at or above it; preset["min_confidence"] /
    preset["min_margin"] flag a verdict near its threshold when its probability, or its lead
    over the next class, is below them (all chosen on validation).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if preset.get("rule") == "two_stage":
        return decide_two_stage(probs, preset)
    scores = probs * np.asarray(preset.get("class_weights") or np.ones(len(probs)), dtype=np.float64)
    threshold = preset.get("any_fracture_threshold")
    if threshold is None:
        index = int(np.argmax(scores))
    elif probs[1] + probs[2] >= threshold:
        index = 1 + int(np.argmax(scores[1:]))
    else:
        index = 0
    return CLASSES[index], ("near_threshold",) if is_uncertain(probs, index, preset) else ()


def logit(p: float, eps: float = 1e-6) -> float:
    p = min(max(float(p), eps), 1 - eps)
    return float(np.log(p / (1 - p)))


def decide_two_stage(probs: np.ndarray, preset: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """First fracture or not: P(any fracture) against preset["fracture_threshold"] (at or
    above: a fracture). Then, for a fracture only, its severity: P(beyond_repair | fracture)
    against preset["severity_threshold"]. Review reasons: "near_threshold" when P(any
    fracture) is within preset["fracture_band"] of the threshold, "severity_margin" when a
    fracture's severity is within preset["severity_margin"] of its threshold (both on the
    logit scale). A film whose most probable class is healthy is never called beyond repair
    (at most fractured)."""
    p_any = float(probs[1] + probs[2])
    threshold = float(preset["fracture_threshold"])
    near = abs(logit(p_any) - logit(threshold)) < float(preset.get("fracture_band", 0.0))
    reasons: tuple[str, ...] = ("near_threshold",) if near else ()
    if p_any < threshold:
        return CLASSES[0], reasons
    p_severe = float(probs[2] / max(p_any, 1e-12))
    severity_threshold = float(preset.get("severity_threshold", 0.5))
    severe = p_severe >= severity_threshold and int(np.argmax(probs)) != 0
    if abs(logit(p_severe) - logit(severity_threshold)) < float(preset.get("severity_margin", 0.0)):
        reasons += ("severity_margin",)
    return CLASSES[2] if severe else CLASSES[1], reasons


def verdict_margin(probs: np.ndarray, index: int) -> float:
    """The verdict's probability minus the largest other one (negative when a weighted
    rule picked a class that is not the most probable)."""
    return float(probs[index] - np.max(np.delete(probs, index)))


def is_uncertain(probs: np.ndarray, index: int, preset: dict[str, Any]) -> bool:
    return bool(
        probs[index] < preset.get("min_confidence", 0.0)
        or verdict_margin(probs, index) < preset.get("min_margin", float("-inf"))
    )
