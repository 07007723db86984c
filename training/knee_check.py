"""The unseen-source check: healthy knee films from another continent (../shared/data/knee_oai/).

Every image there is healthy. Through the serving path (bytes -> utils.core.classifier, guard
included) this reports, per preset: the share called healthy and not uncertain (right), the
share flagged as not-an-X-ray or uncertain (honest), and the share given a confident fracture
verdict (wrong). Nothing is fitted here: the check only measures a model that is already
final, so its figures can be reported for every study without steering it.

Usage: python -m training.knee_check --run artifacts/finetune   (a run with eval/ and trust/)
       python -m training.knee_check --bundle-dir model          (a shipped bundle)
Writes <run>/knee_check.json (or prints only, for a bundle).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import keras
import numpy as np

from training.data import default_data_dir
from training.run_folder import classifier_for
from training.trust import GUARD_FILE
from utils.core.bundle import load_bundle
from utils.core.classifier import Classifier
from utils.core.guard import FeatureGuard

KNEE_FOLDER = "knee_oai"


def knee_files(data_dir: Path, limit: int | None = None) -> list[Path]:
    with open(data_dir / KNEE_FOLDER / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    paths = [data_dir / KNEE_FOLDER / r["path"] for r in rows if r["label"] == "healthy"]
    return paths[:limit] if limit else paths


def summarise(predictions, preset: dict) -> dict:
    """Shares of the (all healthy) images by outcome under one preset."""
    outcome = {"healthy_confident": 0, "uncertain_or_flagged": 0, "fracture_confident": 0, "error": 0}
    labels = {"healthy": 0, "fractured": 0, "beyond_repair": 0}
    for p in predictions:
        if p.error:
            outcome["error"] += 1
            continue
        verdict = p.decide(preset)
        label, uncertain = verdict.label, verdict.uncertain
        labels[label] += 1
        if uncertain:
            outcome["uncertain_or_flagged"] += 1
        elif label == "healthy":
            outcome["healthy_confident"] += 1
        else:
            outcome["fracture_confident"] += 1
    n = max(len(predictions), 1)
    p_healthy = [p.probabilities["healthy"] for p in predictions if p.probabilities]
    return {
        "n": len(predictions),
        **{k: v / n for k, v in outcome.items()},
        "called": {k: v / n for k, v in labels.items()},
        "flagged_not_xray": sum(p.not_xray is not None for p in predictions) / n,
        "median_p_healthy": float(np.median(p_healthy)) if p_healthy else None,
    }


def knee_check(classifier, data_dir: Path, limit: int | None = None) -> dict:
    files = knee_files(data_dir, limit)
    predictions = classifier.predict_many([(str(p), p.read_bytes()) for p in files], batch_size=16)
    presets = dict(classifier.bundle.metadata["presets"])
    presets["argmax"] = {}  # the model's most probable class, no class weights, no uncertainty thresholds
    return {name: summarise(predictions, presets[name]) for name in presets}


def classifier_for_run(run_dir: Path, guard: bool = True):

    report = json.loads((run_dir / "eval" / "metrics.json").read_text())
    metadata = {
        "classes": ["healthy", "fractured", "beyond_repair"],
        "temperature": report["temperature"],
        "presets": report["presets"],
    }
    guard_path = run_dir / "trust" / GUARD_FILE
    feature_guard = FeatureGuard.load(guard_path) if guard and guard_path.exists() else None
    return classifier_for(keras.saving.load_model(run_dir / "model.keras", compile=False), metadata, feature_guard)


def markdown(result: dict) -> str:
    lines = [
        "| preset | n | healthy, not uncertain | uncertain or flagged | confident fracture verdict | "
        "flagged not-an-X-ray | median P(healthy) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in result.items():
        lines.append(
            f"| {name} | {r['n']} | {r['healthy_confident']:.1%} | {r['uncertain_or_flagged']:.1%} | "
            f"{r['fracture_confident']:.1%} | {r['flagged_not_xray']:.1%} | {r['median_p_healthy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--run", type=Path)
    where.add_argument("--bundle-dir", type=Path)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--limit", type=int, help="only the first N images (a quick look)")
    parser.add_argument(
        "--no-guard", action="store_true", help="without the feature guard (the model alone; the comparison's figures)"
    )
    args = parser.parse_args(argv)
    if args.run:
        result = knee_check_run(args.run, args.data_dir, args.limit, guard=not args.no_guard)
    else:
        result = knee_check(Classifier(load_bundle(args.bundle_dir)), args.data_dir, args.limit)
    print(markdown(result))
    return result


def knee_check_run(run: Path, data_dir: Path, limit: int | None = None, guard: bool = True) -> dict:
    """The knee check of a run, written beside it (knee_check.json, or _no_guard without the guard)."""
    result = knee_check(classifier_for_run(run, guard=guard), data_dir, limit)
    (run / ("knee_check.json" if guard else "knee_check_no_guard.json")).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
