"""Bone X-ray Classifier: the Streamlit UI. All the work happens in `utils`."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from ui.batch_view import show_batch
from ui.history import pretty, record_history, show_history
from ui.pacs_panel import show_pacs
from ui.patient import current_population, patient_choice
from ui.session_sweeper import SessionSweeper
from ui.settings import BATCH_FILE_LIMIT, BATCH_SIZE, INFERENCE_SLOTS
from ui.single_view import show_single
from ui.streamlit_fixes import keep_upload_answers
from ui.work_queue import WorkQueue
from utils.adapters.url_input import UrlRefused, fetch_image_bytes
from utils.core.bundle import ModelBundleError, bundle_dir, load_bundle, serving_precision
from utils.core.classifier import Classifier, Prediction

CLASS_TEXT = {
    "healthy": "no fracture seen.",
    "fractured": "a fracture that can heal: hairline, greenstick, stable or minor fractures, dislocations.",
    "beyond_repair": "shattered or crushed bone, segmental and comminuted fractures, pseudoarthrosis, non-union.",
}
PRESET_TEXT = {
    "balanced": "Balanced: calls a fracture when P(any fracture) reaches the threshold chosen on validation "
    "films; then grades its severity.",
    "fracture_sensitive": "Fracture-sensitive: calls a fracture at a lower probability, so fewer fractures are missed.",
}
WEIGHTED_PRESET_TEXT = {  # bundles with the older class-weighted rule
    "balanced": "Balanced: each probability is weighed by a class weight chosen on validation data for "
    "balanced accuracy, so the rare classes are not drowned out.",
}
REVIEW_TEXT = (
    "A verdict 'needs review' says why: a probability close to the preset's threshold, a film unlike "
    "those the model was validated on, too small an image, a child's film, another body part, a file "
    "cut short, or not a radiograph."
)


def preset_help(metadata: dict) -> str:
    """Each preset's rule, and what its confident verdicts measured on validation films (from
    the bundle's metadata, so the promise is the measured one)."""
    texts = (
        PRESET_TEXT
        if metadata["presets"]["balanced"].get("rule") == "two_stage"
        else {
            **PRESET_TEXT,
            **WEIGHTED_PRESET_TEXT,
        }
    )
    lines = []
    for name, preset in metadata["presets"].items():
        line = texts.get(name, pretty(name))
        if "val_covered_accuracy" in preset and "val_coverage" in preset:
            line += (
                f" On validation films it answered {preset['val_coverage']:.0%} of them, and those answers "
                f"were right {preset['val_covered_accuracy']:.0%} of the time."
            )
        lines.append(line)
    return "\n\n".join(lines + [REVIEW_TEXT])


URL_HELP = (
    "http or https only. Private, loopback and link-local addresses are refused; to allow a network on "
    "purpose (a hospital's image server), set BONE_XRAY_URL_ALLOW on the server, e.g. "
    "BONE_XRAY_URL_ALLOW=10.20.0.0/16 (see the README). The image is kept in memory only, up to the "
    "upload size limit."
)


keep_upload_answers()  # once per process (idempotent): no upload is lost while a run starts


@st.cache_resource(show_spinner="Loading the model (once per server)...")
def get_classifier(directory: str) -> Classifier:
    bundle = load_bundle(Path(directory))
    classifier = Classifier(bundle, precision=serving_precision(bundle.metadata))
    # One line per process: the browser load test counts these to prove the model is shared.
    print(f"bone-xray: model {classifier.bundle.metadata['sha256'][:12]} loaded ({classifier.engine.name})", flush=True)
    # Streamlit runs a full garbage collection after every script run (runner.postScriptGC),
    # and it walked every object the server and the model had loaded: 0.1-0.4 s per rerun,
    # holding the GIL, so the verdict waited for it. The objects alive now stay alive for the
    # server's life; freezing them leaves each collection only what the sessions create.
    gc.freeze()
    return classifier


def show_header() -> None:
    st.title("Bone X-ray Classifier")
    st.write(
        "Upload bone radiographs (JPEG, PNG or DICOM). A fine-tuned InceptionV3 network says "
        "whether the bone looks **healthy**, **fractured** or **beyond repair**, with a calibrated "
        "probability for each. Trained on radiographs of the hand, wrist, forearm, elbow, humerus, "
        "shoulder, hip and leg."
    )
    st.markdown("\n".join(f"- **{pretty(name)}**: {text}" for name, text in CLASS_TEXT.items()))
    st.warning(
        "Educational and triage aid only. **Not a medical device and not for diagnosis**: "
        "a qualified clinician must read every image.",
        icon="⚠️",
    )


def show_sidebar(classifier: Classifier) -> str:
    metadata = classifier.bundle.metadata
    with st.sidebar:
        preset = st.radio("Decision preset", list(metadata["presets"]), format_func=pretty, help=preset_help(metadata))
        patient_choice()
        st.header("Model")
        st.markdown(
            f"**{metadata['name']}** v{metadata['version']}  \n"
            f"sha256 `{metadata['sha256'][:12]}`  \n"
            f"TensorFlow {metadata['software']['tensorflow']}, trained {metadata['training']['date']}  \n"
            f"runs on {'LiteRT' if classifier.engine.name == 'litert' else 'Keras'}, {classifier.precision} engine"
        )
        test = metadata["metrics"]["test"]
        overall = test["overall"]["point"]
        fracatlas = test["by_source"].get("fracatlas", {}).get("point", {})
        st.markdown(
            "Test split (reported once):\n"
            f"- balanced accuracy {overall['balanced_accuracy']:.3f}\n"
            f"- macro AUROC {overall['macro_auroc']:.3f}\n"
            f"- fracture AUROC on clinical films (FracAtlas) {fracatlas.get('binary_auroc', float('nan')):.3f}\n"
            f"- calibration error (ECE) {test['ece_after']:.3f}"
        )
        st.caption("The full card, with its evaluation plots, has its own page in the list above.")
    return preset


