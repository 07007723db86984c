"""Second page: the model card with its evaluation plots."""

from __future__ import annotations

import streamlit as st

from ui.model_card import card_for_browser
from utils.core.bundle import ModelBundleError, bundle_dir, read_metadata

st.set_page_config(page_title="Model card · Bone X-ray Classifier", page_icon="🦴", layout="wide")
directory = bundle_dir()
card = directory / "MODEL_CARD.md"
try:
    read_metadata(directory)
except ModelBundleError as exc:
    st.error(str(exc))
    st.stop()
if not card.exists():
    st.error("The model card (model/MODEL_CARD.md) is missing; restore it from the repository.")
    st.stop()
# The card is the project's own file, so its HTML (the scrolling boxes round the tables) is trusted.
st.markdown(card_for_browser(card.read_text()), unsafe_allow_html=True)
plots = sorted((directory / "eval").glob("*.png"))
if plots:
    st.header("Evaluation plots")
    per_row = 3
    for start in range(0, len(plots), per_row):
        for column, plot in zip(st.columns(per_row), plots[start : start + per_row]):
            column.image(str(plot), caption=plot.stem.replace("_", " "))
