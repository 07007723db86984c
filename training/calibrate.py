"""Temperature scaling and decision thresholds, fitted on validation logits only."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.metrics import balanced_accuracy_score, roc_curve

from utils.core.inference import CLASSES, calibrated_probabilities, decide, logit, verdict_margin

# The fracture-sensitive preset: recall of "any fracture" on validation at least this.
SENSITIVE_TARGET_RECALL = 0.95
# Verdicts not flagged "uncertain" should be right at least this often on validation.
TARGET_COVERED_ACCURACY = 0.90
CONFIDENCE_GRID = np.round(np.arange(0.34, 0.96, 0.02), 2)
MARGIN_GRID = np.round(np.arange(-0.2, 0.81, 0.02), 2)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    probs = calibrated_probabilities(logits, temperature)
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, np.exp(log_t)),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def any_fracture_threshold(
    probs: np.ndarray, labels: np.ndarray, target_recall: float = SENSITIVE_TARGET_RECALL
) -> float:
    """Largest threshold on P(fractured) + P(beyond_repair) whose recall of any fracture on
    these (validation) images is at least target_recall."""
    p_any = probs[:, 1] + probs[:, 2]
    positives = np.sort(p_any[labels > 0])
    if positives.size == 0:
        return 0.5
    index = int(np.floor((1.0 - target_recall) * positives.size))
    return float(positives[min(index, positives.size - 1)])


# Decision weights stay within 4x of the plain argmax: a 20x weight on a rare class turns any
# unfamiliar image whose probabilities are spread out into that class.
CLASS_WEIGHT_GRID = np.geomspace(0.25, 4.0, 17)


def fit_class_weights(probs: np.ndarray, labels: np.ndarray, grid=CLASS_WEIGHT_GRID) -> list[float]:
    """Decision weights [1, a, b] maximising balanced accuracy of argmax(probs * weights) on
    these (validation) images; ties go to the weights closest to 1 (the plain argmax)."""
    best, best_key = [1.0, 1.0, 1.0], None
    for a in grid:
        for b in grid:
            weights = np.array([1.0, a, b])
            with warnings.catch_warnings():  # some weights predict a class absent from labels
                warnings.simplefilter("ignore")
                score = balanced_accuracy_score(labels, np.argmax(probs * weights, axis=1))
            key = (round(score, 6), -abs(np.log(a)) - abs(np.log(b)))
            if best_key is None or key > best_key:
                best, best_key = weights.tolist(), key
    return [round(w, 4) for w in best]


def fit_uncertainty_thresholds(
    probs: np.ndarray,
    labels: np.ndarray,
    preset: dict,
    target_accuracy: float = TARGET_COVERED_ACCURACY,
    min_covered: int = 10,
) -> dict:
    """min_confidence and min_margin for a preset, chosen on these (validation) images: the
    pair that keeps the most verdicts (coverage) while the kept ones are right at least
    target_accuracy of the time. When no pair reaches it, the most accurate pair with at
    least min_covered kept images."""
    base = dict(preset, min_confidence=0.0, min_margin=float("-inf"))
    verdicts = np.array([CLASSES.index(decide(p, base)[0]) for p in probs])
    confidence = probs[np.arange(len(probs)), verdicts]
    margin = np.array([verdict_margin(p, v) for p, v in zip(probs, verdicts)])
    correct = verdicts == labels
    best, best_key = (float(CONFIDENCE_GRID[0]), float(MARGIN_GRID[0])), None
    for c in CONFIDENCE_GRID:
        for m in MARGIN_GRID:
            kept = (confidence >= c) & (margin >= m)
            if kept.sum() < min_covered:
                continue
            accuracy = correct[kept].mean()
            key = (
                accuracy >= target_accuracy,
                kept.mean() if accuracy >= target_accuracy else accuracy,
                -c - m,
            )  # ties: the milder thresholds
            if best_key is None or key > best_key:
                best, best_key = (float(c), float(m)), key
    kept = (confidence >= best[0]) & (margin >= best[1])
    return {
        "min_confidence": best[0],
        "min_margin": best[1],
        "target_val_covered_accuracy": target_accuracy,
        "val_coverage": float(kept.mean()),
        "val_covered_accuracy": float(correct[kept].mean()) if kept.any() else float("nan"),
    }


# The two-stage verdict's uncertainty band and severity margin (logit units around their
# thresholds) are searched on these grids. The severity grade is held to a lower covered
# accuracy, and its margin stays narrow: the beyond-repair examples are few and web-only, so a
# wide margin would mark nearly every fracture uncertain for a grade that is a demonstration.
BAND_GRID = np.round(np.arange(0.0, 3.01, 0.05), 2)
SEVERITY_MARGIN_GRID = np.round(np.arange(0.0, 1.01, 0.05), 2)
SEVERITY_TARGET_ACCURACY = 0.80


def youden_threshold(positive: np.ndarray, score: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity of `score >= threshold`."""
    fpr, tpr, thresholds = roc_curve(positive, score)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def band_coverage(p_any: np.ndarray, positive: np.ndarray, threshold: float, band: float) -> tuple[float, float]:
    """(coverage, covered accuracy) of the fracture call outside a logit band around the threshold."""
    kept = np.abs(np.array([logit(p) for p in p_any]) - logit(threshold)) >= band
    accuracy = float(((p_any >= threshold) == positive)[kept].mean()) if kept.any() else float("nan")
    return float(kept.mean()), accuracy


