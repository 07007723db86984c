"""Write the model bundle: the .keras file, metadata.json and MODEL_CARD.md, plus eval plots.

Usage: python -m training.export --run artifacts/run_nsfwjs [--control artifacts/run_random]
       [--bundle-dir model] [--command "..."]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training.data import CLASSES, DEFAULT_SPLIT_FILE
from training.litert import LITERT_FILE
from training.offsource_report import markdown
from training.pretrained import NSFWJS_SPEC, NSFWJS_TGZ_SHA256
from training.trust import GUARD_FILE
from training.trust import markdown as trust_markdown
from utils.core.bundle import DEFAULT_BUNDLE_DIR, METADATA_FILE
from utils.core.bundle import sha256_of as sha256_file
from utils.core.engines import FEATURE_LAYER
from utils.core.guard import MAX_COLOUR_FRACTION, MIN_DYNAMIC_RANGE
from utils.core.preprocess import INPUT_SIZE, PREPROCESSING_SPEC

MODEL_FILE = "bone_xray_inceptionv3.keras"
# The targets the model is held to; the UPPER_LIMITS ones are ceilings.
TARGETS = {
    "offsource_auroc": 0.85,
    "hbfmid_fracture_recall": 0.80,
    "wrist_healthy_confident": 0.80,
    "knee_healthy_confident": 0.80,
    "knee_fracture_confident": 0.03,
    "knee_flagged_not_radiograph": 0.05,
    "hbfmid_flagged_not_radiograph": 0.05,
    "hbfmid_pointing_hit_rate": 0.40,
    "fracatlas_binary_auroc": 0.92,
    "fracatlas_sensitivity_at_specificity_0.85": 0.85,
    "fracatlas_sensitive_recall_any_fracture": 0.85,
    "fracatlas_sensitive_specificity": 0.85,
    "pointing_hit_rate": 0.50,
    "ece_after": 0.05,
    "precision_beyond_repair": 0.30,
    "recall_beyond_repair": 0.70,
}
UPPER_LIMITS = {"ece_after", "knee_fracture_confident", "knee_flagged_not_radiograph", "hbfmid_flagged_not_radiograph"}
TWO_STAGE_HEAD = (
    "two stages on mixed7: P(any fracture) = sigmoid(Dense(GAP features, max and mean of a "
    "1x1-conv per-cell fracture map)); P(beyond_repair | fracture) = sigmoid(Dense(GAP features)); "
    "logits = the three classes' log-probabilities composed from the two"
)

DATA_PROVENANCE = [
    {
        "name": "FracAtlas",
        "licence": "CC BY 4.0",
        "citation": 'Abedeen I., Rahman M.A., Prottyasha F.Z., et al., "FracAtlas: A Dataset for Fracture '
        'Classification, Localization and Segmentation of Musculoskeletal Radiographs", '
        "Scientific Data 10, 521 (2023).",
        "use": "healthy (Non_fractured) and fractured (Fractured)",
    },
    {
        "name": "Bone Break Classification",
        "licence": "CC BY 4.0",
        "citation": "Kaggle dataset by pkdarabi, exported from the Roboflow Universe project "
        "curso-rphcb/bone-break-classification.",
        "use": "beyond_repair (Comminuted fracture folder, a proxy); fractured (the other nine types)",
    },
]


TRUST_PLOTS = (
    "Plots: [guard distances](eval/guard_distances.png), [pointing game](eval/pointing_game.png), "
    "[heatmap sanity check on synthetic images](eval/heatmap_examples.png)."
)


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def offsource_values(offsource: dict | None, knee: dict | None) -> dict:
    """The unseen-source figures of the targets, from training.offsource_report (balanced preset);
    the knee figures fall back to training.knee_check for bundles measured before it."""
    balanced = (offsource or {}).get("presets", {}).get("balanced", {})
    knee_block = balanced.get("knee_oai") or (knee or {}).get("balanced", {})
    hbfmid, wrist = balanced.get("hbfmid_check_fractures", {}), balanced.get("wrist_check", {})
    return {
        "offsource_auroc": (offsource or {}).get("aurocs", {}).get("offsource_auroc"),
        "hbfmid_fracture_recall": hbfmid.get("not_healthy"),
        "wrist_healthy_confident": wrist.get("healthy_confident"),
        "knee_healthy_confident": knee_block.get("healthy_confident"),
        "knee_fracture_confident": knee_block.get("fracture_confident"),
        "knee_flagged_not_radiograph": knee_block.get("not_radiograph", knee_block.get("flagged_not_xray")),
        "hbfmid_flagged_not_radiograph": hbfmid.get("not_radiograph"),
        "hbfmid_pointing_hit_rate": (offsource or {}).get("pointing_game", {}).get("hit_rate"),
    }


def target_check(
    test: dict, knee: dict | None = None, trust: dict | None = None, offsource: dict | None = None
) -> dict:
    fa = test["by_source"].get("fracatlas", {}).get("point", {})
    fa_sensitive = test["by_source"].get("fracatlas_fracture_sensitive", {}).get("point", {})
    overall = test["overall"]["point"]
    values = {
        **offsource_values(offsource, knee),
        "fracatlas_sensitivity_at_specificity_0.85": fa.get("binary_sensitivity_at_specificity_0.85"),
        "fracatlas_binary_auroc": fa.get("binary_auroc"),
        "fracatlas_sensitive_recall_any_fracture": fa_sensitive.get("binary_recall_any_fracture"),
        "fracatlas_sensitive_specificity": fa_sensitive.get("binary_specificity"),
        "pointing_hit_rate": (trust or {}).get("pointing_game", {}).get("hit_rate"),
        "ece_after": test.get("ece_after"),
        "precision_beyond_repair": overall.get("precision_beyond_repair"),
        "recall_beyond_repair": overall.get("recall_beyond_repair"),
    }
    met = {
        k: (v is not None and (v <= TARGETS[k] if k in UPPER_LIMITS else v >= TARGETS[k]))
        for k, v in values.items()
        if k in TARGETS
    }
    return {"targets": TARGETS, "values": values, "met": met}


def build_metadata(
    run_dir: Path, eval_report: dict, model_path: Path, command: str, control_report: dict | None, version: str
) -> dict:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    args = summary["args"]
    metadata = {
        "name": "bone-xray-inception-v3",
        "version": version,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "model_file": model_path.name,
        "sha256": sha256_file(model_path),
        "size_bytes": model_path.stat().st_size,
        "classes": list(CLASSES),
        "input": {
            "shape": [None, INPUT_SIZE, INPUT_SIZE, 3],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "preprocessing": PREPROCESSING_SPEC,
            "code": "utils.core.preprocess.load_and_preprocess -> utils.core.inference.to_model_input",
        },
        "output": {"kind": "logits", "shape": [None, len(CLASSES)], "probabilities": "softmax(logits / temperature)"},
        "temperature": eval_report["temperature"],
        "presets": eval_report["presets"],
        "architecture": architecture_metadata(args, summary, model_path),
        "initialisation": {
            "source": NSFWJS_SPEC if args["init"] == "nsfwjs" else "random",
            "source_sha256": NSFWJS_TGZ_SHA256 if args["init"] == "nsfwjs" else None,
            "note": "npm package nsfwjs (MIT): InceptionV3 whose layers up to about mixed6 "
            "keep ImageNet weights; converted by training/pretrained.py",
            "fine_tuned_from": starting_bundle(
                None if args.get("init_from") in (None, "None") else args["init_from"], summary.get("init_from_sha256")
            ),
        },
        "training": training_metadata(summary, command),
        "data": {
            "sources": DATA_PROVENANCE,
            "split_file": "training/split.csv",
            "split_sha256": sha256_file(DEFAULT_SPLIT_FILE) if DEFAULT_SPLIT_FILE.exists() else None,
            "split": "by manifest overlap_group, stratified by (source, label), 70/15/15, seed 20261125",
            "cleaning": "images whose overlap group carries a more severe label are dropped (22); "
            "truncated JPEGs are decoded and their grey-filled bottom rows cropped",
        },
        "metrics": metrics_metadata(eval_report),
        "software": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "ai_edge_litert": installed_version("ai-edge-litert"),
            "python": platform.python_version(),
        },
    }
    metadata["heatmap_kind"] = "fracture map" if metadata["architecture"]["head"] == TWO_STAGE_HEAD else "Grad-CAM"
    if control_report is not None:
        metadata["metrics"]["random_init_control"] = {
            "overall": control_report["overall"]["point"],
            "fracatlas": control_report["by_source"].get("fracatlas", {}).get("point"),
            "wall_seconds": control_report.get("wall_seconds"),
            "input_size": control_report.get("input_size", INPUT_SIZE),
        }
    return metadata


def starting_bundle(init_from: str | None, trained_from_sha256: str | None = None) -> dict | None:
    """The bundle a run was fine-tuned from (its file, version and sha256), read from the
    metadata.json beside it; None for runs that started from the pretrained weights. When the
    run recorded the hash it started from, that bundle must still be the one at the path."""
    if not init_from:
        return None
    path = Path(init_from)
    metadata_path = path.parent / METADATA_FILE
    recorded = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    if recorded.get("model_file") != path.name:
        raise ValueError(f"{metadata_path} does not describe {path.name}: which model did the run start from?")
    if trained_from_sha256 and recorded.get("sha256") != trained_from_sha256:
        raise ValueError(
            f"{path} is no longer the model the run started from (sha256 {trained_from_sha256[:16]}...); "
            "restore that bundle before exporting."
        )
    return {"file": path.name, "version": recorded["version"], "sha256": recorded["sha256"]}


def architecture_metadata(args: dict, summary: dict, model_path: Path) -> dict:
    """The network: backbone, where it is cut and frozen, its head and size."""
    return {
        "backbone": "InceptionV3 (keras.applications, weights=None)",
        "cut": args["cut"],
        "frozen_until": args["frozen_until"],
        "head": TWO_STAGE_HEAD
        if summary.get("recipe", "").startswith("training.finetune")
        else "GlobalAveragePooling2D -> Dropout -> Dense(3)",
        "parameters": int(keras.saving.load_model(model_path, compile=False).count_params()),
    }


def training_metadata(summary: dict, command: str) -> dict:
    """How the run trained, from its train_summary.json."""
    args = summary["args"]
    val_best = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    return {
        "command": command,
        "date": dt.date.today().isoformat(),
        "best_epoch": summary["best_epoch"],
        "epochs_run": len(summary["history"]),
        "epochs_trained": sum(1 for h in summary["history"] if h["epoch"] >= 1),
        # Runs scored with the unseen-source checks were chosen on the combined selection score.
        "selection": "offsource" if "offsource_auroc" in val_best else "validation",
        "val_macro_auroc": summary["best_val_macro_auroc"],
        "val_balanced_accuracy_at_best": val_best["balanced_accuracy"],
        "train_counts": dict(zip(CLASSES, summary["train_counts"])),
        "class_weights": dict(zip(CLASSES, summary["class_weights"])),
        "augmentation": summary["augmentation"],
        "hyperparameters": {
            k: args[k] for k in ("views", "epochs", "batch_size", "lr", "weight_decay", "dropout", "seed")
        },
        "wall_seconds": summary["wall_seconds"],
        "features_from_cache": summary.get("features_from_cache"),
    }


def metrics_metadata(eval_report: dict) -> dict:
    """The test figures (reported once), validation calibration and the targets."""
    return {
        "test": {
            "overall": eval_report["overall"],
            "overall_fracture_sensitive": eval_report["overall_fracture_sensitive"],
            "by_source": eval_report["by_source"],
            "fracatlas_by_body_part": eval_report["fracatlas_by_body_part"],
            "majority_class_baseline": eval_report["majority_class_baseline"],
            "ece_before": eval_report["ece_before"],
            "ece_after": eval_report["ece_after"],
        },
        "validation": {"ece_before": eval_report["val_ece_before"], "ece_after": eval_report["val_ece_after"]},
        "targets": target_check(eval_report),
    }


def guard_metadata(trust_report: dict, guard_path: Path) -> dict:
    guard = trust_report["guard"]
    return {
        "file": guard_path.name,
        "sha256": sha256_file(guard_path),
        "feature_layer": FEATURE_LAYER,
        "method": guard["method"],
        "threshold": guard["threshold"],
        "val_quantile": guard["val_quantile"],
        "cheap_checks": {k: guard["cheap_checks"][k] for k in ("max_colour_fraction", "min_dynamic_range")},
        "code": "utils.core.guard",
    }


def model_section(metadata: dict, features_note: str, control_time: str) -> str:
    training, arch = metadata["training"], metadata["architecture"]
    timing = (
        f"Training wall time on 2 CPU cores: {training['wall_seconds'] / 60:.0f} min{features_note}{control_time}.\n\n"
        f"Reproduce: `{training['command']}`"
    )
    if arch["head"] != TWO_STAGE_HEAD:
        return (
            f"InceptionV3 (Keras) cut at `{arch['cut']}`, global average pooling, dropout, dense logits; "
            f"{arch['parameters']:,} parameters. Initialisation: {metadata['initialisation']['source']}, layers up "
            f"to `{arch['frozen_until']}` frozen, the rest fine-tuned on cached trunk features. Best epoch "
            f"{training['best_epoch']} of {training['epochs_run']} by validation macro-AUROC "
            f"({training['val_macro_auroc']:.3f}). " + timing
        )
    aug = training["augmentation"]
    zoom_out, zoom_in = np.exp(aug["zoom_log_range"][0]), np.exp(aug["zoom_log_range"][1])
    low_side, high_side = aug["downscale"]["min_side"], aug["downscale"]["max_side"]
    return f"""InceptionV3 (Keras) cut at `{arch["cut"]}` with a two-stage head
