"""What the app derives from classified films: their records under the chosen preset, the PDF
report, and the film's name as a heading."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import streamlit as st

from ui.pdf_download import pdf_download
from utils.adapters.report import build_pdf, report_entry
from utils.core.classifier import Classifier


def records_for(items, preset: dict) -> list[dict]:
    return [prediction.record(preset).as_dict() for _, prediction in items]


def report_entries(items, preset: dict) -> list[dict]:
    return [
        report_entry(prediction, record, prediction.overlay(record["label"]))
        for (_file_id, prediction), record in zip(items, records_for(items, preset))
    ]


def pdf_report(classifier: Classifier, items, preset_name: str, label: str, file_name: str) -> None:
    """The PDF report of `items`, built only when asked for (ui/pdf_download.py)."""
    reference = st.session_state.get("reference", "")

    def build() -> bytes:
        preset = classifier.bundle.preset(preset_name)
        return build_pdf(report_entries(items, preset), classifier.bundle.metadata, preset_name, reference)

    key = items[0][0] if len(items) == 1 else "batch"
    population = st.session_state.get("population", "unknown")
    made_for = (tuple(file_id for file_id, _ in items), preset_name, reference, population)
    pdf_download(label, key, made_for, build, file_name)


def show_name(name: str) -> None:
    """The film's name as the heading; for an image URL, its file name, with the link small below."""
    if name.startswith(("http://", "https://")):
        st.subheader(display_name(name))
        st.caption(f"From [{name}]({name})")
    else:
        st.subheader(name)


def display_name(url: str) -> str:
    parts = urlsplit(url)
    return unquote(parts.path.rstrip("/").rsplit("/", 1)[-1]) or parts.hostname or url
