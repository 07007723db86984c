"""Is this film inside what the model was validated on? Who the patient is, which body part,
and whether the image holds enough pixels, from the film's own header or from the user.

The model was trained and validated on adults' limb radiographs (FracAtlas: hand to shoulder,
hip, leg; web figures of limb fractures). Outside that, a verdict needs review. A DICOM header
wins over what the user says; JPEG and PNG carry neither age nor body part, so the user's
answer (`population`) is all there is. Ages are compared, never shown or logged.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

ADULT_AGE_YEARS = 18.0
POPULATIONS = ("adult", "child", "unknown")
# DICOM BodyPartExamined defined terms (PS3.16 CID 4031) and common free-text words for the
# parts the training films show: the upper limb from shoulder to finger, the hip, the lower
# limb from thigh to toe. Matched as words inside the normalised header value.
VALIDATED_BODY_PARTS = (
    "SHOULDER",
    "CLAVICLE",
    "SCAPULA",
    "ARM",
    "HUMERUS",
    "ELBOW",
    "FOREARM",
    "RADIUS",
    "ULNA",
    "WRIST",
    "HAND",
    "FINGER",
    "THUMB",
    "HIP",
    "PELVIS",
    "FEMUR",
    "THIGH",
    "KNEE",
    "PATELLA",
    "LEG",
    "TIBIA",
    "FIBULA",
    "ANKLE",
    "FOOT",
    "HEEL",
    "CALCANEUS",
    "TOE",
    "EXTREMITY",
    "LIMB",
)
AGE_UNITS_IN_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}
AGE_STRING = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")


@dataclass(frozen=True)
class InputLimits:
    """The smallest film and the most elongated one the model was validated on (from the
    training and validation films; metadata.json "review" -> "input_limits")."""

    min_short_side: int
    max_aspect_ratio: float

    @classmethod
    def from_metadata(cls, block: dict[str, Any] | None) -> InputLimits | None:
        if not block:
            return None
        return cls(int(block["min_short_side"]), float(block["max_aspect_ratio"]))

    def problem(self, height: int, width: int) -> str | None:
        """A sentence when the image is outside the limits, else None."""
        short, long = sorted((height, width))
        if short < self.min_short_side:
            return (
                f"The image is {width} x {height} px; the model was validated on films at least "
                f"{self.min_short_side} px on the shorter side, so fine fracture lines may be lost."
            )
        if long / max(short, 1) > self.max_aspect_ratio:
            return (
                f"The image is {width} x {height} px, more elongated than any film the model was "
                f"validated on (at most {self.max_aspect_ratio:.1f} : 1): it may be cropped or stretched."
            )
        return None


def parse_population(value: str | None) -> str:
    """The user's answer as one of POPULATIONS ("unknown" when not given)."""
    text = (value or "unknown").strip().lower()
    if text not in POPULATIONS:
        raise ValueError(f"population must be one of {', '.join(POPULATIONS)}, not {value!r}")
    return text


def parse_age_string(value: object) -> float | None:
    """A DICOM Age String ("009Y", "006M", "010W", "020D") in years; None when malformed."""
    match = AGE_STRING.match(str(value or ""))
    if match is None:
        return None
    return int(match.group(1)) * AGE_UNITS_IN_YEARS[match.group(2)]


def parse_date(value: object) -> dt.date | None:
    try:
        return dt.datetime.strptime(str(value or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def age_in_years(ds: Dataset) -> float | None:
    """PatientAge, or the years from PatientBirthDate to StudyDate (else AcquisitionDate);
    None when the header gives neither, or gives nonsense (a birth after the study)."""
    age = parse_age_string(ds.get("PatientAge"))
    if age is not None:
        return age
    born = parse_date(ds.get("PatientBirthDate"))
    taken = parse_date(ds.get("StudyDate")) or parse_date(ds.get("AcquisitionDate"))
    if born is None or taken is None or taken < born:
        return None
    return (taken - born).days / 365.25


def body_part(ds: Dataset) -> str | None:
    """BodyPartExamined, upper case and trimmed; None when absent or empty."""
    value = str(ds.get("BodyPartExamined") or "").strip().upper()
    return value or None


def is_validated_body_part(part: str) -> bool:
    words = re.split(r"[^A-Z]+", part.upper())
    return any(word.startswith(known) for word in words if word for known in VALIDATED_BODY_PARTS)


def is_child(age_years: float | None, population: str) -> bool:
    """The header's age when it has one (it wins), else the user's answer."""
    if age_years is not None:
        return age_years < ADULT_AGE_YEARS
    return population == "child"


def intended_use_reasons(age_years: float | None, part: str | None, population: str) -> list[str]:
    """Review reasons for a patient or a body part outside what the model was validated on."""
    reasons = []
    if is_child(age_years, population):
        reasons.append("child")
    if part is not None and not is_validated_body_part(part):
        reasons.append("body_part")
    return reasons
