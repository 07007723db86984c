"""Bone X-ray Classifier: the Streamlit UI. All the work happens in `utils`."""

from __future__ import annotations

import hashlib

import numpy as np
import streamlit as st

from utils.bundle import ModelBundleError, bundle_dir, load_bundle
from utils.classifier import Classifier
from utils.inference import CLASSES, decide

CLASS_TEXT = {
    "healthy": "no fracture seen.",
    "fractured": "a fracture that can heal: hairline, greenstick, stable or minor fractures, dislocations.",
    "beyond_repair": "shattered or crushed bone, segmental and comminuted fractures, pseudoarthrosis, non-union.",
}
PRESET_TEXT = {
    "balanced": "Balanced: the most probable class wins.",
    "fracture_sensitive": "Fracture-sensitive: calls a fracture at a lower probability, so fewer fractures are missed.",
}


@st.cache_resource(show_spinner="Loading the model (once per server)...")
def get_classifier(directory: str) -> Classifier:
    classifier = Classifier(load_bundle(directory))
    # One line per process: the browser load test counts these to prove the model is shared.
    print(f"bone-xray: model {classifier.bundle.metadata['sha256'][:12]} loaded", flush=True)
    return classifier


def confidence_colour(probability: float) -> str:
    return "green" if probability >= 0.70 else "orange" if probability >= 0.40 else "red"


def show_header() -> None:
    st.title("Bone X-ray Classifier")
    st.write("Upload a bone radiograph (JPEG, PNG or DICOM). A fine-tuned InceptionV3 network says "
             "whether the bone looks **healthy**, **fractured** or **beyond repair**, with a calibrated "
             "probability for each. Trained on radiographs of the hand, wrist, forearm, elbow, humerus, "
             "shoulder, hip and leg.")
    st.markdown("\n".join(f"- **{name.replace('_', ' ')}**: {text}" for name, text in CLASS_TEXT.items()))
    st.warning("Educational and triage aid only. **Not a medical device and not for diagnosis**: "
               "a qualified clinician must read every image.", icon="⚠️")


def show_sidebar(classifier: Classifier) -> str:
    metadata = classifier.bundle.metadata
    with st.sidebar:
        preset = st.radio("Decision preset", list(metadata["presets"]), format_func=lambda p: p.replace("_", " "),
                          help="\n\n".join(PRESET_TEXT.get(p, p) for p in metadata["presets"]))
        st.header("Model")
        st.markdown(f"**{metadata['name']}** v{metadata['version']}  \n"
                    f"sha256 `{metadata['sha256'][:12]}`  \n"
                    f"TensorFlow {metadata['software']['tensorflow']}, trained {metadata['training']['date']}")
        test = metadata["metrics"]["test"]
        overall = test["overall"]["point"]
        fracatlas = test["by_source"].get("fracatlas", {}).get("point", {})
        st.markdown("Test split (reported once):\n"
                    f"- balanced accuracy {overall['balanced_accuracy']:.3f}\n"
                    f"- macro AUROC {overall['macro_auroc']:.3f}\n"
                    f"- fracture AUROC on clinical films (FracAtlas) {fracatlas.get('binary_auroc', float('nan')):.3f}\n"
                    f"- calibration error (ECE) {test['ece_after']:.3f}")
        card = classifier.bundle.directory / "MODEL_CARD.md"
        if card.exists():
            with st.expander("Model card"):
                st.markdown(card.read_text())
    return preset


def classify_uploads(classifier: Classifier, uploads) -> list[dict]:
    """Classify each upload once per session (keyed by content hash); bytes stay in memory."""
    cache = st.session_state.setdefault("results", {})
    fresh = []
    for upload in uploads:
        data = upload.getvalue()
        key = hashlib.sha256(data).hexdigest()
        if key not in cache:
            fresh.append((key, upload.name, data))
    if fresh:
        with st.spinner(f"Classifying {len(fresh)} image(s)..."):
            predictions = classifier.predict_many([(name, data) for _, name, data in fresh])
        for (key, _, _), prediction in zip(fresh, predictions):
            cache[key] = prediction
    keys = [hashlib.sha256(u.getvalue()).hexdigest() for u in uploads]
    # Forget results of files the user removed from the uploader.
    for stale in set(cache) - set(keys):
        del cache[stale]
    return [(upload.name, cache[key]) for upload, key in zip(uploads, keys)]


def show_prediction(name: str, prediction, preset: dict) -> None:
    st.subheader(name)
    if prediction.error:
        st.error(prediction.error)
        return
    probs = np.array([prediction.probabilities[c] for c in CLASSES])
    label, uncertain = decide(probs, preset)
    left, right = st.columns([1, 1])
    with left:
        st.image(prediction.model_input, caption="The image as the model saw it", clamp=True, width=320)
    with right:
        probability = prediction.probabilities[label]
        colour = confidence_colour(probability)
        verdict = label.replace("_", " ").upper()
        st.markdown(f"### Verdict: :{colour}[{verdict}] ({probability:.0%})")
        if uncertain:
            st.markdown(":orange[**Uncertain: needs review.**] No class is clearly ahead.")
        for cls in CLASSES:
            st.progress(float(prediction.probabilities[cls]),
                        text=f"{cls.replace('_', ' ')}: {prediction.probabilities[cls]:.1%}")
        for warning in prediction.warnings:
            st.caption(f"Note: {warning}")


def main() -> None:
    st.set_page_config(page_title="Bone X-ray Classifier", page_icon="🦴", layout="wide")
    show_header()
    try:
        classifier = get_classifier(str(bundle_dir()))
    except ModelBundleError as exc:
        st.error(f"The model cannot be loaded: {exc}")
        st.stop()
    preset_name = show_sidebar(classifier)
    uploads = st.file_uploader("Radiographs (JPEG, PNG, DICOM; files without an extension are fine)",
                               accept_multiple_files=True)
    if not uploads:
        st.info("Upload one or more images to classify them.")
        return
    preset = classifier.bundle.preset(preset_name)
    for name, prediction in classify_uploads(classifier, uploads):
        show_prediction(name, prediction, preset)


main()
