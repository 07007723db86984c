"""Result tables (CSV) and PDF reports, built in memory."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

import numpy as np
from PIL import Image

from utils.core.classifier import Prediction
from utils.core.heatmap import heatmap_caption
from utils.core.inference import CLASSES
from utils.core.record import CSV_COLUMNS, csv_row
from utils.core.review import decision_basis_of, reason_text
from utils.core.verdict import verdict_style

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


def _latin1(text: str) -> str:
    """fpdf2's core fonts speak latin-1; anything else becomes '?' rather than failing."""
    return str(text).encode("latin-1", "replace").decode("latin-1")


def _png_image(array: np.ndarray):
    return Image.fromarray(array)


def build_pdf(
    entries: list[dict], metadata: dict, preset_name: str, reference: str = "", created: dt.datetime | None = None
) -> bytes:
    """One page per entry. An entry: a record (name, label, verdict, review_reasons,
    probabilities, warnings, error), model_input ((S, S) uint8 or None) and overlay ((S, S, 3)
    uint8 heatmap overlay or None)."""
    from fpdf import FPDF  # noqa: PLC0415  (fpdf2 adds about 0.3 s to every start; only a report needs it)

    created = created or dt.datetime.now(dt.UTC)
    stamp = created.strftime("%Y-%m-%d %H:%M:%S UTC")
    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(auto=False)
    pdf.set_title("Bone X-ray Classifier report")
    for entry in entries:
        pdf.add_page()
        pdf.set_font("Helvetica", "B", 16)
        pdf.cell(0, 10, "Bone X-ray Classifier report", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", "", 10)
        lines = [
            f"File: {entry['name']}",
            f"Created: {stamp}",
            f"Model: {metadata.get('name', '?')} v{metadata.get('version', '?')}",
            f"Model sha256: {metadata.get('sha256', '?')}",
            f"Decision preset: {preset_name.replace('_', ' ')}",
        ]
        if reference.strip():
            lines.insert(1, f"Study / patient reference: {reference.strip()}")
        for line in lines:
            pdf.multi_cell(0, 5, _latin1(line), new_x="LMARGIN", new_y="NEXT")
        top = pdf.get_y() + 4
        if entry.get("model_input") is not None:
            pdf.image(_png_image(entry["model_input"]), x=10, y=top, w=90)
        if entry.get("overlay") is not None:
            pdf.image(_png_image(entry["overlay"]), x=110, y=top, w=90)
            pdf.set_xy(110, top + 91)
            pdf.set_font("Helvetica", "I", 8)
            pdf.cell(90, 4, _latin1(heatmap_caption(metadata.get("heatmap_kind", "Grad-CAM")).capitalize()))
        pdf.set_xy(10, top + 100)
        pdf.set_font("Helvetica", "B", 13)
        if entry.get("error"):
            pdf.multi_cell(0, 7, _latin1(f"Not classified: {entry['error']}"), new_x="LMARGIN", new_y="NEXT")
        else:
            write_verdict(pdf, entry)
        pdf.set_font("Helvetica", "", 9)
        for warning in entry.get("warnings") or []:
            pdf.multi_cell(0, 5, _latin1(f"Note: {warning}"), new_x="LMARGIN", new_y="NEXT")
        pdf.set_xy(10, 270)
        pdf.set_font("Helvetica", "B", 9)
        pdf.multi_cell(0, 5, DISCLAIMER, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


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
    pdf.multi_cell(0, 8, _latin1(verdict_heading(entry)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_text_color(0, 0, 0)
    pdf.set_font("Helvetica", "", 10)
    for reason in entry.get("review_reasons") or ():
        pdf.multi_cell(0, 5, _latin1(f"Needs review: {reason_text(reason)}."), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 11)
    for cls in CLASSES:
        p = entry["probabilities"][cls]
        pdf.cell(45, 7, cls.replace("_", " "))
        pdf.cell(20, 7, f"{p:.1%}")
        pdf.set_fill_color(76, 155, 232)
        pdf.cell(max(0.1, 100 * p), 5, "", fill=True, new_x="LMARGIN", new_y="NEXT")
