"""The record a prediction produces, and the columns every writer (JSONL, CSV, Parquet) uses.

One `PredictionRecord` per input: the app, the CLI's writers, the PDF, the DICOM SR, Ray and
PACS all build it here and serialise it with `as_dict()` (the JSON record) or `csv_row()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from utils.core.inference import CLASSES

CSV_COLUMNS = (
    ["path", "label"]
    + [f"p_{c}" for c in CLASSES]
    + ["uncertain", "not_xray", "warnings", "error", "verdict", "review_reasons"]
)
# Written by the CSV writer between warnings; a record read back from CSV is split on it.
WARNING_SEPARATOR = " | "
# Between the review reason codes in the CSV (the JSON record keeps them as a list).
REASON_SEPARATOR = ";"


@dataclass(frozen=True)
class PredictionRecord:
    """What a prediction says about one input, under one decision preset.

    `label` is the class the model leans to; `verdict` is what the film is called (a class,
    "needs_review" or "not_a_radiograph"; None for an input that could not be read), and
    `review_reasons` why a reader must decide (utils.core.review). `uncertain` is true exactly
    when there is a review reason."""

    path: str
    label: str | None
    probabilities: dict[str, float] | None
    uncertain: bool
    not_xray: bool  # the guard flagged it (the reason is among the warnings)
    warnings: tuple[str, ...] = ()
    error: str | None = None
    verdict: str | None = None
    review_reasons: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """The JSON record, key order as written by every writer."""
        return {
            "path": self.path,
            "label": self.label,
            "probabilities": self.probabilities,
            "uncertain": self.uncertain,
            "not_xray": self.not_xray,
            "warnings": list(self.warnings),
            "error": self.error,
            "verdict": self.verdict,
            "review_reasons": list(self.review_reasons),
        }

    def csv_row(self) -> dict[str, str]:
        probs = self.probabilities or {}
        return {
            "path": self.path,
            "label": self.label or "",
            **{f"p_{c}": f"{probs[c]:.6f}" if c in probs else "" for c in CLASSES},
            "uncertain": str(self.uncertain).lower(),
            "not_xray": str(self.not_xray).lower(),
            "warnings": WARNING_SEPARATOR.join(self.warnings),
            "error": self.error or "",
            "verdict": self.verdict or "",
            "review_reasons": REASON_SEPARATOR.join(self.review_reasons),
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> PredictionRecord:
        """A JSON record (or one extended with more keys, as PACS records are) as the type."""
        warnings = record.get("warnings") or ()
        reasons = record.get("review_reasons") or ()
        return cls(
            path=str(record["path"]),
            label=record.get("label") or None,
            probabilities=dict(record["probabilities"]) if record.get("probabilities") else None,
            uncertain=bool(record.get("uncertain")),
            not_xray=bool(record.get("not_xray")),
            warnings=(warnings,) if isinstance(warnings, str) else tuple(warnings),
            error=record.get("error") or None,
            verdict=record.get("verdict") or None,
            review_reasons=tuple(reasons.split(REASON_SEPARATOR)) if isinstance(reasons, str) else tuple(reasons),
        )


def csv_row(record: Mapping[str, Any]) -> dict[str, str]:
    """A JSON record as one CSV row (the CSV columns)."""
    return PredictionRecord.from_dict(record).csv_row()
