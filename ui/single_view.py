"""One film: the image as the model saw it with its heatmap, and the verdict with its reasons."""

from __future__ import annotations

import streamlit as st

from ui.history import pretty
from ui.results import pdf_report, show_name
from utils.core.classifier import Classifier
from utils.core.heatmap import colorize_heatmap, heatmap_caption, overlay_heatmap, upsample_heatmap
from utils.core.inference import CLASSES
from utils.core.review import NEEDS_REVIEW, NOT_A_RADIOGRAPH, Verdict, decision_sentence, reason_text
from utils.core.verdict import verdict_style


def show_single(classifier: Classifier, file_id: str, prediction, preset_name: str) -> None:
    show_name(prediction.name)
    if prediction.error:
        st.error(prediction.error)
        return
    preset = classifier.bundle.preset(preset_name)
    verdict = prediction.decide(preset)
    left, right = st.columns([1, 1])
    with left:
        show_film(classifier, file_id, prediction, verdict.label)
    with right:
        show_verdict(verdict, preset, prediction.not_xray, reason_details(prediction))
        for cls in CLASSES:
            st.progress(
                float(prediction.probabilities[cls]), text=f"{pretty(cls)}: {prediction.probabilities[cls]:.1%}"
            )
        for warning in prediction.warnings:
            if warning != prediction.not_xray:
                st.caption(f"Note: {warning}")
        pdf_report(
            classifier, [(file_id, prediction)], preset_name, "PDF report for this image", "bone-xray-report.pdf"
        )


def show_film(classifier: Classifier, file_id: str, prediction, label: str) -> None:
    """The model input, with the heatmap over it when the toggle is on."""
    if not st.toggle("Show heatmap", value=True, key=f"hm_{file_id}"):
        st.image(prediction.model_input, caption="The image as the model saw it", clamp=True, width=360)
        return
    opacity = st.slider("Heatmap opacity", 0.0, 1.0, 0.4, 0.05, key=f"op_{file_id}")
    target = "predicted"
    if classifier.heatmap_kind == "Grad-CAM":  # a fracture map is one map for every class
        target = st.selectbox(
            "Heatmap for class", ["predicted"] + list(CLASSES), format_func=pretty, key=f"cls_{file_id}"
        )
    heatmap = prediction.heatmap(label if target == "predicted" else target)
    st.image(
        overlay_heatmap(prediction.model_input, heatmap, opacity),
        caption=f"The image as the model saw it, with its {heatmap_caption(classifier.heatmap_kind)}",
        width=360,
    )
    st.image(colorize_heatmap(upsample_heatmap(heatmap, (120, 120))), caption="Raw heatmap", width=120)


def reason_details(prediction) -> dict[str, str]:
    """The specifics a reason's words leave out: the image's size, the header's body part."""
    details = {}
    if prediction.image_size is not None:
        height, width = prediction.image_size
        details["image_too_small"] = f"{width} x {height} px"
    if prediction.body_part:
        details["body_part"] = prediction.body_part
    return details


def show_verdict(verdict: Verdict, preset: dict, guard_message: str | None, details: dict[str, str]) -> None:
    """The verdict line (word, colour, the probability it was decided on), then why a reader
    must decide, or which threshold decided. guard_message: what the radiograph guard said;
    details: specifics to put beside a reason's words (reason_details)."""
    style = verdict_style(verdict.kind)
    line = f"### Verdict: :{style.theme_colour}[{style.word}]"
    if verdict.kind in (NEEDS_REVIEW, NOT_A_RADIOGRAPH):
        st.markdown(line)
        reasons = [r for r in verdict.reasons if r != NOT_A_RADIOGRAPH]
        if verdict.kind == NOT_A_RADIOGRAPH:
            st.error(f"**Not a bone radiograph?** {guard_message or reason_text(NOT_A_RADIOGRAPH).capitalize()}")
        if reasons:
            words = [reason_text(r).capitalize() + (f" ({details[r]})" if r in details else "") for r in reasons]
            st.warning("**Needs review:** " + " ".join(f"{w}." for w in words))
        st.caption(
            f"The model leans to {pretty(verdict.label)} ({verdict.headline()}), but a reader should decide. "
            "The probabilities below are shown for the reader."
        )
        return
    st.markdown(f"{line} ({verdict.headline()})")
    st.caption(decision_sentence(verdict, preset))
