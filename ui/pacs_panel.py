"""The app's "From PACS" panel: search a DICOMweb server, classify a study, send the results back."""

from __future__ import annotations

import os

import streamlit as st

from ui.history import record_history
from ui.patient import current_population
from ui.settings import BATCH_SIZE
from utils.adapters.pacs import (
    PacsConfig,
    PacsError,
    StudyOptions,
    StudyStream,
    connect,
    find_studies,
    store_results,
)
from utils.core.classifier import Classifier


def pacs_config():
    """(config, problem): the PACS of `[pacs]` in .streamlit/secrets.toml (else of the
    BONE_XRAY_PACS_* environment), (None, None) when none is configured."""
    try:
        section = st.secrets.get("pacs")
    except Exception:  # no secrets file at all: Streamlit raises rather than returning nothing
        section = None
    try:
        if section:
            return PacsConfig.from_mapping(section), None
        if os.environ.get("BONE_XRAY_PACS_URL"):
            return PacsConfig.from_environment(), None
    except PacsError as exc:
        return None, str(exc)
    return None, None


def pacs_study_label(study: dict) -> str:
    date = study["StudyDate"] or "no date"
    if len(date) == 8:
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    parts = [
        date,
        study["AccessionNumber"] or "no accession",
        study["StudyDescription"] or "no description",
        study["ModalitiesInStudy"] or "?",
        f"{study['NumberOfStudyRelatedInstances'] or '?'} instance(s)",
    ]
    return " · ".join(str(p) for p in parts)


def search_pacs(config) -> None:
    state = st.session_state["pacs"]
    with st.form("pacs_search"):
        left, middle, right = st.columns(3)
        patient = left.text_input("Patient ID").strip()
        accession = middle.text_input("Accession number").strip()
        since = right.date_input("Studies since", value=None, format="YYYY-MM-DD")
        submitted = st.form_submit_button("Search the PACS")
    if submitted:
        state.update(studies=None, study=None, items=[], run=None, stored=None)
        if not (patient or accession or since):
            st.warning("Enter a patient ID, an accession number or a date to search.")
            return
        try:
            with st.spinner("Searching the PACS..."):
                state["studies"] = find_studies(
                    connect(config),
                    patient_id=patient or None,
                    accession=accession or None,
                    since=since.strftime("%Y%m%d") if since else None,
                )
        except PacsError as exc:
            st.error(str(exc))


def classify_pacs_study(config, classifier: Classifier, preset_name: str) -> None:
    state = st.session_state["pacs"]
    studies = {s["StudyInstanceUID"]: s for s in state["studies"]}
    uid = st.selectbox("Study", list(studies), format_func=lambda u: pacs_study_label(studies[u]))
    if not st.button("Classify this study"):
        return
    bar = st.progress(0.0, text="Listing the study's radiographs...")
    kept = []
    try:
        options = StudyOptions(preset_name, BATCH_SIZE, population=current_population())
        stream = StudyStream(connect(config), classifier, uid, options)
        for item in stream:
            kept.append(item)
            bar.progress(len(kept) / max(len(stream), 1), text=f"Classified {len(kept)} of {len(stream)}")
    except PacsError as exc:
        st.error(str(exc))
        return
    finally:
        bar.empty()
    for item in kept:
        record_history(f"PACS image {item.ref.sop_uid[-12:]}", item.prediction, preset_name)
    state.update(study=uid, items=kept, run=stream.run, stored=None)


def send_to_pacs(config, classifier: Classifier) -> None:
    state = st.session_state["pacs"]
    run = state["run"]
    st.caption(
        f"{run.classified} radiograph(s) classified from the study"
        + (f"; {run.failed} could not be read" if run.failed else "")
        + "."
    )
    for note in run.skipped:
        st.caption(note)
    if not run.classified:
        return
    if st.button(
        "Send the results to the PACS",
        help="Stores a DICOM SR (all verdicts and probabilities) and a "
        "Secondary Capture heatmap per film as new objects in the same study; nothing there is changed.",
    ):
        with st.spinner("Storing the results..."):
            state["stored"] = store_results(connect(config), state["study"], state["items"], classifier.bundle.metadata)
    stored = state["stored"]
    if stored is not None:
        if stored.store_failures:
            for failure in stored.store_failures:
                st.error(failure)
        else:
            st.success(
                f"Stored {len(stored.stored_sr)} report (SR) and {len(stored.stored_captures)} secondary "
                "capture(s) in the study."
            )


def show_pacs(classifier: Classifier, preset_name: str) -> list:
    """The "From PACS" section, when a server is configured; returns the study's results as items."""
    config, problem = pacs_config()
    if config is None and problem is None:
        return []
    state = st.session_state.setdefault(
        "pacs", {"studies": None, "study": None, "items": [], "run": None, "stored": None}
    )
    with st.expander("From PACS", expanded=True, icon=":material/dns:"):
        if problem:
            st.error(f"The PACS configured in secrets cannot be used: {problem}")
            return []
        search_pacs(config)
        if state["studies"] is not None:
            if not state["studies"]:
                st.info("No study on the PACS matches the search.")
            else:
                classify_pacs_study(config, classifier, preset_name)
        if state["run"] is not None:
            send_to_pacs(config, classifier)
    return [(f"pacs:{item.ref.sop_uid}", item.prediction) for item in state["items"]]
