"""Result tables (CSV) and PDF reports, built in memory."""

from __future__ import annotations

import csv
import datetime as dt
import functools
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from utils.core.classifier import Prediction
from utils.core.heatmap import heatmap_caption
from utils.core.inference import CLASSES
from utils.core.record import CSV_COLUMNS, csv_row
from utils.core.review import decision_basis_of, reason_text
from utils.core.verdict import NOT_CLASSIFIED, verdict_style, verdict_words

DISCLAIMER = (
    "Educational and triage aid only. Not a medical device and not for diagnosis: "
    "a qualified clinician must read every image."
)


def report_entry(prediction: Prediction, record: dict[str, Any], overlay: np.ndarray | None) -> dict[str, Any]:
    """One page of the PDF: the record (under the preset the report is for), the film's name,
    the model input and the heatmap overlay. The app and the CLI build their pages here."""
    return {**record, "name": prediction.name, "model_input": prediction.model_input, "overlay": overlay}


def records_to_csv(records: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(csv_row(r) for r in records)
    return buffer.getvalue().encode("utf-8")


# Patients and files are named in every script: DejaVu Sans covers Latin, Greek, Cyrillic,
# Arabic, Hebrew and the typographic marks; Droid Sans Fallback takes the CJK ideographs and
# kana. Both are free fonts bundled beside this module (licences in fonts/).
FONT_DIR = Path(__file__).resolve().parent / "fonts"
FONT = "DejaVu"
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
FALLBACK_FONT, FALLBACK_FILE = "DroidFallback", "DroidSansFallbackFull.ttf"


@functools.cache
def main_font_characters() -> frozenset[int]:
    """The code points the main font draws (read once per process)."""
    from fontTools.ttLib import TTFont  # noqa: PLC0415  (fpdf2's own dependency; only a report needs it)

    return frozenset(TTFont(FONT_DIR / FONT_FILES[""], lazy=True).getBestCmap())


def needs_fallback(texts: list[str]) -> bool:
    """Whether any text has a character the main font lacks (CJK mostly). The fallback font
    takes ten times as long to load, so a report loads it only then."""
    covered = main_font_characters()
    return any(ord(c) not in covered for text in texts for c in text if not c.isspace())


def new_pdf(texts: list[str] = []) -> Any:  # noqa: B006  (read, never changed)
    """An A4 FPDF with the Unicode fonts loaded: FONT, and FALLBACK_FONT when `texts` (what
    the report will print from the user: names, references, messages) need it."""
    from fpdf import FPDF  # noqa: PLC0415  (fpdf2 adds about 0.3 s to every start; only a report needs it)

    pdf = FPDF(format="A4")
    for style, file in FONT_FILES.items():
        pdf.add_font(FONT, style, FONT_DIR / file)
    if needs_fallback(texts):
        pdf.add_font(FALLBACK_FONT, "", FONT_DIR / FALLBACK_FILE)
        pdf.set_fallback_fonts([FALLBACK_FONT], exact_match=False)
    pdf.set_text_shaping(True)  # joins Arabic letters and lays right-to-left text out (HarfBuzz)
    pdf.set_auto_page_break(auto=False)
    pdf.set_title("Bone X-ray Classifier report")
    return pdf


def paragraph(pdf: Any, height: float, text: str) -> None:
    """Text over the page's width, wrapped, with the next line at the left margin below it."""
    pdf.multi_cell(0, height, text, new_x="LMARGIN", new_y="NEXT")


def _png_image(array: np.ndarray):
    return Image.fromarray(array)


def build_pdf(
    entries: list[dict], metadata: dict, preset_name: str, reference: str = "", created: dt.datetime | None = None
) -> bytes:
    """One page per entry. An entry: a record (name, label, verdict, review_reasons,
    probabilities, warnings, error), model_input ((S, S) uint8 or None) and overlay ((S, S, 3)
    uint8 heatmap overlay or None)."""
    created = created or dt.datetime.now(dt.UTC)
    stamp = created.strftime("%Y-%m-%d %H:%M:%S UTC")
    pdf = new_pdf([reference, *(text for entry in entries for text in user_texts(entry))])
    if len(entries) > 1:
        write_summary(pdf, entries, metadata, preset_name, [f"Created: {stamp}", *reference_lines(reference)])
    for entry in entries:
        pdf.add_page()
        pdf.set_font(FONT, "B", 16)
        pdf.cell(0, 10, "Bone X-ray Classifier report", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font(FONT, "", 10)
        lines = [
            f"File: {entry['name']}",
            f"Created: {stamp}",
            f"Model: {metadata.get('name', '?')} v{metadata.get('version', '?')}",
            f"Model sha256: {metadata.get('sha256', '?')}",
            f"Decision preset: {preset_name.replace('_', ' ')}",
        ]
        lines[1:1] = reference_lines(reference)
        for line in lines:
            paragraph(pdf, 5, line)
        top = pdf.get_y() + 4
        if entry.get("model_input") is not None:
            pdf.image(_png_image(entry["model_input"]), x=10, y=top, w=90)
        if entry.get("overlay") is not None:
            pdf.image(_png_image(entry["overlay"]), x=110, y=top, w=90)
            pdf.set_xy(110, top + 91)
            pdf.set_font(FONT, "", 8)
            pdf.cell(90, 4, heatmap_caption(metadata.get("heatmap_kind", "Grad-CAM")).capitalize())
        pdf.set_xy(10, top + 100)
        pdf.set_font(FONT, "B", 13)
        if entry.get("error"):
            paragraph(pdf, 7, f"Not classified: {entry['error']}")
        else:
            write_verdict(pdf, entry)
        pdf.set_font(FONT, "", 9)
        for warning in entry.get("warnings") or []:
            paragraph(pdf, 5, f"Note: {warning}")
        pdf.set_xy(10, 270)
        pdf.set_font(FONT, "B", 9)
        paragraph(pdf, 5, DISCLAIMER)
    return bytes(pdf.output())


def summary_lines(entries: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(counts by verdict, one line per film that needs review or could not be read, with why;
    films are numbered in the order of their pages)."""
    counts = Counter(NOT_CLASSIFIED if e.get("error") else verdict_words(e.get("verdict")) for e in entries)
    totals = [f"{word}: {n}" for word, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    first = []
    for number, entry in enumerate(entries, start=1):
        if entry.get("error"):
            first.append(f"{number}. {entry['name']}: not classified ({entry['error']})")
        elif entry.get("review_reasons"):
            why = "; ".join(reason_text(r) for r in entry["review_reasons"])
            first.append(f"{number}. {entry['name']}: {verdict_words(entry.get('verdict'))} ({why})")
    return totals, first


def user_texts(entry: dict[str, Any]) -> list[str]:
    """What a page prints that came from outside the project: the film's name, its messages."""
    return [str(entry.get("name") or ""), str(entry.get("error") or ""), *map(str, entry.get("warnings") or [])]


def reference_lines(reference: str) -> list[str]:
    return [f"Study / patient reference: {reference.strip()}"] if reference.strip() else []


def write_summary(pdf: Any, entries: list[dict[str, Any]], metadata: dict, preset_name: str, head: list[str]) -> None:
    """A first page for a batch: how many films got each verdict, then the films a reader must
    look at first (those that need review or could not be read), numbered as their pages follow."""
    totals, first = summary_lines(entries)
    pdf.add_page()
    pdf.set_auto_page_break(auto=True, margin=20)  # a long list runs onto further pages
    pdf.set_font(FONT, "B", 16)
    pdf.cell(0, 10, f"Bone X-ray Classifier report: {len(entries)} films", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font(FONT, "", 10)
    for line in head:
        paragraph(pdf, 5, line)
    paragraph(pdf, 5, f"Model: {metadata.get('name', '?')} v{metadata.get('version', '?')}")
    paragraph(pdf, 5, f"Decision preset: {preset_name.replace('_', ' ')}")
    pdf.ln(3)
    pdf.set_font(FONT, "B", 12)
    paragraph(pdf, 7, "Verdicts: " + ", ".join(totals))
    pdf.ln(2)
    paragraph(pdf, 7, f"Look at these first ({len(first)}):" if first else "No film needs review.")
    pdf.set_font(FONT, "", 9)
    for line in first:
        paragraph(pdf, 5, line)
    pdf.ln(3)
    pdf.set_font(FONT, "B", 9)
    paragraph(pdf, 5, DISCLAIMER)
    pdf.set_auto_page_break(auto=False)


def verdict_heading(entry: dict[str, Any]) -> str:
    """ "Verdict: WORD (P(...) n%)" for a class; for a film that needs review, the class the
    model leans to instead."""
    style = verdict_style(entry["verdict"])
    basis, value = decision_basis_of(entry["label"], entry["probabilities"])
    if style.kind == entry["label"]:
        return f"Verdict: {style.word} ({basis} {value:.0%})"
    return f"Verdict: {style.word} (the model leans to {entry['label'].replace('_', ' ')}, {basis} {value:.0%})"


def write_verdict(pdf: Any, entry: dict[str, Any]) -> None:
    """The verdict line in its colour, the reasons a reader must decide, then the probabilities."""
    pdf.set_text_color(*verdict_style(entry["verdict"]).pdf_rgb)
    paragraph(pdf, 8, verdict_heading(entry))
    pdf.set_text_color(0, 0, 0)
    pdf.set_font(FONT, "", 10)
    for reason in entry.get("review_reasons") or ():
        paragraph(pdf, 5, f"Needs review: {reason_text(reason)}.")
    pdf.set_font(FONT, "", 11)
    for cls in CLASSES:
        p = entry["probabilities"][cls]
        pdf.cell(45, 7, cls.replace("_", " "))
        pdf.cell(20, 7, f"{p:.1%}")
        pdf.set_fill_color(76, 155, 232)
        pdf.cell(max(0.1, 100 * p), 5, "", fill=True, new_x="LMARGIN", new_y="NEXT")