({arch["parameters"]:,} parameters; `training.model.build_two_stage_classifier`):
- a **fracture map**: a 1x1 convolution on the mixed7 grid gives a fracture logit per cell;
  it is trained against the FracAtlas fracture boxes (a cell is positive when a box covers at
  least 5 % of it; healthy FracAtlas films teach an empty map), and it is the heatmap the app
  and the reports show;
- **P(any fracture)** from the pooled features together with the map's maximum and mean, so
  one small fracture can carry the film; learnt from FracAtlas only, where healthy and
  fractured films come from the same hospitals, so the image's source cannot answer it;
- **P(beyond_repair | fracture)** from the pooled features, learnt among fractures only
  (FracAtlas fractures and the Bone Break types; comminuted = beyond repair);
- the three class probabilities are composed from the two stages (they sum to 1), then
  calibrated by one temperature.

{initialisation_sentence(metadata)}; {trained_layers_sentence(arch["frozen_until"])} with AdamW (cosine schedule)
on **live augmentation**, drawn fresh at every step for every class: rotation +-{aug["rotation_deg"]:.0f} deg,
flips, zoom from {zoom_out:.1f}x (zoom-out) to {zoom_in:.1f}x (close-ups that show part of the
film, redrawn when the fracture box would leave the view), downscaling to {low_side}-{high_side} px and
back, gamma, contrast, brightness, blur or sharpening, noise, JPEG re-compression, burned-in
text, L/R markers and rulers (`training/augment.py`){framings_sentence(aug)}. Each epoch sees every
fracture image and a fresh draw of the healthy films. Best of {epochs_trained(training)} epochs: epoch
{training["best_epoch"]} {selection_sentence(training)} (validation macro-AUROC at that epoch
{training["val_macro_auroc"]:.3f}). {timing}"""


def initialisation_sentence(metadata: dict) -> str:
    """Where the weights started: a bundle fine-tuned further, or the pretrained source."""
    init = metadata["initialisation"]
    start = init.get("fine_tuned_from")
    pretrained = f"{init['source']} (sha256 `{str(init['source_sha256'])[:16]}...`)"
    if not start:
        return f"Initialisation: {pretrained}"
    return (
        f"Initialisation: model {start['version']} (`{start['file']}`, sha256 `{start['sha256'][:16]}...`), "
        f"itself started from {pretrained}"
    )


def trained_layers_sentence(frozen_until: str) -> str:
    if frozen_until == "input":
        return "every layer fine-tuned (BatchNorm statistics kept frozen, since batches are small)"
    return f"layers up to `{frozen_until}` frozen (BatchNorm statistics too), the rest and the heads fine-tuned"


def framings_sentence(aug: dict) -> str:
    """The source framings (aspect stretch, tight crop from 224 px, collimation, intensity network)."""
    on = [
        name
        for name, key in (
            ("aspect stretch", "stretch"),
            ("tight crop from 224 px", "tight_crop"),
            ("collimation borders", "collimation"),
            ("random intensity network", "intensity_network"),
        )
        if aug.get(key) and aug[key].get("p", 1.0) > 0
    ]
    return "; with the source framings: " + ", ".join(on) if on else "; without the source framings"


def selection_sentence(training: dict) -> str:
    if training.get("selection") == "offsource":
        return (
            "by the selection score: the mean of the FracAtlas validation healthy-vs-fracture AUROC, the "
            "severity AUROC among fractures, the off-source AUROC and the worse healthy check's share below "
            "the validation threshold (`training.offsource.selection_score`)"
        )
    return (
        "by the validation score (mean of the FracAtlas healthy-vs-fracture AUROC and the severity AUROC "
        "among fractures)"
    )


def epochs_trained(training: dict) -> int:
    """Epochs of training (older metadata counted the starting checkpoint's evaluation too)."""
    return training.get("epochs_trained", training["epochs_run"])


def comparison_section(metadata: dict) -> str:
    rows = metadata["metrics"].get("comparison")
    if not rows:
        return "Not run for this bundle."
    lines = [
        "Same split; validation figures choose nothing here, they only compare. "
        "Knee check: share called healthy and not uncertain / share with a confident fracture verdict.",
        "",
        "| model | recipe | val FracAtlas AUROC | val severity AUROC | test FracAtlas AUROC | test macro-AUROC | "
        "knee healthy | knee confident fracture | train min |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['val_fracatlas_auroc']:.3f} | {r['val_severity_auroc']:.3f} | "
            f"{r['test_fracatlas_auroc']:.3f} | {r['test_macro_auroc']:.3f} | {r['knee_healthy_confident']:.1%} | "
            f"{r['knee_fracture_confident']:.1%} | {r['train_minutes']:.0f} |"
        )
    return "\n".join(lines)


def decisions_section(metadata: dict) -> str:
    presets = metadata["presets"]
    if presets["balanced"].get("rule") != "two_stage":
        return f"""Probabilities are calibrated by temperature scaling on the validation split. The verdict
follows a preset stored in `metadata.json`: *balanced* multiplies each calibrated probability by a
class weight chosen on validation for balanced accuracy (weights {presets["balanced"].get("class_weights")});
*fracture-sensitive* calls a fracture when P(fractured) + P(beyond_repair) reaches the threshold
that keeps 95% recall on the FracAtlas validation films. A verdict is "uncertain: needs review"
when its probability is below `min_confidence` or its lead below `min_margin` (chosen on
validation). An input the guard flags is always "uncertain", with a warning that says why."""
    rows = "\n".join(
        f"| {name} | {p['fracture_threshold']:.3f} | {p['fracture_band']:.2f} | "
        f"{p['severity_threshold']:.3f} | {p['severity_margin']:.2f} | {p['val_coverage']:.3f} |"
        for name, p in presets.items()
    )
    return f"""Probabilities are calibrated by temperature scaling on the validation split. The verdict
follows the model's two stages (`utils.core.inference.decide_two_stage`), with a preset stored in
`metadata.json`:
1. **Fracture or not**: a fracture when P(any fracture) = P(fractured) + P(beyond_repair) reaches
   the preset's threshold, fitted on the FracAtlas (clinical) validation films: *balanced*
   maximises sensitivity + specificity there, *fracture-sensitive* keeps 95% of their fractures.
2. **Severity, for fractures only**: beyond repair when P(beyond_repair | fracture) reaches the
   severity threshold (sensitivity + specificity among validation fractures). A film whose most
   probable class is healthy is never called beyond repair.
3. **Needs review** when P(any fracture) lies within the preset's band around its
   threshold (in logit units), or a fracture's severity within the severity margin of its
   threshold: the narrowest band and margin at which the validation verdicts outside them are
   right at least 90% of the time. The review rules (a child's film, another body part, too
   small an image, a film unlike the training films, missing image data, not a radiograph;
   `python -m training.review.rules`) also make a verdict "needs review", each with its
   reason in words.

| preset | fracture threshold | band (logit) | severity threshold | severity margin | validation coverage |
|---|---|---|---|---|---|
{rows}"""


def guard_section(metadata: dict) -> str:
    guard = metadata.get("guard") or {}
    if guard.get("kind") != "radiograph":
        return ""
    flagged, fitted = guard["flagged"], guard["fitted_on"]
    return (
        f'**The radiograph guard** (`{guard["code"]}`, `python -m training.radiograph_guard`) answers "is this a '
        f'radiograph?": {guard["method"]}. Fitted on {fitted["training_films"]} training films, '
        f"{fitted['augmented_views']} augmented views and {fitted['chest_films']} chest films of another hospital, "
        f"against {fitted['non_radiographs']} made-up non-radiographs ({', '.join(fitted['non_radiograph_kinds'])}); "
        f"threshold {guard['threshold']:.3f} on P(not a radiograph). Flagged: validation films "
        f"{flagged['validation_films']:.1%}, test films {flagged['test_films']:.1%}, held-out chest films "
        f"{flagged['chest_films_held_out']:.1%}; non-radiographs of the measured set (photos, textures, documents, "
        f"flat; another seed) {flagged['non_radiographs_model_card_set']:.1%}, drawings, screenshots and CT-like "
        f"slices {flagged['drawings_screenshots_ct_like']:.1%}. It replaces the distance guard below, whose "
        "figures are kept for comparison."
    )


def offsource_section(metadata: dict) -> str:
    offsource = metadata["metrics"].get("offsource")
    if not offsource:
        return "Not measured for this bundle (run python -m training.offsource_report)."

    return (
        "Three sets from hospitals and clinics the model never saw, through the serving path (guard "
        "included), `python -m training.offsource_report --bundle-dir model`. Nothing (weights, "
        "thresholds, calibration, guard) was fitted on them; checkpoints and studies were chosen with "
        "their figures beside validation's. `knee_oai/`: 1,000 healthy knees (OAI); `wrist_check/`: 42 "
        "healthy wrists and forearms, mostly children's; `hbfmid_check/`: 82 fractured films of many "
        "body parts (and 5 healthy), with fracture boxes. The **off-source AUROC** is the worst AUROC of "
        "P(any fracture) for the hbfmid_check fractures against each healthy source in turn; the "
        "pooled AUROC ranks them against all healthy films together, a pool the knees dominate, so it "
        "is reported and never chosen on.\n\n" + markdown(offsource)
    )


FEATURES_NOTE = {True: " (trunk features were already cached)", False: " (trunk feature caching included)"}


def targets_table(targets: dict) -> str:
    """The rows of the card's targets table: goal, measured value, met."""
    return "\n".join(
        f"| {k} | {'<=' if k in UPPER_LIMITS else '>='} {v} | "
        f"{'n/a' if targets['values'][k] is None else format(targets['values'][k], '.3f')} | "
        f"{'yes' if targets['met'][k] else 'no'} |"
        for k, v in targets["targets"].items()
    )


def control_summary(control: dict | None) -> str:
    """What pretraining brings: the random-init control's test figures, when it ran."""
    if not control:
        return "Not run for this bundle."
    control_size = control.get("input_size", INPUT_SIZE)
    size_note = (
        f", at {control_size} px (this model: {INPUT_SIZE} px; the control was not rerun at the new size)"
        if control_size != INPUT_SIZE
        else ""
    )
    fracatlas = (
        f", FracAtlas binary AUROC {control['fracatlas']['binary_auroc']:.3f}"
        if control.get("fracatlas") and "binary_auroc" in control["fracatlas"]
        else ""
    )
    return (
        f"Same recipe from random initialisation{size_note}: test balanced accuracy "
        f"{control['overall']['balanced_accuracy']:.3f}, macro-AUROC {control['overall']['macro_auroc']:.3f}"
        f"{fracatlas}."
    )


def control_time_note(control: dict | None) -> str:
    seconds = (control or {}).get("wall_seconds")
    if not seconds:
        return ""
    return (
        f"; the random-init control, which computed its trunk features from scratch with "
        f"the same recipe, took {seconds / 60:.0f} min"
    )


def intro_section(metadata: dict) -> str:
    """What the model does, and why its third class is a proxy."""
    return f"""## What it does
Classifies one bone radiograph as `healthy`, `fractured` or `beyond_repair` and gives a
calibrated probability for each (softmax of logits / temperature {metadata["temperature"]:.3f}).
Input: any JPEG/PNG/DICOM, converted by `utils.core.preprocess` (grayscale, border crop,
percentile contrast stretch, black letterbox to {INPUT_SIZE} x {INPUT_SIZE}).

Body parts seen in training: hand, wrist, forearm, elbow, humerus, shoulder, hip, leg
(FracAtlas), plus web figures of many bones (Bone Break Classification).

## The `beyond_repair` class is a proxy
No public dataset we know of labels non-union, pseudoarthrosis or crushed/shattered bone.
`beyond_repair` was trained only on the Bone Break Classification *Comminuted fracture* folder
({metadata["training"]["train_counts"]["beyond_repair"]} training images; about 98 distinct pictures in
all, collected from the web). Treat this class as a demonstration, not a clinical signal."""


WEIGHT_TERMS = """**Terms of the weights.** The bundled weights are derived from two CC BY 4.0 datasets (FracAtlas;
Bone Break Classification) and from MIT-licensed initial weights (npm `nsfwjs@4.3.0`, by Gant
Laborde / Infinite Red). Whoever redistributes the model or its outputs keeps the attribution
above: the FracAtlas article, the Bone Break Classification uploader and Roboflow Universe
project, and nsfwjs's MIT notice. The code is under the MIT licence (`LICENSE`); cite it with
`CITATION.cff`."""


def model_card(metadata: dict, eval_markdown: str, trust_markdown: str = "") -> str:
    """The bundle's MODEL_CARD.md: the template below, filled from metadata.json and the reports."""
    control = metadata["metrics"].get("random_init_control")
    features_note = FEATURES_NOTE.get(metadata["training"].get("features_from_cache"), "")
    target_lines, control_text = targets_table(metadata["metrics"]["targets"]), control_summary(control)
    control_time = control_time_note(control)
    return f"""# Model card: {metadata["name"]} {metadata["version"]}

**Not a medical device.** This model is an educational and triage-support demonstration. It
must not be used for diagnosis or treatment decisions; a qualified clinician reads the image.

{intro_section(metadata)}

## Model
{model_section(metadata, features_note, control_time)}

## Decisions
{decisions_section(metadata)}

## Data
Split by the manifest's `overlap_group` (near-duplicates and crops stay on one side),
stratified by source and label, 70/15/15, fixed seed (`training/split.csv`).
Cleaning: {metadata["data"]["cleaning"]}.

- FracAtlas (CC BY 4.0): {DATA_PROVENANCE[0]["citation"]}
- Bone Break Classification (CC BY 4.0): {DATA_PROVENANCE[1]["citation"]}

{WEIGHT_TERMS}

Known limits: FracAtlas comes from one group of hospitals; Bone Break images are web figures
with arrows, captions and crops, and every one of them is a fracture, so "any fracture" is
easy to guess from image style there. The honest fracture-detection figure is on the
FracAtlas test images. Hardware (plates, screws) is almost always fractured in FracAtlas.

## Test results (reported once)
{eval_markdown}

Plots: [confusion matrix](eval/confusion_matrix.png), [ROC curves](eval/roc_curves.png),
[reliability diagram](eval/reliability_diagram.png).

## Where it looks, and what it refuses
{guard_section(metadata)}

{trust_markdown or "Not measured for this bundle (run python -m training.trust)."}
{TRUST_PLOTS if trust_markdown else ""}

## Films from other hospitals
{offsource_section(metadata)}

## Comparison with the original study's architectures
{comparison_section(metadata)}

## Targets
| target | goal | measured | met |
|---|---|---|---|
{target_lines}

## What pretraining brings
{control_text}
"""


def export(
    run_dir: Path, bundle_dir: Path, command: str, control_dir: Path | None = None, version: str = "1.0.0"
) -> dict:
    eval_dir = run_dir / "eval"
    eval_report = json.loads((eval_dir / "metrics.json").read_text())
    trust_dir = run_dir / "trust"
    trust_report = json.loads((trust_dir / "trust.json").read_text()) if (trust_dir / "trust.json").exists() else None
    control = control_report(control_dir) if control_dir else None
    bundle_dir.mkdir(parents=True, exist_ok=True)
    model_path = bundle_dir / MODEL_FILE
    shutil.copyfile(run_dir / "model.keras", model_path)
    (bundle_dir / "eval").mkdir(exist_ok=True)
    for name in eval_report["plots"]:
        shutil.copyfile(eval_dir / name, bundle_dir / "eval" / name)
    metadata = build_metadata(run_dir, eval_report, model_path, command, control, version)
    copy_litert(run_dir, bundle_dir, metadata)
    knee, offsource = read_if_present(run_dir / "knee_check.json"), read_if_present(run_dir / "offsource.json")
    metadata["metrics"]["knee_check"] = knee
    metadata["metrics"]["offsource"] = offsource
    metadata["metrics"]["targets"] = target_check(eval_report, knee, trust_report, offsource)
    comparison = run_dir / "comparison.json"
    if comparison.exists():
        metadata["metrics"]["comparison"] = json.loads(comparison.read_text())
    copy_guards(run_dir, bundle_dir, metadata, trust_report, eval_report.get("selective"))
    (bundle_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=1) + "\n")
    (bundle_dir / "MODEL_CARD.md").write_text(
        model_card(
            metadata,
            (eval_dir / "metrics.md").read_text(),
            trust_markdown(trust_report) if trust_report is not None else "",
        )
    )
    return metadata


