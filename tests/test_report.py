"""CSV and PDF builders."""

from __future__ import annotations

import csv
import io

import numpy as np
from pypdf import PdfReader

from utils.adapters.report import CSV_COLUMNS, build_pdf, records_to_csv

RECORD = {"path": "a.png", "label": "fractured", "verdict": "fractured", "review_reasons": [], "uncertain": False,
          "warnings": ["note"], "error": None,
          "probabilities": {"healthy": 0.2, "fractured": 0.7, "beyond_repair": 0.1}}
FAILED = {"path": "b.png", "label": None, "verdict": None, "review_reasons": [], "uncertain": False, "warnings": [],
          "error": "Bad file.",
          "probabilities": None}


def test_csv_has_one_row_per_record():
    rows = list(csv.DictReader(io.StringIO(records_to_csv([RECORD, FAILED]).decode())))
    assert list(rows[0]) == CSV_COLUMNS
    assert rows[0]["p_fractured"] == "0.700000" and rows[1]["error"] == "Bad file."


def test_pdf_one_page_per_entry_with_metadata_and_disclaimer():
    image = np.zeros((299, 299), np.uint8)
    entries = [dict(RECORD, name="a.png", model_input=image, overlay=np.zeros((299, 299, 3), np.uint8)),
               dict(FAILED, name="b.png", model_input=None, overlay=None),
               dict(RECORD, name="\u0436\u00e9.png", model_input=image, overlay=None)]
    metadata = {"name": "bone-xray", "version": "9.9", "sha256": "f" * 64}
    pdf = build_pdf(entries, metadata, "fracture_sensitive", reference="Ref \u2014 12")
    pages = PdfReader(io.BytesIO(pdf)).pages
    assert len(pages) == 3
    text = pages[0].extract_text()
    for expected in ("a.png", "v9.9", "f" * 64, "fracture sensitive", "Ref ? 12", "FRACTURED", "Not a medical device"):
        assert expected in text
