"""CSV and PDF builders."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from pypdf import PdfReader

from utils.adapters.report import CSV_COLUMNS, build_pdf, records_to_csv, summary_lines

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


def test_pdf_a_summary_page_then_one_page_per_entry_with_metadata_and_disclaimer():
    image = np.zeros((299, 299), np.uint8)
    entries = [dict(RECORD, name="a.png", model_input=image, overlay=np.zeros((299, 299, 3), np.uint8)),
               dict(FAILED, name="b.png", model_input=None, overlay=None),
               dict(RECORD, name="\u0436\u00e9.png", model_input=image, overlay=None)]
    metadata = {"name": "bone-xray", "version": "9.9", "sha256": "f" * 64}
    pdf = build_pdf(entries, metadata, "fracture_sensitive", reference="Ref \u2014 12")
    pages = PdfReader(io.BytesIO(pdf)).pages
    assert len(pages) == 4
    summary = pages[0].extract_text()
    assert "3 films" in summary and "Ref \u2014 12" in summary and "fractured: 2" in summary
    assert "not classified: 1" in summary and "2. b.png: not classified (Bad file.)" in summary
    text = pages[1].extract_text()
    for expected in ("a.png", "v9.9", "f" * 64, "fracture sensitive", "Ref \u2014 12", "FRACTURED", "Not a medical device"):
        assert expected in text
    assert "\u0436\u00e9.png" in pages[3].extract_text()


def test_a_single_film_has_no_summary_page():
    pdf = build_pdf([dict(RECORD, name="a.png", model_input=None, overlay=None)], {"name": "m", "version": "1"}, "balanced")
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 1


def test_summary_lists_the_films_that_need_review_first_with_their_reasons():
    review = dict(RECORD, name="c.png", verdict="needs_review", review_reasons=["near_threshold"])
    entries = [dict(RECORD, name="a.png"), review, dict(FAILED, name="b.png")]
    totals, first = summary_lines(entries)
    assert totals == ["fractured: 1", "needs review: 1", "not classified: 1"]
    assert first[0].startswith("2. c.png: needs review (") and "threshold" in first[0]
    assert first[1] == "3. b.png: not classified (Bad file.)"


@pytest.mark.parametrize("text", [
    "Zo\u00eb M\u00fcller \u2013 \u674e\u96f7 \u2013 \u03a9mega",  # Latin, en dash, CJK, Greek
    "\u0623\u062d\u0645\u062f \u0645\u0631\u062d\u0628\u0627",  # Arabic, right to left
    "R\u00f6ntgen_\u674e\u96f7_knee.jpg",
    "\u3053\u3093\u306b\u3061\u306f \u0416\u0443\u043a",  # kana, Cyrillic
])
def test_pdf_gives_back_every_script_exactly(text):
    """Patients and files are named in every script: the PDF's text layer holds them unchanged."""
    metadata = {"name": "m", "version": "1", "sha256": "f" * 64}
    pdf = build_pdf([dict(RECORD, name=text, model_input=None, overlay=None)], metadata, "balanced", reference=text)
    page = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert f"File: {text}" in page and f"Study / patient reference: {text}" in page and "?" not in page


def test_the_cjk_font_is_loaded_only_for_text_that_needs_it():
    from utils.adapters.report import needs_fallback

    assert not needs_fallback(["Zo\u00eb M\u00fcller \u2013 \u03a9mega", "\u0623\u062d\u0645\u062f", "knee.png"])
    assert needs_fallback(["R\u00f6ntgen_\u674e\u96f7_knee.jpg"]) and needs_fallback(["\u3053\u3093"])