def read_if_present(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def control_report(control_dir: Path) -> dict:
    """The random-init control's test report, with its wall time and input size."""
    control = json.loads((control_dir / "eval" / "metrics.json").read_text())
    summary = json.loads((control_dir / "train_summary.json").read_text())
    control["wall_seconds"] = summary["wall_seconds"]
    # Summaries from before --size existed were all trained at 299 px.
    control["input_size"] = int(summary["args"].get("size", 299))
    return control


def copy_litert(run_dir: Path, bundle_dir: Path, metadata: dict) -> None:
    """The float32 LiteRT file into the bundle, with its metadata entry, when the run has one."""
    litert_dir = run_dir / "litert"
    if (litert_dir / "litert.json").exists():
        litert_path = bundle_dir / LITERT_FILE
        shutil.copyfile(litert_dir / LITERT_FILE, litert_path)
        metadata["runtime"] = {
            "file": LITERT_FILE,
            "sha256": sha256_file(litert_path),
            "format": "LiteRT flatbuffer, float32",
            "engine": "ai-edge-litert (XNNPACK); utils.core.engines.LiteRTEngine",
            "graph": "utils.core.engines.build_serving_model: outputs logits, features (pool) and the heatmap source "
            "(localisation: the fracture map's sigmoid, or class_maps: mixed7 x dense kernel)",
            "converted_from": metadata["model_file"],
            "test_split_agreement": json.loads((litert_dir / "litert.json").read_text()),
        }


def copy_guards(
    run_dir: Path, bundle_dir: Path, metadata: dict, trust_report: dict | None, selective: dict | None
) -> None:
    """The distance guard and its plots (training.trust), then the radiograph guard, which
    replaces it when the run has one (training.radiograph_guard)."""
    if trust_report is not None:
        shutil.copyfile(run_dir / "trust" / GUARD_FILE, bundle_dir / GUARD_FILE)
        for name in trust_report["plots"]:
            shutil.copyfile(run_dir / "trust" / name, bundle_dir / "eval" / name)
        metadata["guard"] = guard_metadata(trust_report, bundle_dir / GUARD_FILE)
        metadata["metrics"]["test"]["selective"] = selective
        metadata["metrics"]["trust"] = trust_report
    radiograph_guard = run_dir / "guard" / "radiograph_guard.npz"
    if radiograph_guard.exists():  # the discriminative guard replaces the distance guard
        report = json.loads((run_dir / "guard" / "guard.json").read_text())
        (bundle_dir / GUARD_FILE).unlink(missing_ok=True)
        shutil.copyfile(radiograph_guard, bundle_dir / radiograph_guard.name)
        metadata["guard"] = {
            "file": radiograph_guard.name,
            "sha256": sha256_file(bundle_dir / radiograph_guard.name),
            "kind": "radiograph",
            "feature_layer": FEATURE_LAYER,
            "method": report["method"],
            "threshold": report["threshold"],
            "fitted_on": report["fitted_on"],
            "flagged": report["flagged"],
            "code": "utils.core.guard.RadiographGuard",
            "cheap_checks": {"max_colour_fraction": MAX_COLOUR_FRACTION, "min_dynamic_range": MIN_DYNAMIC_RANGE},
        }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--control", type=Path)
    parser.add_argument("--bundle-dir", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--command", default="python -m training.pipeline")
    parser.add_argument("--version", default="1.0.0")
    args = parser.parse_args(argv)
    metadata = export(args.run, args.bundle_dir, args.command, args.control, args.version)
    print(json.dumps(metadata["metrics"]["targets"], indent=1))


if __name__ == "__main__":
    main()