@st.cache_resource
def get_work_queue() -> WorkQueue:
    """One queue for the whole server: every session's decoding and model work takes turns."""
    return WorkQueue(INFERENCE_SLOTS)


@st.cache_resource
def get_session_sweeper() -> SessionSweeper:
    """One per server: shuts down the sessions whose browsers left (ui/session_sweeper.py)."""
    return SessionSweeper()


@contextmanager
def queued() -> Iterator[None]:
    """A slot of the server's work queue, telling the user how many are ahead while waiting."""
    note = st.empty()

    def waiting(ahead: int) -> None:
        note.caption(f"Other people's films are being classified; {ahead + 1} in the queue before yours.")

    with get_work_queue().slot(on_wait=waiting):
        note.empty()
        yield


def classify_chunk(classifier: Classifier, chunk, preset_name: str) -> list:
    with queued():
        items = [(u.name, u.getvalue()) for u in chunk]
        return classifier.predict_many(
            items, preset=preset_name, batch_size=BATCH_SIZE, population=current_population()
        )


def classify_uploads(classifier: Classifier, uploads, preset_name: str) -> list:
    """Classify each upload once per session; only the small model input is kept, not the bytes."""
    if len(uploads) > BATCH_FILE_LIMIT:
        st.info(
            f"{len(uploads)} files were given; the first {BATCH_FILE_LIMIT} are classified. "
            f"Upload the others as another batch of at most {BATCH_FILE_LIMIT}."
        )
        uploads = uploads[:BATCH_FILE_LIMIT]
    results = st.session_state.setdefault("results", {})
    fresh = [u for u in uploads if u.file_id not in results]
    if fresh:
        bar = st.progress(0.0, text=f"Classifying {len(fresh)} image(s)...")
        for start in range(0, len(fresh), BATCH_SIZE):
            chunk = fresh[start : start + BATCH_SIZE]
            for upload, prediction in zip(chunk, classify_chunk(classifier, chunk, preset_name)):
                results[upload.file_id] = prediction
                record_history(upload.name, prediction, preset_name)
            done = min(start + BATCH_SIZE, len(fresh))
            bar.progress(done / len(fresh), text=f"Classified {done} of {len(fresh)}")
        bar.empty()
    current = {u.file_id for u in uploads}
    for stale in set(results) - current:  # files the user removed: drop what was derived from them
        del results[stale]
    return [(u.file_id, results[u.file_id]) for u in uploads]


def classify_url(classifier: Classifier, url: str, preset_name: str) -> tuple[str, object]:
    """Fetch and classify the pasted URL once per session (utils.adapters.url_input refuses private and
    loopback addresses and oversized bodies); only the last URL's result is kept."""
    key = f"url:{url}"
    results = st.session_state.setdefault("url_results", {})
    if key not in results:
        with st.spinner("Fetching the image..."):
            try:
                data = fetch_image_bytes(url)
                with queued():
                    prediction = classifier.predict_bytes(url, data, preset_name, current_population())
            except UrlRefused as exc:
                prediction = Prediction(name=url, error=str(exc))
        results.clear()
        results[key] = prediction
        record_history(url, prediction, preset_name)
    return key, results[key]


def main() -> None:
    st.set_page_config(page_title="Bone X-ray Classifier", page_icon="🦴", layout="wide")
    get_session_sweeper().register_current()
    show_header()
    try:
        classifier = get_classifier(str(bundle_dir()))
    except ModelBundleError as exc:
        st.error(f"The model cannot be loaded: {exc}")
        st.stop()
    preset_name = show_sidebar(classifier)
    history_box = st.sidebar.container()
    try:
        show_main(classifier, preset_name)
    finally:
        show_history(history_box)


def show_main(classifier: Classifier, preset_name: str) -> None:
    folder_mode = st.toggle("Upload a whole folder", help="Pick a folder; every file in it is classified.")
    uploads = st.file_uploader(
        "Radiographs (JPEG, PNG, DICOM; files without an extension are fine)",
        accept_multiple_files="directory" if folder_mode else True,
    )
    url = st.text_input(
        "...or paste an image URL", key="image_url", placeholder="https://example.org/film.png", help=URL_HELP
    ).strip()
    st.text_input("Study / patient reference for PDF reports (optional, typed by you)", key="reference", max_chars=120)
    items = classify_uploads(classifier, uploads, preset_name) if uploads else []
    if url:
        items.append(classify_url(classifier, url, preset_name))
    items += show_pacs(classifier, preset_name)
    if not items:
        st.info("Upload one or more images, or paste an image URL, to classify them.")
        return
    for _, prediction in items:  # the "Patient" answer may have changed since they were classified
        classifier.reconsider(prediction, current_population(), preset_name)
    selected = items[0] if len(items) == 1 else show_batch(classifier, items, preset_name)
    if selected is not None:
        file_id, prediction = selected
        show_single(classifier, file_id, prediction, preset_name)


# The page list names the main page; with st.navigation, pages/ is not scanned on its own.
st.navigation(
    [
        st.Page(main, title="Classify radiographs", icon="🦴", default=True),
        st.Page("pages/1_Model_card.py", title="Model card", icon="📄"),
    ]
).run()
