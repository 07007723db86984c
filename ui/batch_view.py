"""Many films: a table of verdicts with a filter, the CSV and PDF downloads, and the row to open."""

from __future__ import annotations

import streamlit as st

from ui.history import pretty
from ui.results import pdf_report, records_for
from utils.adapters.report import records_to_csv
from utils.core.classifier import Classifier
from utils.core.inference import CLASSES
from utils.core.review import VERDICT_KINDS, reason_text
from utils.core.verdict import NOT_CLASSIFIED, verdict_words


def percent(probability: float | None) -> float | None:
    """A probability as a percentage with one decimal, so every cell reads alike ("41.0%"
    beside "52.1%"; Streamlit's own percent format drops the decimals of round values)."""
    return None if probability is None else round(100 * probability, 1)


def table_rows(records: list[dict], shown: list[str]) -> list[dict]:
    """One row per record whose verdict is among `shown` (words, as the filter lists them)."""
    rows = []
    for index, record in enumerate(records):
        verdict = verdict_words(record["verdict"])
        if verdict not in shown:
            continue
        probs = record["probabilities"] or {}
        rows.append(
            {
                "#": index,
                "file": record["path"],
                "verdict": verdict,
                "needs review because": "; ".join(reason_text(r) for r in record["review_reasons"]),
                "leans to": pretty(record["label"]) if record["label"] else "",
                **{f"P({pretty(c)})": percent(probs.get(c)) for c in CLASSES},
                "notes": record["error"] or " | ".join(record["warnings"]),
            }
        )
    return rows


def show_batch(classifier: Classifier, items, preset_name: str):
    """Results table with filter, CSV and PDF downloads; returns the selected item."""
    records = records_for(items, classifier.bundle.preset(preset_name))
    verdict_names = [verdict_words(k) for k in VERDICT_KINDS] + [NOT_CLASSIFIED]
    shown = st.multiselect("Show verdicts", verdict_names, default=verdict_names)
    rows = table_rows(records, shown)
    column_config = {
        f"P({pretty(c)})": st.column_config.ProgressColumn(format="%.1f%%", min_value=0, max_value=100) for c in CLASSES
    }
    event = st.dataframe(
        rows,
        hide_index=True,
        column_config=column_config,
        on_select="rerun",
        selection_mode="single-row",
        key="results_table",
    )
    for record in records:
        if record["error"]:
            st.error(f"{record['path']}: {record['error']}")
    col_csv, col_pdf = st.columns(2)
    with col_csv:
        st.download_button(
            "Download table (CSV)",
            records_to_csv(records),
            file_name="bone-xray-results.csv",
            mime="text/csv",
            on_click="ignore",
        )
    with col_pdf:
        pdf_report(
            classifier, items, preset_name, f"PDF report for all {len(items)} images", "bone-xray-batch-report.pdf"
        )
    selected = event.selection.rows if event is not None else []
    if selected and selected[0] < len(rows):
        return items[rows[selected[0]]["#"]]
    st.caption("Click a row to open that image below.")
    return items[rows[0]["#"]] if rows else None
