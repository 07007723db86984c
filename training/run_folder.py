"""The run folder: what a training run leaves behind, where, and how a later step loads it.

Every recipe writes, and every later step (evaluation, the guards, the unseen-source checks,
LiteRT, export, the review rules, the studies) reads, this layout under artifacts/RUN/:

    model.keras               the trained model (no optimizer state)
    state.json                epochs run and their history (a rerun resumes after the last)
    best.weights.h5, last.weights.h5   checkpoints of the best and the last epoch
    train_summary.json        what training chose (best epoch, hyperparameters, counts)
    train.log                 the training log
    val_logits.npz            validation logits, labels and sha256 (what presets are fitted on)
    eval/metrics.json         temperature, presets and the test figures (training.evaluate)
    eval/test_logits.npz, eval/metrics.md, eval/*.png
    trust/trust.json          pointing game and the distance guard (training.trust)
    trust/ood_guard.npz       the distance guard (older runs)
    guard/radiograph_guard.npz, guard/guard.json   the radiograph guard (training.radiograph_guard)
    knee_check.json, offsource.json   the unseen-source checks (measured only)
    litert/, litert.json      the LiteRT file and its comparison with Keras (training.litert)
    review_features/, review_rules/   the review rules' inputs and figures (training.review)

`python -m training.studies.bundle_as_run` lays a shipped bundle out as such a folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from utils.core.bundle import Bundle
from utils.core.classifier import Classifier
from utils.core.guard import FeatureGuard, RadiographGuard, load_guard

MODEL_FILE = "model.keras"
METRICS_FILE = Path("eval") / "metrics.json"
GUARD_FILES = (Path("guard") / "radiograph_guard.npz", Path("trust") / "ood_guard.npz")
CLASS_NAMES = ["healthy", "fractured", "beyond_repair"]


def classifier_for(
    model: Any, metadata: dict, guard: RadiographGuard | FeatureGuard | None = None, engine: Any = None
) -> Classifier:
    """A Classifier over an in-memory model and metadata (no bundle folder)."""
    return Classifier(Bundle(model=model, metadata=metadata, directory=Path("."), guard=guard), engine=engine)


def run_guard(run_dir: Path) -> RadiographGuard | FeatureGuard | None:
    """The run's guard: the radiograph guard when fitted, else the older distance guard."""
    path = next((run_dir / p for p in GUARD_FILES if (run_dir / p).exists()), None)
    return load_guard(path) if path else None


def classifier_for_run(run_dir: Path) -> Classifier:
    """The run's model with its validation-fitted presets and temperature, and its guard."""
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    metadata = {"classes": CLASS_NAMES, "temperature": metrics["temperature"], "presets": metrics["presets"]}
    model = keras.saving.load_model(run_dir / MODEL_FILE, compile=False)
    return classifier_for(model, metadata, run_guard(run_dir))