def smallest_band(
    p_any: np.ndarray, positive: np.ndarray, threshold: float, target_accuracy: float = TARGET_COVERED_ACCURACY
) -> tuple[float, float, float]:
    """(band, coverage, covered accuracy): the narrowest logit band around the threshold whose
    films outside it are called fracture / no fracture right at least target_accuracy of the
    time; the widest band on the grid when none reaches it."""
    for band in BAND_GRID:
        coverage, accuracy = band_coverage(p_any, positive, threshold, band)
        if coverage > 0 and accuracy >= target_accuracy:
            break
    return float(band), coverage, accuracy


def severity_rule(p_severe: np.ndarray, severe: np.ndarray, target_accuracy: float = SEVERITY_TARGET_ACCURACY) -> dict:
    """Severity threshold (Youden, among fractures) and the narrowest logit margin around it
    whose kept fractures are graded right at least target_accuracy of the time (else the widest)."""
    threshold = youden_threshold(severe, p_severe) if len(set(severe)) > 1 else 0.5
    distance = np.abs(np.array([logit(p) for p in p_severe]) - logit(threshold))
    for margin in SEVERITY_MARGIN_GRID:
        kept = distance >= margin
        if kept.any() and ((p_severe[kept] >= threshold) == severe[kept]).mean() >= target_accuracy:
            break
    return {"severity_threshold": threshold, "severity_margin": float(margin)}


def two_stage_presets(probs: np.ndarray, labels: np.ndarray, clinical: np.ndarray) -> dict[str, dict]:
    """The two presets of the two-stage verdict, fitted on validation: the fracture threshold
    on the clinical (FracAtlas) films, where both answers come from the same hospitals (the
    balanced one maximises sensitivity + specificity, the fracture-sensitive one keeps
    SENSITIVE_TARGET_RECALL of the fractures), the band around it, and the severity rule among
    all validation fractures."""
    p_any = probs[:, 1] + probs[:, 2]
    positive = fractures = labels > 0
    severity = severity_rule(probs[fractures, 2] / np.maximum(p_any[fractures], 1e-12), labels[fractures] == 2)
    thresholds = {
        "balanced": youden_threshold(positive[clinical], p_any[clinical]),
        "fracture_sensitive": any_fracture_threshold(probs[clinical], labels[clinical]),
    }
    presets = {}
    # The fracture-sensitive threshold sits low on purpose (it accepts false alarms), so its
    # band is the balanced one's width: accuracy there would ask for a band around everything.
    band = smallest_band(p_any[clinical], positive[clinical], thresholds["balanced"])[0]
    for name, threshold in thresholds.items():
        coverage, accuracy = band_coverage(p_any[clinical], positive[clinical], threshold, band)
        presets[name] = {
            "rule": "two_stage",
            "fracture_threshold": threshold,
            "fracture_band": band,
            **severity,
            "threshold_fitted_on": "FracAtlas validation films",
            "target_val_covered_accuracy": TARGET_COVERED_ACCURACY,
            "target_val_covered_severity_accuracy": SEVERITY_TARGET_ACCURACY,
            "val_coverage": coverage,
            "val_covered_accuracy": accuracy,
        }
    presets["fracture_sensitive"]["target_val_recall_any_fracture"] = SENSITIVE_TARGET_RECALL
    return presets
