"""Second page: the model card with its evaluation plots."""

from __future__ import annotations

import re

import streamlit as st

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
# Relative links to the plots do not resolve in the browser; the plots are shown below instead.
st.markdown(re.sub(r"\[([^\]]+)\]\(eval/[^)]+\)", r"\1", card.read_text()))
plots = sorted((directory / "eval").glob("*.png"))
if plots:
    st.header("Evaluation plots")
    per_row = 3
    for start in range(0, len(plots), per_row):
        for column, plot in zip(st.columns(per_row), plots[start : start + per_row]):
            column.image(str(plot), caption=plot.stem.replace("_", " "))
