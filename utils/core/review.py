"""The one verdict a film gets, decided once: its kind, the class the model leans to, the
probability the decision was made on, and every reason a reader must decide instead.

Every output (the app, the CLI, the PDF, the DICOM SR, the history, PACS and Ray) shows this
value; none re-derives it. A verdict with any review reason is "needs review" (or "not a
radiograph"), never a class, and its probabilities are still given.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from utils.core.inference import CLASSES, decide_with_reasons

HEALTHY, FRACTURED, BEYOND_REPAIR = CLASSES
NEEDS_REVIEW = "needs_review"
NOT_A_RADIOGRAPH = "not_a_radiograph"
VERDICT_KINDS = (HEALTHY, FRACTURED, BEYOND_REPAIR, NEEDS_REVIEW, NOT_A_RADIOGRAPH)

# Why a reader must decide, in the order they are listed; the words finish "Needs review: ...".
REVIEW_REASONS: dict[str, str] = {
    NOT_A_RADIOGRAPH: "it does not look like a bone radiograph",
    "incomplete_image": "part of the image is missing (the file is cut short), so part of the film was never seen",
    "child": "children's films are outside what this model was validated on",
    "body_part": "this body part is outside what this model was validated on (limbs, shoulder and hip)",
    "image_too_small": "the image is too small to read a fracture reliably",
    "unlike_training_films": "the film is unlike the films the model was validated on "
    "(another hospital, framing or exposure), so the model cannot vouch for its answer",
    "near_threshold": "P(any fracture) is close to this preset's fracture threshold",
    "severity_margin": "the fracture's severity is close to this preset's severity threshold",
}

P_ANY_FRACTURE = "P(any fracture)"
P_SEVERE = "P(beyond repair | fracture)"


@dataclass(frozen=True)
class Verdict:
    """What the film is called, and why a reader must decide when it is not called anything."""

    kind: str  # one of VERDICT_KINDS
    label: str  # the class the model leans to under the preset
    reasons: tuple[str, ...]  # review reason codes (REVIEW_REASONS), empty for a class verdict
    basis: str  # the probability the decision was made on: P_ANY_FRACTURE or P_SEVERE
    basis_probability: float

    @property
    def uncertain(self) -> bool:
        return bool(self.reasons)

    def headline(self) -> str:
        """The probability beside the verdict word, e.g. "P(any fracture) 27%"."""
        return f"{self.basis} {self.basis_probability:.0%}"


def ordered_reasons(codes: Iterable[str]) -> tuple[str, ...]:
    """Known codes, once each, in REVIEW_REASONS order; an unknown code is an error."""
    given = set(codes)
    unknown = given - set(REVIEW_REASONS)
    if unknown:
        raise ValueError(f"unknown review reasons {sorted(unknown)}")
    return tuple(code for code in REVIEW_REASONS if code in given)


def decision_basis(label: str, probabilities: np.ndarray) -> tuple[str, float]:
    """The probability a two-stage decision was made on: P(any fracture) for healthy and
    fractured, P(beyond repair | fracture) for beyond repair."""
    p_any = float(probabilities[1] + probabilities[2])
    if label == BEYOND_REPAIR:
        return P_SEVERE, float(probabilities[2] / max(p_any, 1e-12))
    return P_ANY_FRACTURE, p_any


def decision_basis_of(label: str, probabilities: Mapping[str, float]) -> tuple[str, float]:
    """decision_basis for a record's probabilities by class name."""
    return decision_basis(label, np.array([probabilities[c] for c in CLASSES], dtype=np.float64))


def decide_verdict(
    probabilities: Mapping[str, float], preset: dict[str, Any], other_reasons: Iterable[str] = ()
) -> Verdict:
    """The verdict under a preset: the model's leaning and its own doubt (near a threshold),
    plus the reasons found in the film, the user's answers or the model's features."""
    probs = np.array([probabilities[c] for c in CLASSES], dtype=np.float64)
    label, threshold_reasons = decide_with_reasons(probs, preset)
    reasons = ordered_reasons([*threshold_reasons, *other_reasons])
    if NOT_A_RADIOGRAPH in reasons:
        kind = NOT_A_RADIOGRAPH
    elif reasons:
        kind = NEEDS_REVIEW
    else:
        kind = label
    basis, value = decision_basis(label, probs)
    return Verdict(kind=kind, label=label, reasons=reasons, basis=basis, basis_probability=value)


def reason_text(code: str) -> str:
    return REVIEW_REASONS[code]


def decision_sentence(verdict: Verdict, preset: dict[str, Any]) -> str:
    """Which threshold decided the class the model leans to, in words. Two-stage presets
    name the stage that decided (severity for beyond repair and fractured, the fracture
    threshold for healthy); older presets only say the class won."""
    if preset.get("rule") != "two_stage":
        return f"The model leans to {verdict.label.replace('_', ' ')}: the class this preset weighs highest."
    fracture = float(preset["fracture_threshold"])
    p_basis = verdict.basis_probability
    if verdict.label == HEALTHY:
        return f"{P_ANY_FRACTURE} {p_basis:.0%} is below this preset's fracture threshold ({fracture:.0%})."
    severity = float(preset.get("severity_threshold", 0.5))
    if verdict.label == BEYOND_REPAIR:
        return (
            f"A fracture ({P_ANY_FRACTURE} at or above {fracture:.0%}), and {P_SEVERE} "
            f"{verdict.basis_probability:.0%} is at or above this preset's severity threshold ({severity:.0%})."
        )
    return (
        f"{P_ANY_FRACTURE} {verdict.basis_probability:.0%} is at or above this preset's fracture threshold "
        f"({fracture:.0%}); its severity is below the beyond-repair threshold ({severity:.0%}), "
        "or the most probable class is healthy."
    )
