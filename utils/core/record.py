"""The record a prediction produces, and the columns every writer (JSONL, CSV, Parquet) uses."""

from __future__ import annotations

from typing import Any

from utils.core.inference import CLASSES

CSV_COLUMNS = ["path", "label"] + [f"p_{c}" for c in CLASSES] + ["uncertain", "not_xray", "warnings", "error"]


def csv_row(record: dict[str, Any]) -> dict[str, Any]:
    """A prediction record (utils.core.classifier.Prediction.as_record) as one CSV row."""
    probs = record.get("probabilities") or {}
    return {
        "path": record["path"],
        "label": record["label"] or "",
        **{f"p_{c}": f"{probs[c]:.6f}" if c in probs else "" for c in CLASSES},
        "uncertain": str(bool(record["uncertain"])).lower(),
        "not_xray": str(bool(record.get("not_xray"))).lower(),
        "warnings": " | ".join(record["warnings"]),
        "error": record["error"] or "",
    }
