"""Bone X-ray Classifier: the Streamlit UI. All the work happens in `utils`."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import streamlit as st

from ui.history import pretty, record_history, show_history
from ui.pacs_panel import show_pacs
from ui.pdf_download import pdf_download
from ui.session_sweeper import SessionSweeper
from ui.settings import BATCH_FILE_LIMIT, BATCH_SIZE, INFERENCE_SLOTS
from ui.work_queue import WorkQueue
from utils.adapters.url_input import UrlRefused, fetch_image_bytes
from utils.core.bundle import ModelBundleError, bundle_dir, load_bundle, serving_precision
from utils.core.classifier import Classifier, Prediction
from utils.core.heatmap import colorize_heatmap, heatmap_caption, overlay_heatmap, upsample_heatmap
from utils.core.inference import CLASSES
from utils.core.verdict import verdict_style
from utils.report import build_pdf, records_to_csv, report_entry

CLASS_TEXT = {
    "healthy": "no fracture seen.",
    "fractured": "a fracture that can heal: hairline, greenstick, stable or minor fractures, dislocations.",
    "beyond_repair": "shattered or crushed bone, segmental and comminuted fractures, pseudoarthrosis, non-union.",
}
PRESET_TEXT = {
    "balanced": "Balanced: calls a fracture when P(any fracture) reaches the threshold that balances sensitivity "
    "and specificity on validation films; then grades its severity.",
    "fracture_sensitive": "Fracture-sensitive: calls a fracture at a lower probability, so fewer fractures are missed.",
    "uncertain": "Each preset flags a verdict 'uncertain: needs review' when P(any fracture) is close to its "
    "threshold (or the severity close to its own), within a band chosen on validation films so that "
    "the verdicts kept were right at least 90% of the time there.",
}
WEIGHTED_PRESET_TEXT = {  # bundles with the older class-weighted rule
    "balanced": "Balanced: each probability is weighed by a class weight chosen on validation data for "
    "balanced accuracy, so the rare classes are not drowned out.",
    "uncertain": "Each preset flags a verdict 'uncertain: needs review' when its probability, or its lead over "
    "the next class, is below thresholds chosen on validation data so that the verdicts kept were "
    "right at least 90% of the time there.",
}
URL_HELP = (
    "http or https only. Private, loopback and link-local addresses are refused; to allow a network on "
    "purpose (a hospital's image server), set BONE_XRAY_URL_ALLOW on the server, e.g. "
    "BONE_XRAY_URL_ALLOW=10.20.0.0/16 (see the README). The image is kept in memory only, up to the "
    "upload size limit."
)


@st.cache_resource(show_spinner="Loading the model (once per server)...")
def get_classifier(directory: str) -> Classifier:
    bundle = load_bundle(directory)
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
        texts = (
            PRESET_TEXT
            if metadata["presets"]["balanced"].get("rule") == "two_stage"
            else {**PRESET_TEXT, **WEIGHTED_PRESET_TEXT}
        )
        preset = st.radio(
            "Decision preset",
            list(metadata["presets"]),
            format_func=pretty,
            help="\n\n".join([texts.get(p, p) for p in metadata["presets"]] + [texts["uncertain"]]),
        )
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
        return classifier.predict_many(items, preset=preset_name, batch_size=BATCH_SIZE)


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
                record_history(upload.name, prediction)
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
                    prediction = classifier.predict_bytes(url, data, preset=preset_name)
            except UrlRefused as exc:
                prediction = Prediction(
                    name=url,
                    error=f"{exc} To allow an address on purpose, the server's "
                    "operator sets BONE_XRAY_URL_ALLOW (see the README).",
                )
        results.clear()
        results[key] = prediction
        record_history(url, prediction)
    return key, results[key]


def records_for(items, preset: dict) -> list[dict]:
    records = []
    for _, prediction in items:
        records.append(prediction.record(preset).as_dict())
    return records


def report_entries(classifier: Classifier, items, preset: dict) -> list[dict]:
    return [
        report_entry(prediction, record, prediction.overlay(record["label"]))
        for (_file_id, prediction), record in zip(items, records_for(items, preset))
    ]


def pdf_report(classifier: Classifier, items, preset_name: str, label: str, file_name: str) -> None:
    """The PDF report of `items`, built only when asked for (ui/pdf_download.py)."""
    reference = st.session_state.get("reference", "")

    def build() -> bytes:
        preset = classifier.bundle.preset(preset_name)
        return build_pdf(report_entries(classifier, items, preset), classifier.bundle.metadata, preset_name, reference)

    key = items[0][0] if len(items) == 1 else "batch"
    made_for = (tuple(file_id for file_id, _ in items), preset_name, reference)
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


def show_single(classifier: Classifier, file_id: str, prediction, preset_name: str) -> None:
    preset = classifier.bundle.preset(preset_name)
    show_name(prediction.name)
    if prediction.error:
        st.error(prediction.error)
        return
    record = prediction.record(preset)
    label, uncertain = record.label, record.uncertain
    left, right = st.columns([1, 1])
    with left:
        show_heatmap = st.toggle("Show heatmap", value=True, key=f"hm_{file_id}")
        if show_heatmap:
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
        else:
            st.image(prediction.model_input, caption="The image as the model saw it", clamp=True, width=360)
    with right:
        probability = prediction.probabilities[label]
        style = verdict_style(label, uncertain, prediction.not_xray)
        line = f"### Verdict: :{style.theme_colour}[{style.icon} {style.word}]"
        if prediction.not_xray and style.kind == "unfamiliar":
            st.markdown(line)
            st.warning(f"**Unlike the films the model was trained on.** {prediction.not_xray}")
            st.caption(
                f"Its pick would be {pretty(label)} ({probability:.0%}), but on films unlike its training "
                "films that pick is not reliable."
            )
        elif prediction.not_xray:
            st.markdown(line)
            st.error(f"**Not a bone radiograph?** {prediction.not_xray}")
            st.caption(
                f"The model's probabilities are shown below but mean little for this input "
                f"(its pick would be {pretty(label)})."
            )
        elif uncertain:
            st.markdown(line)
            st.markdown(
                f"The model leans to **{pretty(label)}** ({probability:.0%}), but that probability, or its "
                "lead over the next class, is below this preset's threshold (chosen on validation images): "
                "a reader should decide."
            )
        else:
            st.markdown(f"{line} ({probability:.0%})")
        most_probable = max(CLASSES, key=lambda c: prediction.probabilities[c])
        if most_probable != label:
            why = (
                "it calls a fracture once P(any fracture) reaches its threshold"
                if preset.get("rule") == "two_stage"
                else "it weighs rarer classes up so that they are not missed"
            )
            st.caption(
                f"The {pretty(preset_name)} preset chose {pretty(label)} although {pretty(most_probable)} is "
                f"more probable ({prediction.probabilities[most_probable]:.0%}): {why}. See the model card."
            )
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


def show_batch(classifier: Classifier, items, preset_name: str):
    """Results table with filter, CSV and PDF downloads; returns the selected item."""
    preset = classifier.bundle.preset(preset_name)
    records = records_for(items, preset)
    verdict_names = [pretty(c) for c in CLASSES] + ["not classified"]
    shown = st.multiselect("Show verdicts", verdict_names, default=verdict_names)
    rows = []
    for index, record in enumerate(records):
        verdict = pretty(record["label"]) if record["label"] else "not classified"
        if verdict not in shown:
            continue
        probs = record["probabilities"] or {}
        rows.append(
            {
                "#": index,
                "file": record["path"],
                "verdict": verdict,
                **{f"P({pretty(c)})": probs.get(c) for c in CLASSES},
                "uncertain": record["uncertain"],
                "not an X-ray?": record["not_xray"],
                "notes": record["error"] or " | ".join(record["warnings"]),
            }
        )
    column_config = {
        f"P({pretty(c)})": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1) for c in CLASSES
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
    selected = items[0] if len(items) == 1 else show_batch(classifier, items, preset_name)
    if selected is not None:
        show_single(classifier, *selected, preset_name)


# The page list names the main page; with st.navigation, pages/ is not scanned on its own.
st.navigation(
    [
        st.Page(main, title="Classify radiographs", icon="🦴", default=True),
        st.Page("pages/1_Model_card.py", title="Model card", icon="📄"),
    ]
).run()
