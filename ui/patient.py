"""The "Patient" choice: who the uploaded films are of. JPEG and PNG carry no age, so the user
says it; a DICOM header's age wins over the answer (utils.core.intended_use)."""

from __future__ import annotations

import streamlit as st

POPULATION_KEY = "population"
CHOICES = {"unknown": "Not given", "adult": "Adult", "child": "Child (under 18)"}
HELP = (
    "The model was validated on adults' limb films only. A child's film always gets "
    "'needs review', with the probabilities still shown. A DICOM file's own age (PatientAge, "
    "or birth and study dates) wins over this choice."
)


def patient_choice() -> str:
    """The radio (call it inside the sidebar); returns "unknown", "adult" or "child"."""
    return str(
        st.radio(
            "Patient",
            list(CHOICES),
            format_func=CHOICES.__getitem__,
            key=POPULATION_KEY,
            help=HELP,
            horizontal=True,
        )
    )


def current_population() -> str:
    return str(st.session_state.get(POPULATION_KEY, "unknown"))
