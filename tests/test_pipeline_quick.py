"""The whole training pipeline in --quick mode on a synthetic dataset (minutes, no downloads)."""

from __future__ import annotations

import csv
import hashlib
import json

import numpy as np

from tests.conftest import png_bytes, synthetic_radiograph

MANIFEST_COLUMNS = ["path", "source", "label_hint", "original_split", "width", "height",
                    "original_width", "original_height", "resized", "sha256", "dhash",
                    "near_dup_group", "overlap_group"]


def synthetic_dataset(root, groups_per_class=40):
    kinds = [("fracatlas", "non_fractured", "fracatlas/images/Non_fractured"),
             ("fracatlas", "fractured", "fracatlas/images/Fractured"),
             ("bone_break", "Comminuted fracture", "bone_break/Comminuted fracture/Train"),
             ("bone_break", "Spiral Fracture", "bone_break/Spiral Fracture/Train")]
    rows, group = [], 0
    for k, (source, hint, folder) in enumerate(kinds):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(groups_per_class):
            group += 1
            image = synthetic_radiograph(160, 128, seed=group)
            image[:, : 10 * k + 5] *= 0.5  # a weak class cue, so training has something to find
            data = png_bytes((image * 255).astype(np.uint8))
            path = f"{folder}/img{group:04d}.png"
            (root / path).write_bytes(data)
            rows.append({"path": path, "source": source, "label_hint": hint, "original_split": "",
                         "width": 128, "height": 160, "original_width": 128, "original_height": 160,
                         "resized": 0, "sha256": hashlib.sha256(data).hexdigest(), "dhash": "",
                         "near_dup_group": group, "overlap_group": group})
    with open(root / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def synthetic_knee_check(root, n=6):
    """A stand-in for knee_oai/: n healthy 224 px crops with its manifest's columns."""
    (root / "knee_oai" / "healthy").mkdir(parents=True, exist_ok=True)
    with open(root / "knee_oai" / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "kl_grade"])
        writer.writeheader()
        for i in range(n):
            path = f"healthy/knee{i}.png"
            (root / "knee_oai" / path).write_bytes(png_bytes((synthetic_radiograph(224, 224, seed=900 + i) * 255)
                                                             .astype(np.uint8)))
            writer.writerow({"path": path, "label": "healthy", "kl_grade": 0})


def test_quick_pipeline_produces_a_loadable_bundle(tmp_path):
    from training import pipeline
    from utils.core.bundle import load_bundle
    from utils.core.classifier import Classifier

    data = tmp_path / "data"
    synthetic_dataset(data)
    synthetic_knee_check(data)
    bundle_dir = tmp_path / "bundle"
    pipeline.main(["--quick", "--init", "random", "--data-dir", str(data),
                   "--split", str(tmp_path / "split.csv"), "--cache-dir", str(tmp_path / "cache"),
                   "--runs-dir", str(tmp_path / "runs"), "--bundle-dir", str(bundle_dir)])

    metadata = json.loads((bundle_dir / "metadata.json").read_text())
    for key in ("classes", "input", "temperature", "presets", "metrics", "sha256", "training", "data", "software"):
        assert key in metadata
    assert metadata["temperature"] > 0
    assert load_bundle(bundle_dir, load_keras=False).shift_score is not None
    assert "overall" in metadata["metrics"]["test"]
    assert (bundle_dir / "MODEL_CARD.md").read_text().count("Not a medical device") == 1
    for plot in ("confusion_matrix.png", "roc_curves.png", "reliability_diagram.png", "risk_coverage.png"):
        assert (bundle_dir / "eval" / plot).stat().st_size > 1000
    # The review rules travel with a retrained bundle: input limits, the shift score, the re-derived band.
    assert metadata["input_limits"]["min_short_side"] == 128  # the synthetic clinical films' shorter side
    assert metadata["shift_score"]["threshold"] > 0 and "band_fitted_on" in metadata["presets"]["balanced"]
    assert "## Where it answers and where it does not" in (bundle_dir / "MODEL_CARD.md").read_text()

    # The checkpoint state records every epoch that ran, so a rerun resumes after the last.
    state = json.loads((tmp_path / "runs" / "finetune_random_quick" / "state.json").read_text())
    assert state["epoch"] == len(state["history"]) >= 1
    # The default recipe: two-stage head, its fracture map as the heatmap, the knee check measured.
    assert metadata["heatmap_kind"] == "fracture map"
    assert metadata["architecture"]["head"].startswith("two stages")
    knee = metadata["metrics"]["knee_check"]["balanced"]
    assert knee["n"] == 6
    assert abs(knee["healthy_confident"] + knee["uncertain_or_flagged"] + knee["fracture_confident"] - 1) < 1e-9
    assert "knee_healthy_confident" in metadata["metrics"]["targets"]["values"]

    classifier = Classifier(load_bundle(bundle_dir))
    prediction = classifier.predict_bytes("x.png", png_bytes((synthetic_radiograph() * 255).astype(np.uint8)))
    assert prediction.error is None
    assert abs(sum(prediction.probabilities.values()) - 1) < 1e-6

    # A finished run is measured and exported again without training another epoch.
    run_dir = tmp_path / "runs" / "finetune_random_quick"
    pipeline.main(["--quick", "--from-run", str(run_dir), "--version", "9.1.0", "--data-dir", str(data),
                   "--split", str(tmp_path / "split.csv"), "--cache-dir", str(tmp_path / "cache"),
                   "--bundle-dir", str(tmp_path / "again")])
    again = json.loads((tmp_path / "again" / "metadata.json").read_text())
    assert again["version"] == "9.1.0" and again["sha256"] == metadata["sha256"]
    assert json.loads((run_dir / "state.json").read_text())["history"] == state["history"]


def test_image_cache_at_a_study_size_keeps_its_own_file(tmp_path):
    from training.features import build_image_cache
    from utils.core.preprocess import INPUT_SIZE

    data, cache = tmp_path / "data", tmp_path / "cache"
    synthetic_dataset(data, groups_per_class=2)
    with open(data / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    small = build_image_cache(rows, data, cache, workers=1, size=96)
    full = build_image_cache(rows, data, cache, workers=1)
    assert small.shape == (8, 96, 96) and full.shape == (8, INPUT_SIZE, INPUT_SIZE)
    assert sorted(p.name.split("_")[1] for p in cache.glob("images_*.npz")) == sorted([str(INPUT_SIZE), "96"])
